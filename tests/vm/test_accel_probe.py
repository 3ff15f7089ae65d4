"""lab/vm/accel.py: choosing an accelerator from what the probe guest printed.

The fake processes replay debug-console output recorded on the
development machine: SeaBIOS and the boot sector under TCG, and a KVM
that boots SeaBIOS but fails on the boot sector's first FPU instruction;
plus the KVM that reset-loops inside SeaBIOS seen on other hosts.
"""

import logging
import os

import pytest

from lab.vm import accel

SEABIOS = (
    b"SeaBIOS (version 1.16.2-debian-1.16.2-1)\n"
    b"Running on QEMU (q35)\n"
    b"Running option rom at c000:0003\n"
)
TCG_BOOTS = (
    SEABIOS + b"Booting from Hard Disk...\nBooting from 0000:7c00\nvjlab-fpu-ok\n"
)
KVM_EMULATION_FAILURE = (
    SEABIOS.replace(b"(q35)\n", b"(q35)\nRunning on KVM\n")
    + b"Booting from Hard Disk...\nBooting from 0000:7c00\n"
    + b"KVM internal error. Suberror: 1\n"
    + b"extra data[0]: 0x0000000000000001\nemulation failure\n"
    + b"RAX=0000000000000000 RBX=0000000000000000\n"
)
KVM_RESET_LOOP = b"SeaBIOS (version 1.16.2-debian-1.16.2-1)\nRunning on KVM\n"


class FakeProcess:
    """A QEMU that writes *output* to its stdout, then exits or stays."""

    def __init__(self, output: bytes, exits_with: int | None):
        read_end, write_end = os.pipe()
        os.write(write_end, output)
        self._write_end = write_end
        self.exits_with = exits_with
        if exits_with is not None:
            os.close(write_end)
        self.stdout = os.fdopen(read_end, "rb")
        self.killed = False

    def poll(self):
        return -9 if self.killed else self.exits_with

    def wait(self, timeout=None):
        return self.poll()

    def kill(self):
        self.killed = True
        if self.exits_with is None:
            os.close(self._write_end)


def launcher(outputs: dict[str, tuple[bytes, int | None]], started: list):
    def launch(argv, run_id):
        name = argv[argv.index("-accel") + 1]
        disk = next(a for a in argv if a.startswith("file=")).split(",")[0][5:]
        with open(disk, "rb") as src:
            sector = src.read(512)
        started.append((name, argv[argv.index("-cpu") + 1], run_id, sector))
        return FakeProcess(*outputs[name])

    return launch


@pytest.fixture
def probe(tmp_path):
    """accel.probe with a fake /dev/kvm and its scratch disk under tmp_path."""
    kvm = tmp_path / "kvm"
    kvm.touch()

    def run(deadline, outputs, started=None, run_id="r", kvm_device=str(kvm)):
        launch = launcher(outputs, [] if started is None else started)
        return accel.probe(deadline, run_id, launch, kvm_device, str(tmp_path))

    return run


def test_kvm_failing_on_the_fpu_falls_back_to_tcg_at_once(probe):
    started = []
    outputs = {"kvm": (KVM_EMULATION_FAILURE, None), "tcg": (TCG_BOOTS, None)}
    chosen = probe(30, outputs, started)
    assert chosen.name == "tcg"
    assert chosen.timeout_factor == 6.0
    assert chosen.cpu == "max"
    assert chosen.detail.startswith(
        "kvm: firmware reached 'Booting from', then failed: "
        "KVM internal error. Suberror: 1; tcg: boot sector ran its FPU test in "
    )
    assert [s[:2] for s in started] == [("kvm", "host"), ("tcg", "max")]


def test_kvm_that_reset_loops_falls_back_to_tcg(probe):
    chosen = probe(5, {"kvm": (KVM_RESET_LOOP, 0), "tcg": (TCG_BOOTS, None)})
    assert chosen.name == "tcg"
    assert (
        "kvm: QEMU exited with status 0 before the boot sector ran "
        "(last output: Running on KVM)" in chosen.detail
    )


