"""lab/vm/hypervisor.py: choosing a hypervisor, consoles, leftovers."""

import pytest

from lab.vm import bhyve, disks, hypervisor
from lab.vm.bhyve import Bhyve
from lab.vm.libvirt_backend import Libvirt
from lab.vm.qemu import Qemu

RUN = "20261204-154353-a1a0"


@pytest.mark.parametrize("uri", [None, "", "qemu"])
def test_plain_qemu_is_the_default(uri):
    assert isinstance(hypervisor.select(uri), Qemu)


def test_libvirt_keeps_its_uri():
    chosen = hypervisor.select("libvirt:qemu+ssh://lab@192.0.2.10/system")
    assert isinstance(chosen, Libvirt)
    assert chosen.uri == "qemu+ssh://lab@192.0.2.10/system"


def test_bhyve():
    assert isinstance(hypervisor.select("bhyve"), Bhyve)


def test_an_unknown_hypervisor_lists_the_choices():
    with pytest.raises(ValueError, match="expected qemu, libvirt:<uri>"):
        hypervisor.select("vmware")


def test_console_tail_drops_terminal_escapes(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(
        b"\x1b[0;32m  OK  \x1b[0m] Started ssh.service\r\n\r\n"
        b"[   16.3] powernow_k8: Power state transitions not supported\r\n"
        b"vjlab-debian12 login: "
    )
    assert hypervisor.tail(str(log), 2) == (
        "[   16.3] powernow_k8: Power state transitions not supported\n"
        "vjlab-debian12 login:"
    )
    assert hypervisor.tail(str(log), 5).startswith("  OK  ] Started ssh.service")


def test_console_tail_of_a_missing_log_says_so(tmp_path):
    assert hypervisor.tail(str(tmp_path / "none.log")).startswith("(no console log")
    (tmp_path / "empty.log").touch()
    assert hypervisor.tail(str(tmp_path / "empty.log")) == "(console log empty)"


def test_free_port_is_a_loopback_port():
    assert 1024 < hypervisor.free_port() < 65536


def test_leftovers_lists_tagged_files_and_removes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(disks, "CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(disks, "OVERLAY_DIR", str(tmp_path / "overlays"))
    monkeypatch.setattr(bhyve, "VMM_DIR", str(tmp_path / "no-vmm"))
    (tmp_path / "overlays").mkdir()
    overlay = tmp_path / "overlays" / f"vjlab-{RUN}-debian12-cells.qcow2"
    overlay.touch()
    (tmp_path / "debian12-0123456789abcdef").mkdir()
    found = hypervisor.leftovers(RUN)
    assert found == [f"file:{overlay}"]
    assert hypervisor.run_of(found[0]) == RUN
    hypervisor.remove(found[0])
    assert not overlay.exists()
    assert hypervisor.leftovers(RUN) == []


def test_run_of_reads_every_kind_of_item():
    assert hypervisor.run_of(f"domain:qemu:///system|vjlab-{RUN}-g") == RUN
    assert hypervisor.run_of(f"tap:tap3|vjlab-{RUN}-g") == RUN
    assert hypervisor.run_of("file:/cache/debian12-0123/disk.qcow2") is None


def test_removing_an_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown kind 'vm'"):
        hypervisor.remove("vm:something")


def test_bridges_and_zvols_are_leftovers_of_their_run():
    assert hypervisor.run_of(f"bridge:bridge4|vjlab-{RUN}-1a2b3c4d-wan") == RUN
    assert hypervisor.run_of(f"zvol:tank/vjlab/vjlab-{RUN}-1a2b3c4d-guest") == RUN
    assert hypervisor.run_of("zvol:tank/vjlab/freebsd-15.0-pkg-0123abcd") is None


def test_leftovers_lists_bridges_then_zvols_and_removes_each(monkeypatch, tmp_path):
    from lab.vm import zfs_layers

    monkeypatch.setattr(disks, "CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(disks, "OVERLAY_DIR", str(tmp_path / "overlays"))
    monkeypatch.setattr(bhyve, "tagged_vms", lambda run: [f"vjlab-{run}-g"])
    monkeypatch.setattr(bhyve, "tagged_taps", lambda run: [])
    monkeypatch.setattr(bhyve, "tagged_bridges", lambda run: [f"bridge4|vjlab-{run}-w"])
    monkeypatch.setattr(
        zfs_layers, "tagged_volumes", lambda run: [f"tank/vjlab/vjlab-{run}-g"]
    )
    removed = []
    monkeypatch.setattr(bhyve, "destroy_bridge", removed.append)
    monkeypatch.setattr(zfs_layers, "destroy_volume", removed.append)

    found = hypervisor.leftovers(RUN)

    # A zvol is busy while its VM lives: VMs come first, zvols last.
    assert found == [
        f"bhyve:vjlab-{RUN}-g",
        f"bridge:bridge4|vjlab-{RUN}-w",
        f"zvol:tank/vjlab/vjlab-{RUN}-g",
    ]
    for item in found[1:]:
        hypervisor.remove(item)
    assert removed == [f"bridge4|vjlab-{RUN}-w", f"tank/vjlab/vjlab-{RUN}-g"]
