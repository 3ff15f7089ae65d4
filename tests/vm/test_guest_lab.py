"""lab/vm/guest_lab.py: the guest's spec, the matrix command, fetching results."""

import io
import json
import os
import tarfile

import pytest

from lab import command
from lab.vm import debian, guest_lab

RUN = "20261204-154353-a1a0"


@pytest.fixture
def lab(tmp_path):
    return guest_lab.GuestLab(
        RUN, workdir=str(tmp_path / "work"), cache_dir=str(tmp_path / "cache")
    )


@pytest.fixture
def base(tmp_path):
    return debian.BaseImage("0123456789abcdef", str(tmp_path / "debian12-0123"))


def test_guest_spec_is_tagged_seeded_and_forwards_only_ssh_on_loopback(lab, base):
    spec = lab.spec("cells", "/cache/overlays/x.qcow2", base)
    assert spec.name == f"vjlab-{RUN}-debian12-cells" and spec.run_id == RUN
    assert spec.kernel == base.kernel and spec.initrd == base.initrd
    assert spec.cmdline.startswith("root=/dev/vda ")
    (nic,) = spec.nics
    assert nic.kind == "user" and nic.net == "198.51.100.128/25"
    assert [guest for _, guest in nic.forwards] == [22]
    assert spec.console_log.endswith("console-cells.log")
    assert os.path.exists(spec.seed_iso)


def test_the_seed_is_made_once_per_run_with_the_runs_key(lab):
    from lab.vm import seed

    first = lab.seed_iso()
    assert lab.seed_iso() == first
    _, files = seed.read_seed_iso(first)
    public = open(lab.key_path + ".pub").read().strip()
    assert public in files["user-data"]
    assert public.endswith(f"vjlab-{RUN}")


def test_matrix_command_runs_the_linux_subset():
    argv = guest_lab.pytest_argv(guest_lab.LINUX_SUBSET)
    assert argv[:4] == [
        "/opt/vjlab/venv/bin/python",
        "-m",
        "pytest",
        "scenarios/test_matrix.py",
    ]
    pairs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--axis"]
    assert pairs == ["isolation=jail", "nat=nat", "auth=good"]
    assert argv[argv.index("--lab-reports") + 1] == "/var/tmp/vjlab-reports"
    assert "no:cacheprovider" in argv


class FakeNode:
    """A guest whose report directory is a tar made here."""

    label = "vm-debian-cells"

    def __init__(self, runs: list[str], members: dict[str, bytes]):
        self.runs = runs
        self.members = members
        self.commands = []

    def run(self, argv, check=True, timeout=60.0, input_text=None):
        self.commands.append(argv)
        stdout = "\n".join(self.runs + ["latest"]) + "\n" if argv[0] == "ls" else ""
        return command.Result(self.label, tuple(argv), 0, stdout, "", 0.1)

    def get(self, remote, local):
        with tarfile.open(local, "w:gz") as tar:
            for name, data in self.members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_fetch_brings_back_results_and_evidence(lab, tmp_path):
    results = json.dumps({"run": {"id": "g"}, "cells": []}).encode()
    node = FakeNode(
        ["20261204-170000-beef"],
        {
            "./results.json": results,
            "./cells/local_jail/client/charon.log": b"IKE_SA established\n",
        },
    )
    os.makedirs(lab.workdir)
    target = str(tmp_path / "reports" / RUN / "vm-debian")
    assert lab.fetch_reports(node, target) == target
    assert open(os.path.join(target, "results.json"), "rb").read() == results
    assert os.path.exists(os.path.join(target, "cells/local_jail/client/charon.log"))
    assert [
        "tar",
        "-czf",
        "/var/tmp/vjlab-report.tar.gz",
        "-C",
        "/var/tmp/vjlab-reports/20261204-170000-beef",
        ".",
    ] in node.commands


def test_fetch_refuses_names_that_leave_the_target(lab, tmp_path):
    node = FakeNode(["20261204-170000-beef"], {"../../escaped": b"x"})
    os.makedirs(lab.workdir)
    with pytest.raises(tarfile.OutsideDestinationError):
        lab.fetch_reports(node, str(tmp_path / "target"))
    assert not (tmp_path / "escaped").exists()


def test_fetch_needs_exactly_one_guest_run(lab, tmp_path):
    node = FakeNode([], {})
    with pytest.raises(
        RuntimeError, match="expected one run in /var/tmp/vjlab-reports"
    ):
        lab.fetch_reports(node, str(tmp_path / "target"))


def test_mismatches_are_the_cells_that_did_not_pass():
    cells = [
        {"id": "local/jail/netlink/tun-visible/nat/good", "verdict": "pass"},
        {"id": "local/jail/netlink/tun-hidden/nat/good", "verdict": "fail"},
    ]
    run = guest_lab.GuestRun(1, "", "/d", {"cells": cells}, 1.0)
    assert [c["id"] for c in run.mismatches()] == [
        "local/jail/netlink/tun-hidden/nat/good"
    ]


def test_unavailable_names_what_is_missing(lab, monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda tool: None)
    monkeypatch.setattr(lab.hypervisor, "unavailable", lambda: "qemu missing")
    problem = lab.unavailable()
    assert "debootstrap missing: apt-get install debootstrap" in problem
    assert "qemu missing" in problem


def test_consoles_are_kept_next_to_the_report(lab, tmp_path):
    os.makedirs(lab.workdir)
    for name in ("console-cells.log", "id_ed25519"):
        with open(os.path.join(lab.workdir, name), "w") as out:
            out.write("x")
    target = tmp_path / "kept"
    lab.keep_consoles(str(target))
    assert sorted(os.listdir(target)) == ["console-cells.log"]
