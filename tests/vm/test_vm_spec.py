"""lab/vm/spec.py: guests and NICs that no hypervisor should be given."""

import pytest

from lab.vm.spec import Nic, SpecError, VmSpec

RUN = "20261204-154353-a1a0"


def spec(**changes) -> VmSpec:
    fields = {"name": f"vjlab-{RUN}-g", "memory_mib": 512, "cpus": 1, "disk": "/d"}
    fields.update(changes)
    return VmSpec(**fields)


def test_a_guest_carries_its_run_id():
    assert spec().run_id == RUN


@pytest.mark.parametrize("name", ["debian", f"other-{RUN}-g", "vjlab-x-g", "a b"])
def test_a_name_without_the_run_id_is_refused(name):
    with pytest.raises(SpecError, match="guest name"):
        spec(name=name)


@pytest.mark.parametrize(
    ("field", "value"),
    [("firmware", "coreboot"), ("accel", "hvf"), ("disk_format", "vmdk")],
)
def test_choices_are_checked(field, value):
    with pytest.raises(SpecError, match=field):
        spec(**{field: value})


def test_an_initrd_needs_a_kernel():
    with pytest.raises(SpecError, match="without a kernel"):
        spec(initrd="/initrd.img")


def test_ssh_port_is_the_host_port_forwarded_to_22():
    nics = (Nic("tap", "t0"), Nic("user", forwards=((40080, 80), (40022, 22))))
    assert spec(nics=nics).ssh_port == 40022
    assert spec().ssh_port is None


@pytest.mark.parametrize(
    ("nic", "message"),
    [
        ({"kind": "vde"}, "NIC kind"),
        ({"kind": "tap", "forwards": ((1, 22),)}, "only 'user' NICs forward"),
        ({"kind": "user", "forwards": ((0, 22),)}, "out of range"),
        ({"kind": "user", "forwards": ((1, 2, 3),)}, "expected \\(host port"),
        ({"kind": "bridge"}, "needs a name"),
        ({"kind": "socket", "name": "127.0.0.1:1"}, "expected one of"),
        ({"kind": "user", "mac": "52-54-00-00-00-01"}, "mac"),
    ],
)
def test_bad_nics_are_refused(nic, message):
    with pytest.raises(SpecError, match=message):
        Nic(**nic)


def test_a_tap_may_be_left_for_the_hypervisor_to_create():
    assert Nic("tap").name is None
