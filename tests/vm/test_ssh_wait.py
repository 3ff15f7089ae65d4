"""lab/vm/ssh.py: waiting for a login, and commands as lab Results."""

import logging
import os
import socket
import threading

import paramiko
import pytest

from lab import command
from lab.vm import ssh
from lab.vm.hypervisor import free_port

RUN = "20261204-154353-a1a0"
CONSOLE = [
    "[    3.1] Run /init as init process",
    "[   14.7] sr 5:0:0:0: [sr0] scsi3-mmc drive",
    "vjlab-debian12 login:",
]


class FakeGuest:
    """A guest that never answers SSH; its console says how far it got."""

    name = f"vjlab-{RUN}-debian12-cells"

    def __init__(self, alive_checks: int | None = None):
        self.checks = 0
        self.alive_checks = alive_checks

    def alive(self) -> bool:
        self.checks += 1
        return self.alive_checks is None or self.checks <= self.alive_checks

    def console_tail(self, lines: int = 20) -> str:
        return "\n".join(CONSOLE[-lines:])


def test_timeout_names_the_guest_and_ends_with_its_console(tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(ssh.SSHTimeout) as caught:
        ssh.wait_for_ssh(FakeGuest(), "127.0.0.1", port, "root", "/no/key", 1.5)
    message = str(caught.value)
    assert message.startswith(
        f"vjlab-{RUN}-debian12-cells: ssh root@127.0.0.1:{port}: "
        "expected a login, got no login within 2s"
    )
    assert "ConnectionRefusedError" in message
    assert message.endswith(
        f"last console lines of vjlab-{RUN}-debian12-cells:\n" + "\n".join(CONSOLE)
    )


def test_a_guest_that_exits_fails_at_once_with_its_console():
    guest = FakeGuest(alive_checks=1)
    with pytest.raises(ssh.SSHTimeout) as caught:
        ssh.wait_for_ssh(guest, "127.0.0.1", free_port(), "root", "/no/key", 600)
    assert "got the guest exited" in str(caught.value)
    assert "vjlab-debian12 login:" in str(caught.value)
    assert guest.checks == 2


def test_a_port_that_closes_without_a_banner_is_not_ssh():
    # What slirp does while the guest's sshd is not up yet.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def accept_and_close():
        connection, _ = server.accept()
        connection.close()

    thread = threading.Thread(target=accept_and_close)
    thread.start()
    try:
        port = server.getsockname()[1]
        assert ssh.banner_missing("127.0.0.1", port, 2) == "closed without a banner"
    finally:
        thread.join(timeout=5)
        server.close()


def test_generated_key_is_private_and_loads_in_paramiko(tmp_path):
    path = str(tmp_path / "id_ed25519")
    public = ssh.generate_key(path, f"vjlab-{RUN}")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert public.startswith("ssh-ed25519 ") and public.endswith(f" vjlab-{RUN}")
    key = paramiko.Ed25519Key.from_private_key_file(path)
    assert public.split()[1] == key.get_base64()


def node(tmp_path, known_host_key=None) -> ssh.SSHNode:
    return ssh.SSHNode(
        "vm-debian",
        RUN,
        "127.0.0.1",
        40022,
        "root",
        str(tmp_path / "id_ed25519"),
        known_host_key,
    )


def test_run_returns_a_result_and_logs_one_line(tmp_path, monkeypatch, caplog):
    guest = node(tmp_path)
    seen = []

    def fake_exec(line, timeout, input_text):
        seen.append(line)
        return 0, "ok\n", ""

    monkeypatch.setattr(guest, "_exec", fake_exec)
    with caplog.at_level(logging.DEBUG, logger="lab.vm.ssh"):
        result = guest.run(["echo", "two words", "$HOME"])
    assert seen == ["echo 'two words' '$HOME'"]
    assert result.ok and result.stdout == "ok\n" and result.where == "vm-debian"
    lines = [r.getMessage() for r in caplog.records if r.name == "lab.vm.ssh"]
    assert len(lines) == 1
    assert lines[0].startswith("[vm-debian] echo 'two words' '$HOME' -> 0 (")


def test_a_failing_command_raises_with_node_command_and_status(tmp_path, monkeypatch):
    guest = node(tmp_path)
    monkeypatch.setattr(guest, "_exec", lambda *a: (1, "", "modprobe: FATAL: esp9\n"))
    with pytest.raises(command.CommandError) as caught:
        guest.run(["modprobe", "esp9"])
    assert str(caught.value) == (
        "vm-debian: `modprobe esp9` expected exit status 0, "
        "got exit status 1: modprobe: FATAL: esp9"
    )


def test_a_lost_connection_is_a_failed_result_not_a_crash(tmp_path, monkeypatch):
    guest = node(tmp_path)

    def drop(*args):
        raise paramiko.SSHException("connection lost")

    monkeypatch.setattr(guest, "_exec", drop)
    result = guest.run(["systemctl", "poweroff"], check=False)
    assert result.returncode == 255
    assert "connection lost" in result.stderr


def test_spawn_goes_through_openssh_with_the_pinned_host_key(tmp_path):
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTheTest"
    guest = node(tmp_path, host_key)
    prefix = guest.prefix()
    assert prefix[0] == "ssh" and prefix[-2:] == ["root@127.0.0.1", "--"]
    assert "StrictHostKeyChecking=yes" in prefix
    known = (tmp_path / "id_ed25519.known_hosts").read_text()
    assert known == f"[127.0.0.1]:40022 {host_key}\n"


def test_spawn_quotes_the_remote_command_once(tmp_path, monkeypatch):
    guest = node(tmp_path)
    spawned = []
    monkeypatch.setattr(
        ssh.Node, "spawn", lambda self, argv, log_path, env=None: spawned.append(argv)
    )
    guest.spawn(["charon", "--debug", "a b"], str(tmp_path / "out"), {"X": "1"})
    assert spawned == [["env X=1 charon --debug 'a b'"]]