def test_kvm_that_boots_is_chosen_without_trying_tcg(probe):
    started = []
    chosen = probe(5, {"kvm": (TCG_BOOTS, None)}, started)
    assert chosen.name == "kvm" and chosen.timeout_factor == 1.0
    assert chosen.cpu == "host"
    assert [s[0] for s in started] == ["kvm"]


def test_a_silent_guest_fails_at_the_deadline(probe):
    with pytest.raises(accel.AccelError) as caught:
        probe(0.3, {"kvm": (b"", None), "tcg": (SEABIOS, None)})
    message = str(caught.value)
    assert "kvm: no boot-sector mark within 0s (last output: (none))" in message
    assert "tcg: no boot-sector mark within 0s (last output: Running option" in message


def test_no_kvm_device_skips_kvm_without_starting_it(probe, tmp_path):
    started = []
    missing = str(tmp_path / "no-kvm")
    chosen = probe(5, {"tcg": (TCG_BOOTS, None)}, started, kvm_device=missing)
    assert chosen.name == "tcg"
    assert f"kvm: {missing} missing" in chosen.detail
    assert [s[0] for s in started] == ["tcg"]


def test_probe_guests_boot_the_fpu_sector_and_carry_the_run_id(probe):
    started = []
    run = "20261204-154353-a1a0"
    probe(5, {"kvm": (TCG_BOOTS, None)}, started, run_id=run)
    _, _, run_id, sector = started[0]
    assert run_id == run
    assert sector == accel.BOOT_SECTOR
    assert sector[510:] == b"\x55\xaa"
    assert bytes.fromhex("dbe3") in sector  # fninit


def test_the_probe_disk_is_gone_afterwards(tmp_path):
    kvm = tmp_path / "kvm"
    kvm.touch()
    seen = []

    def launch(argv, run_id):
        seen.append(next(a for a in argv if a.startswith("file=")).split(",")[0][5:])
        return FakeProcess(TCG_BOOTS, None)

    accel.probe(5, None, launch, str(kvm), str(tmp_path))
    assert seen and seen[0].startswith(str(tmp_path))
    assert not os.path.exists(seen[0])


def test_probe_guest_has_firmware_a_read_only_disk_and_no_reboot():
    argv = accel.probe_argv("tcg", "/tmp/boot.img")
    assert argv[0] == "qemu-system-x86_64"
    assert "-nodefaults" in argv and "-no-reboot" in argv
    assert "file=/tmp/boot.img,format=raw,if=none,id=boot,readonly=on" in argv
    assert "isa-debugcon,iobase=0x402,chardev=dbg" in argv


def test_an_explicit_choice_skips_the_probe(monkeypatch):
    monkeypatch.setattr(accel, "probe", lambda **kw: pytest.fail("probed"))
    assert accel.resolve("tcg").name == "tcg"
    monkeypatch.setenv(accel.OVERRIDE_VAR, "kvm")
    assert accel.resolve("auto").name == "kvm"


def test_tcg_timeouts_grow_and_the_log_says_why_once(caplog, monkeypatch):
    monkeypatch.setattr(accel, "_explained", set())
    chosen = accel.Accel("tcg", "kvm: emulation failure", 6.0)
    with caplog.at_level(logging.INFO, logger="lab.vm.accel"):
        assert chosen.scaled(100) == 600
        assert chosen.scaled(10) == 60
    lines = [r.getMessage() for r in caplog.records if r.name == "lab.vm.accel"]
    assert lines == ["guest timeouts x6.0 under tcg: kvm: emulation failure"]


def test_kvm_timeouts_stay_and_say_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="lab.vm.accel"):
        assert accel.Accel("kvm", "booted", 1.0).scaled(100) == 100
    assert not [r for r in caplog.records if r.name == "lab.vm.accel"]
