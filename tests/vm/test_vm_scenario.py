"""scenarios/test_vm_debian.py: when the Debian guest scenario skips, and why."""

from scenarios import test_vm_debian as scenario


def test_missing_tools_are_named_with_their_packages(monkeypatch):
    absent = {"qemu-system-x86_64", "debootstrap"}
    monkeypatch.setattr(
        scenario.shutil, "which", lambda tool: None if tool in absent else "/usr/bin/x"
    )
    assert scenario.missing_pieces() == (
        "the Debian guest needs qemu-system-x86_64, debootstrap: "
        "apt-get install qemu-system-x86 debootstrap"
    )


def test_not_root_is_a_reason(monkeypatch):
    monkeypatch.setattr(scenario.shutil, "which", lambda tool: "/usr/bin/x")
    monkeypatch.setattr(scenario.os, "geteuid", lambda: 1000)
    assert "run as root" in scenario.missing_pieces()


def test_everything_present_means_no_skip(monkeypatch):
    monkeypatch.setattr(scenario.shutil, "which", lambda tool: "/usr/bin/x")
    monkeypatch.setattr(scenario.os, "geteuid", lambda: 0)
    assert scenario.missing_pieces() is None


def test_both_flavours_write_their_own_report_directory():
    assert scenario.FOLDERS == {"qemu": "vm-debian", "libvirt": "vm-debian-libvirt"}


class Options:
    def __init__(self, hosts: str):
        self.hosts = hosts

    def getoption(self, name):
        assert name == "vm_hosts"
        return self.hosts


def test_libvirt_hosts_come_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setattr(scenario, "LIBVIRT_URI", "qemu+ssh://a/system")
    two = Options("qemu+ssh://h1/system,qemu+ssh://h2/system")

    assert scenario._chosen_libvirt_uri(two) == "libvirt:qemu+ssh://h2/system"
    assert scenario._chosen_libvirt_uri(Options("")) == "libvirt:qemu+ssh://a/system"
    monkeypatch.setattr(scenario, "LIBVIRT_URI", None)
    # Neither: the scenario starts a private libvirtd.
    assert scenario._chosen_libvirt_uri(Options("")) is None
