"""A guest as a :class:`lab.node.Node`: commands and files over SSH.

:meth:`SSHNode.run` carries one command (quoted with ``shlex.join``) over
paramiko and logs one DEBUG line for it, as :func:`lab.command.run` does
for local commands. Long-running processes (:meth:`SSHNode.spawn`) go
through the OpenSSH client, so they are ordinary local processes the lab
can stop and the reaper can find.
"""

import base64
import logging
import os
import select
import shlex
import socket
import time

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from lab import command, runid
from lab.node import Node, Process
from lab.wait import WaitTimeout, wait_until

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0


class SSHTimeout(RuntimeError):
    """A guest did not accept an SSH login in time; carries its console."""


def generate_key(path: str, comment: str) -> str:
    """Write a new ed25519 private key to *path*; return the public line."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode()} {comment}"
    with open(f"{path}.pub", "w") as out:
        out.write(line + "\n")
    return line


class SSHNode(Node):
    """A node reached over SSH: ``role``, ``run_id``, ``host``, ``port``..."""

    def __init__(
        self,
        role: str,
        run_id: str,
        host: str,
        port: int,
        user: str,
        key_path: str,
        known_host_key: str | None = None,
        system: str = "freebsd",
    ):
        super().__init__(role=role, run_id=run_id)
        self.system = system  # what runs there: "freebsd" or "linux"
        self.host = host
        self.port = port
        self.user = user
        self.key_path = key_path
        self.known_host_key = known_host_key
        self._client: paramiko.SSHClient | None = None

    def guest_path(self, path: str) -> str:
        """*path* as the guest's own root sees it (a jail node shifts it)."""
        return path

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def connect(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Log in (again); raise paramiko or socket errors as they come."""
        self.close()
        client = paramiko.SSHClient()
        if self.known_host_key:
            kind, blob = self.known_host_key.split()[:2]
            key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
            client.get_host_keys().add(self._host_entry(), kind, key)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            # Trust on first use: a guest this run booted, whose image
            # (unlike the lab's Debian one) has no host key known beforehand.
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=self.key_path,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except Exception:
            client.close()
            raise
        client.get_transport().set_keepalive(15)
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _host_entry(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            self.connect()
            transport = self._client.get_transport()
        return transport

    def run(
        self,
        argv: list[str],
        check: bool = True,
        timeout: float = 60.0,
        input_text: str | None = None,
    ) -> command.Result:
        started = time.monotonic()
        line = shlex.join(argv)
        try:
            code, out, err = self._exec(line, timeout, input_text)
        except TimeoutError:
            code, out, err = -1, "", f"timed out after {timeout}s"
        except (paramiko.SSHException, OSError, EOFError) as exc:
            code, out, err = 255, "", f"ssh {self.address}: {exc}"
        result = command.Result(
            self.label, tuple(argv), code, out, err, time.monotonic() - started
        )
        _log_result(result)
        if check and not result.ok:
            raise command.CommandError(result)
        return result

    def _exec(self, line: str, timeout: float, input_text: str | None):
        channel = self._transport().open_session()
        try:
            channel.exec_command(line)
            if input_text is not None:
                channel.sendall(input_text.encode())
            channel.shutdown_write()
            out, err = _drain(channel, time.monotonic() + timeout)
            return channel.recv_exit_status(), out, err
        finally:
            channel.close()

    def put(self, local: str, remote: str) -> None:
        self._transfer("put", local, remote)

    def get(self, remote: str, local: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        self._transfer("get", remote, local)

    def _transfer(self, way: str, source: str, target: str) -> None:
        started = time.monotonic()
        self._transport()
        with self._client.open_sftp() as sftp:
            getattr(sftp, way)(source, target)
        log.debug(
            "[%s] sftp %s %s -> %s (%.2fs)",
            self.label,
            way,
            source,
            target,
            time.monotonic() - started,
        )

    def prefix(self) -> list[str]:
        """The OpenSSH client line that runs a command in this guest."""
        argv = [
            "ssh",
            "-i",
            self.key_path,
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"ConnectTimeout={int(CONNECT_TIMEOUT)}",
        ]
        argv += self._host_key_options()
        return argv + [f"{self.user}@{self.host}", "--"]

    def _host_key_options(self) -> list[str]:
        if not self.known_host_key:
            return [
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ]
        path = f"{self.key_path}.known_hosts"
        with open(path, "w") as out:
            out.write(f"{self._host_entry()} {self.known_host_key.strip()}\n")
        return ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={path}"]

    def spawn(
        self, argv: list[str], log_path: str, env: dict[str, str] | None = None
    ) -> Process:
        """Run *argv* in the guest through a local, tagged ``ssh`` process."""
        remote_env = [f"{name}={value}" for name, value in (env or {}).items()]
        remote = ["env", *remote_env, *argv] if remote_env else argv
        return super().spawn([shlex.join(remote)], log_path)


def _drain(channel: paramiko.Channel, deadline: float) -> tuple[str, str]:
    """Read stdout and stderr until the command exits or *deadline* passes."""
    out, err = bytearray(), bytearray()
    while True:
        while channel.recv_ready():
            out += channel.recv(65536)
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        if channel.exit_status_ready() and not (
            channel.recv_ready() or channel.recv_stderr_ready()
        ):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        # The channel's fileno becomes readable on output of either stream
        # and on exit, so this waits without spinning.
        select.select([channel], [], [], min(remaining, 1.0))
    return out.decode(errors="replace"), err.decode(errors="replace")


def _log_result(result: command.Result) -> None:
    tail = ""
    if not result.ok:
        lines = (result.stderr or result.stdout).strip().splitlines()[-2:]
        tail = " | " + " / ".join(lines) if lines else ""
    log.debug(
        "[%s] %s -> %s (%.2fs)%s",
        result.where,
        result.command,
        result.returncode,
        result.seconds,
        tail,
    )


def wait_for_ssh(
    guest,
    host: str,
    port: int,
    user: str,
    key_path: str,
    timeout: float,
    known_host_key: str | None = None,
    role: str | None = None,
    system: str = "freebsd",
) -> SSHNode:
    """Poll until *guest* accepts a login; return the logged-in node.

    Fails at once if the guest exits, and after *timeout* seconds
    otherwise, with the last lines of the guest's serial console.
    """
    run_id = runid.run_of_namespace(guest.name) or ""
    node = SSHNode(
        role or guest.name, run_id, host, port, user, key_path, known_host_key, system
    )
    what = f"{guest.name}: ssh {node.address}"
    last = {"error": "no attempt yet"}

    def logged_in() -> str | None:
        if not guest.alive():
            raise SSHTimeout(_failure(guest, what, "the guest exited", last["error"]))
        # A banner first: paramiko logs a traceback for every early refusal.
        missing = banner_missing(host, port, CONNECT_TIMEOUT)
        if missing:
            last["error"] = missing
            return missing
        try:
            node.connect(timeout=min(CONNECT_TIMEOUT, max(timeout, 1.0)))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            last["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
            return last["error"]
        return None

    try:
        wait_until(logged_in, timeout, what, interval=1.0)
    except WaitTimeout:
        raise SSHTimeout(
            _failure(guest, what, f"no login within {timeout:.0f}s", last["error"])
        ) from None
    return node


def banner_missing(host: str, port: int, timeout: float) -> str | None:
    """None once *port* greets like an SSH server, else why not yet."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = sock.recv(64)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if data.startswith(b"SSH-"):
        return None
    return f"no SSH banner (got {data[:16]!r})" if data else "closed without a banner"


def _failure(guest, what: str, why: str, error: str) -> str:
    return (
        f"{what}: expected a login, got {why} (last error: {error})\n"
        f"last console lines of {guest.name}:\n{guest.console_tail(20)}"
    )
