"""vpnjail/system.py: which system vpnjail runs on, and its driver."""

import platform
import sys
import types

import pytest

from vpnjail import cli, system
from vpnjail.drivers.linux import LinuxDriver


@pytest.mark.parametrize(("reported", "name"), [("Linux", "linux"),
                                                ("FreeBSD", "freebsd")])  # fmt: skip
def test_current_accepts_linux_and_freebsd(monkeypatch, reported, name):
    monkeypatch.setattr(platform, "system", lambda: reported)
    assert system.current() == name


@pytest.mark.parametrize("reported", ["Darwin", "Windows", "OpenBSD", ""])
def test_current_refuses_other_systems(monkeypatch, reported):
    monkeypatch.setattr(platform, "system", lambda: reported)
    with pytest.raises(RuntimeError) as caught:
        system.current()
    assert str(caught.value) == (
        f"vpnjail runs on Linux and FreeBSD, not on {reported.lower()}"
    )


def test_the_cli_refuses_another_system_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert cli.main(["check"]) == 1
    assert capsys.readouterr().err == (
        "vpnjail: vpnjail runs on Linux and FreeBSD, not on darwin\n"
    )


def test_defaults_per_system():
    assert system.DEFAULTS == {
        "linux": {"profiles": "/etc/vpnjail/profiles", "state": "/run/vpnjail"},
        "freebsd": {
            "profiles": "/usr/local/etc/vpnjail/profiles",
            "state": "/var/db/vpnjail",
        },
    }


@pytest.mark.parametrize(
    ("options", "prefix", "host_netns"),
    [
        ({"state_dir": "/srv/vj"}, "vpnjail-", None),
        ({"state_dir": "/srv/vj", "prefix": None, "host_netns": None}, "vpnjail-",
         None),
        ({"state_dir": "/srv/vj", "prefix": "vjlab-", "host_netns": "vjhost"},
         "vjlab-", "vjhost"),
    ],
)  # fmt: skip
def test_linux_gets_the_linux_driver_with_its_options(options, prefix, host_netns):
    driver = system.driver("linux", options)
    assert isinstance(driver, LinuxDriver)
    assert (driver.state_dir, driver.prefix, driver.host_netns) == (
        "/srv/vj",
        prefix,
        host_netns,
    )


@pytest.mark.parametrize(("egress", "expected"), [(None, "vtnet0"), ("em0", "em0")])
def test_freebsd_gets_the_freebsd_driver_with_its_options(
    monkeypatch, egress, expected
):
    # A stand-in module: the FreeBSD driver itself is tested elsewhere.
    class FreeBSDDriver:
        def __init__(self, state_dir, egress):
            self.state_dir, self.egress = state_dir, egress

    module = types.ModuleType("vpnjail.drivers.freebsd")
    module.FreeBSDDriver = FreeBSDDriver
    monkeypatch.setitem(sys.modules, "vpnjail.drivers.freebsd", module)
    driver = system.driver("freebsd", {"state_dir": "/var/run/vj", "egress": egress})
    assert isinstance(driver, FreeBSDDriver)
    assert (driver.state_dir, driver.egress) == ("/var/run/vj", expected)
