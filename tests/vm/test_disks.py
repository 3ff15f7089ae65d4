"""lab/vm/disks.py: layer keys, overlays, ZFS clones and tagged leftovers."""

import hashlib
import json
import os
import shutil
import threading

import pytest

from lab.vm import disks

RUN = "20261204-154353-a1a0"


def test_layer_key_is_stable_across_processes_and_releases():
    # A changed value here means every cached image is rebuilt: on purpose only.
    assert disks.layer_key("debian12", "1", "bookworm") == "210ea0eaa8116ee4"


def test_layer_key_is_sha256_of_length_prefixed_inputs():
    data = b"".join(len(item).to_bytes(8, "big") + item for item in (b"a", b"bc"))
    assert disks.layer_key("a", "bc") == hashlib.sha256(data).hexdigest()[:16]


def test_layer_key_depends_on_every_input_and_its_order():
    keys = {
        disks.layer_key("a", "b"),
        disks.layer_key("b", "a"),
        disks.layer_key("a", "b", ""),
        disks.layer_key("ab"),
        disks.layer_key("a", "bc"),
        disks.layer_key("ab", "c"),
    }
    assert len(keys) == 6


def test_layer_key_is_a_short_hex_name():
    key = disks.layer_key("x")
    assert len(key) == 16 and int(key, 16) >= 0


def test_overlay_runs_qemu_img_with_the_backing_format(tmp_path, monkeypatch):
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 512)
    commands = []
    monkeypatch.setattr(disks.command, "run", lambda argv, **kw: commands.append(argv))
    path = str(tmp_path / "layers" / f"vjlab-{RUN}-g.qcow2")
    assert disks.overlay(str(base), path, "raw") == path
    assert commands == [
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), path]
    ]
    assert os.path.isdir(tmp_path / "layers")


def test_overlay_of_a_missing_base_says_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="base image .*missing"):
        disks.overlay(str(tmp_path / "none.qcow2"), str(tmp_path / "o.qcow2"))


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")
def test_a_real_overlay_chain(tmp_path):
    base = str(tmp_path / "base.qcow2")
    disks.command.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1M"])
    middle = disks.overlay(base, str(tmp_path / "middle.qcow2"))
    top = disks.overlay(middle, str(tmp_path / "top.qcow2"))
    assert disks.backing_chain(top) == [top, middle, base]


def test_zfs_clone_for_a_bhyve_guest():
    assert disks.zfs_clone_commands(
        "tank/vjlab/fbsd15@provisioned", f"tank/vjlab/vjlab-{RUN}-g"
    ) == [
        [
            "zfs",
            "clone",
            "-o",
            "volmode=dev",
            "tank/vjlab/fbsd15@provisioned",
            f"tank/vjlab/vjlab-{RUN}-g",
        ]
    ]
    assert (
        disks.zvol(f"tank/vjlab/vjlab-{RUN}-g") == f"/dev/zvol/tank/vjlab/vjlab-{RUN}-g"
    )
    assert disks.zfs_destroy_commands("tank/x") == [["zfs", "destroy", "-r", "tank/x"]]


@pytest.mark.parametrize(
    ("snapshot", "dataset"),
    [("tank/base", "tank/x"), ("tank/base@s", "tank/x@y"), ("tank/b@s", "/dev/zvol/x")],
)
def test_zfs_names_are_checked(snapshot, dataset):
    with pytest.raises(ValueError):
        disks.zfs_clone_commands(snapshot, dataset)


def test_tagged_files_finds_only_run_tagged_names(tmp_path, monkeypatch):
    monkeypatch.setattr(disks, "CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(disks, "OVERLAY_DIR", str(tmp_path / "overlays"))
    (tmp_path / "overlays").mkdir()
    ours = tmp_path / "overlays" / f"vjlab-{RUN}-debian12-cells.qcow2"
    partial = tmp_path / f"vjlab-{RUN}-debian12-0123.partial"
    other = tmp_path / "vjlab-20261204-000000-beef-debian12-x.qcow2"
    for path in (ours, other):
        path.touch()
    partial.mkdir()
    (tmp_path / "debian12-0123456789abcdef").mkdir()
    assert disks.tagged_files(RUN) == [str(partial), str(ours)]
    assert len(disks.tagged_files(None)) == 3


def test_remove_takes_files_and_directories(tmp_path):
    directory = tmp_path / "partial"
    (directory / "rootfs").mkdir(parents=True)
    single = tmp_path / "o.qcow2"
    single.touch()
    disks.remove(str(directory))
    disks.remove(str(single))
    disks.remove(str(tmp_path / "never-there"))
    assert not directory.exists() and not single.exists()


def test_a_second_builder_waits_for_the_lock(tmp_path):
    lock = str(tmp_path / ".debian12.lock")
    order = []

    def second():
        with disks.locked(lock, timeout=10):
            order.append("second")

    with disks.locked(lock, timeout=10):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1.5)
        order.append("first done")
    thread.join(timeout=10)
    assert order == ["first done", "second"]


def test_qemu_img_info_is_read_as_json(monkeypatch):
    chain = [{"filename": "/c/top.qcow2"}, {"filename": "/c/base.qcow2"}]

    class Result:
        stdout = json.dumps(chain)

    monkeypatch.setattr(disks.command, "run", lambda argv, **kw: Result())
    assert disks.backing_chain("/c/top.qcow2") == ["/c/top.qcow2", "/c/base.qcow2"]
