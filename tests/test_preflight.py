"""lab/preflight.py with the machine's answers simulated: nothing is run."""

import os

import pytest

from lab import preflight

PLUGIN_PATHS = {
    os.path.join(preflight.PLUGIN_DIR, f"libstrongswan-{plugin}.so"): plugin
    for plugin, _ in preflight.PLUGINS
}


@pytest.fixture
def machine(monkeypatch):
    """A complete machine; tests take pieces away from ``missing``."""
    missing: set[str] = set()
    real_exists, real_access = os.path.exists, os.access

    def which(name):
        return None if name in missing else f"/usr/bin/{name}"

    def access(path, mode):
        if path == "/usr/lib/ipsec/charon":
            return "charon" not in missing
        return real_access(path, mode)

    def exists(path):
        if path in PLUGIN_PATHS:
            return PLUGIN_PATHS[path] not in missing
        return real_exists(path)

    monkeypatch.setattr(preflight.shutil, "which", which)
    monkeypatch.setattr(preflight.os, "access", access)
    monkeypatch.setattr(preflight.os.path, "exists", exists)
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    return missing


def test_complete_machine_has_no_problems(machine):
    assert preflight.problems() == []


def test_not_root_is_a_problem(machine, monkeypatch):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    assert preflight.problems() == [
        "not root: the lab creates namespaces; run it as root"
    ]


@pytest.mark.parametrize(
    ("name", "package"), [(name, package) for name, _, package in preflight.TOOLS]
)
def test_missing_tool_names_its_debian_package(machine, name, package):
    machine.add(name)
    assert preflight.problems() == [f"missing {name}: apt-get install {package}"]


@pytest.mark.parametrize(("plugin", "package"), preflight.PLUGINS)
def test_missing_plugin_names_its_debian_package(machine, plugin, package):
    machine.add(plugin)
    assert preflight.problems() == [
        f"missing strongSwan plugin {plugin}: apt-get install {package}"
    ]


def test_each_missing_piece_is_its_own_line(machine, monkeypatch):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    machine.update({"nft", "tcpdump", "kernel-libipsec"})
    assert preflight.problems() == [
        "not root: the lab creates namespaces; run it as root",
        "missing nft: apt-get install nftables",
        "missing tcpdump: apt-get install tcpdump",
        "missing strongSwan plugin kernel-libipsec: "
        "apt-get install libcharon-extra-plugins",
    ]


# Which Debian 12 package holds each file, as `dpkg -S` answers on a
# bookworm machine with the lab installed.
@pytest.mark.parametrize(
    ("name", "package"),
    [
        ("charon", "strongswan-charon"),
        ("swanctl", "strongswan-swanctl"),
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("nft", "nftables"),
        ("tcpdump", "tcpdump"),
        ("ping", "iputils-ping"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
    ],
)
def test_tool_package_is_the_one_debian_ships_it_in(name, package):
    assert {n: p for n, _, p in preflight.TOOLS}[name] == package


@pytest.mark.parametrize(
    ("plugin", "package"),
    [
        ("kernel-libipsec", "libcharon-extra-plugins"),
        ("unity", "libcharon-extra-plugins"),
        ("xauth-generic", "libcharon-extauth-plugins"),
        ("vici", "strongswan-swanctl"),
        ("kernel-netlink", "libstrongswan"),
        ("openssl", "libstrongswan-standard-plugins"),
    ],
)
def test_plugin_package_is_the_one_debian_ships_it_in(plugin, package):
    assert dict(preflight.PLUGINS)[plugin] == package
