"""lab/reaper.py: how a leftover process is tied to its run."""

from lab import reaper


def test_a_qemu_started_by_libvirtd_is_found_by_its_guest_name():
    run = "20261204-120000-abcd"
    argv = [
        b"/usr/bin/qemu-system-x86_64", b"-name",
        f"guest=vjlab-{run}-debian12-cells-libvirt,debug-threads=on".encode(),
        b"-S",
    ]  # fmt: skip

    assert reaper.guest_run(argv) == run
    assert (
        reaper.guest_run([b"/usr/bin/qemu-system-x86_64", b"-name", b"guest=x"]) is None
    )
    assert reaper.guest_run([b"/bin/sleep", b"-name", argv[2]]) is None
