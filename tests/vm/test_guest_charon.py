"""lab/vm/guest_charon.py: the commands that start, watch and stop charon.

Nothing is started: the commands are compared as lists, per guest system.
"""

import pytest

from lab.platforms import freebsd
from lab.vm import guest_charon
from lab.vm.ssh import SSHNode

RUN = "20260501-120000-abcd"


@pytest.fixture
def jail_node():
    host = SSHNode("host", RUN, "127.0.0.1", 2222, "root", "/k/lab_ed25519")
    return freebsd.JailNode(host, "lab", "/var/db/vjlab/jails/lab")


def test_freebsd_charon_runs_under_daemon_with_its_config_in_run():
    assert guest_charon.start_argv("freebsd") == [
        "daemon", "-P", "/run/daemon-charon.pid", "-o", "/run/charon.out",
        "env", "STRONGSWAN_CONF=/run/strongswan.conf",
        "/usr/local/libexec/ipsec/charon",
    ]  # fmt: skip


def test_linux_charon_is_detached_by_a_shell_that_records_its_pid():
    argv = guest_charon.start_argv("linux")

    assert argv[:4] == ["setsid", "-f", "sh", "-c"]
    assert argv[4] == (
        "echo $$ > /run/daemon-charon.pid; exec env "
        "STRONGSWAN_CONF=/run/strongswan.conf /usr/lib/ipsec/charon "
        "> /run/charon.out 2>&1 < /dev/null"
    )


@pytest.mark.parametrize(
    ("system", "alive", "term"),
    [
        (
            "freebsd",
            ["pgrep", "-q", "-F", "/run/p"],
            ["pkill", "-TERM", "-F", "/run/p"],
        ),
        (
            "linux",
            ["sh", "-c", 'kill -0 "$(cat /run/p)" 2>/dev/null'],
            ["sh", "-c", 'kill -TERM "$(cat /run/p)" 2>/dev/null'],
        ),
    ],
)
def test_pid_file_commands_per_system(system, alive, term):
    assert guest_charon.alive_argv(system, "/run/p") == alive
    assert guest_charon.signal_argv(system, "TERM", "/run/p") == term


def test_vici_is_forwarded_as_a_unix_socket(jail_node):
    argv = guest_charon.vici_forward_argv(
        jail_node, "/run/vjlab/x/charon.vici", "/var/db/vjlab/jails/lab/run/charon.vici"
    )

    assert argv[:5] == ["ssh", "-i", "/k/lab_ed25519", "-p", "2222"]
    assert argv[-5:] == [
        "-o", "StreamLocalBindUnlink=yes",
        "-L", "/run/vjlab/x/charon.vici:/var/db/vjlab/jails/lab/run/charon.vici",
        "root@127.0.0.1",
    ]  # fmt: skip
    assert "-N" in argv and "ExitOnForwardFailure=yes" in argv and "--" not in argv


def test_a_guest_charon_follows_its_node_system():
    linux = SSHNode("gw", RUN, "127.0.0.1", 2222, "root", "/k", system="linux")

    assert guest_charon.GuestCharon(linux, "/tmp/x", RUN).system == "linux"


def test_the_vici_socket_of_a_jail_is_below_its_root(jail_node):
    assert jail_node.guest_path("/run/x") == "/var/db/vjlab/jails/lab/run/x"
    assert jail_node.system == "freebsd"


def test_a_linux_guest_node_gets_linux_commands_and_the_guest_python():
    from lab.platforms.local import LocalPlatform

    node = SSHNode("lan", RUN, "127.0.0.1", 2222, "root", "/k", system="linux")
    platform = LocalPlatform()

    assert platform.listening_argv(node, 8080) == ["ss", "-Hltn", "sport = :8080"]
    assert platform.ping_argv(node, "203.0.113.10")[5:7] == ["-W", "2"]
    assert platform.python_argv(node, "lab.service")[:3] == [
        "env", "PYTHONPATH=/var/db/vjlab/py", "python3",
    ]  # fmt: skip


def test_the_local_platform_refuses_an_unknown_responder_by_name():
    from lab.platforms.local import LocalPlatform

    with pytest.raises(ValueError, match="responder 'cloud': allowed namespaces, vm"):
        LocalPlatform("cloud")
