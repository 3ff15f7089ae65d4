"""lab/vm/debian.py: the build's steps, its cache key and the guest's files."""

import os
import stat

import pytest
import yaml

from lab.vm import debian

OUT = "/cache/vjlab-20261204-154353-a1a0-debian12-0123.partial"
ROOT = f"{OUT}/rootfs"


@pytest.fixture
def steps():
    return debian.plan(OUT, repo="/repo")


def test_build_steps_in_order(steps):
    assert [step.name for step in steps] == [
        "debootstrap",
        "write guest files",
        "small initrd",
        "quiet units",
        "enable networkd and the seed reader",
        "venv",
        "copy repository",
        "build trust",
        "pip install",
        "tidy",
        "boot files",
        "sparse file",
        "mkfs.ext4 -d",
        "qcow2",
        "drop the tree",
    ]


def test_debootstrap_is_minbase_bookworm_with_every_package(steps):
    argv = steps[0].argv
    assert argv[:2] == ("debootstrap", "--variant=minbase")
    assert argv[3:] == ("bookworm", ROOT, "http://deb.debian.org/debian")
    included = set(argv[2].removeprefix("--include=").split(","))
    assert {
        "linux-image-amd64",
        "systemd-sysv",
        "openssh-server",
        "iproute2",
        "nftables",
        "tcpdump",
        "iputils-ping",
        "strongswan-charon",
        "strongswan-swanctl",
        "libcharon-extra-plugins",
        "libcharon-extauth-plugins",
        "python3",
        "python3-venv",
        "util-linux",
    } <= included


def test_chroot_steps_get_a_private_proc_and_a_clean_environment(steps):
    by_name = {step.name: step for step in steps}
    initrd = by_name["small initrd"]
    assert initrd.argv == (
        "unshare",
        "--mount",
        "--propagation",
        "private",
        f"--root={ROOT}",
        "--mount-proc",
        "update-initramfs",
        "-u",
        "-k",
        "all",
    )
    env = dict(initrd.env)
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"
    assert not [name for name in env if name.startswith(("PIP_", "SSL_", "REQ"))]


def test_pip_installs_the_lab_requirements_at_build_time(steps, monkeypatch):
    pip = next(step for step in steps if step.name == "pip install")
    assert pip.argv[6:] == (
        "/opt/vjlab/venv/bin/python",
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "-q",
        "-r",
        "/opt/vjlab/repo/lab/requirements.txt",
    )
    assert dict(pip.env)["PIP_CERT"] == debian.BUILD_CA


def test_pip_keeps_the_hosts_proxy(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://192.0.2.1:3128")
    monkeypatch.setenv("SSL_CERT_FILE", "/host/only.pem")
    env = dict(debian.pip_env())
    assert env["https_proxy"] == "http://192.0.2.1:3128"
    assert "SSL_CERT_FILE" not in env


def test_filesystem_is_made_without_loop_devices_then_converted(steps):
    by_name = {step.name: step for step in steps}
    assert by_name["mkfs.ext4 -d"].argv == (
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        "vjlab-root",
        "-d",
        ROOT,
        f"{OUT}/rootfs.ext4",
    )
    assert by_name["qcow2"].argv == (
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        f"{OUT}/rootfs.ext4",
        f"{OUT}/disk.qcow2",
    )
    tools = {step.argv[0] for step in steps if step.argv}
    assert not tools & {"mount", "losetup", "qemu-nbd", "kpartx", "parted"}


def test_kernel_boots_the_whole_disk_on_the_serial_console():
    assert "root=/dev/vda " in debian.KERNEL_CMDLINE
    assert "console=ttyS0" in debian.KERNEL_CMDLINE


def repo(tmp_path, requirements="pytest>=8\n"):
    (tmp_path / "lab").mkdir(exist_ok=True)
    (tmp_path / "lab" / "requirements.txt").write_text(requirements)
    return str(tmp_path)


def test_image_key_is_stable_and_follows_the_requirements(tmp_path):
    first = debian.image_key(repo(tmp_path))
    assert debian.image_key(repo(tmp_path)) == first
    assert debian.image_key(repo(tmp_path, "pytest>=9\n")) != first


def test_a_cached_image_is_found_by_its_key(tmp_path):
    assert debian.cached("0123", str(tmp_path)) is None
    image_dir = tmp_path / "debian12-0123"
    image_dir.mkdir()
    (image_dir / "manifest.json").write_text("{}")
    found = debian.cached("0123", str(tmp_path))
    assert found.disk == str(image_dir / "disk.qcow2")
    assert found.kernel == str(image_dir / "vmlinuz")


def test_ensure_reuses_a_cached_image_without_building(tmp_path, monkeypatch):
    source = repo(tmp_path)
    cache = tmp_path / "cache"
    key = debian.image_key(source)
    (cache / f"debian12-{key}").mkdir(parents=True)
    (cache / f"debian12-{key}" / "manifest.json").write_text("{}")
    monkeypatch.setattr(debian, "build", lambda *a: pytest.fail("rebuilt"))
    image, built = debian.ensure("20261204-154353-a1a0", str(cache), source)
    assert not built and image.key == key


def test_provision_key_follows_the_base():
    first = debian.provision_key(debian.BaseImage("a" * 16, "/c"))
    assert first != debian.provision_key(debian.BaseImage("b" * 16, "/c"))


def test_guest_files_are_written_with_their_modes(tmp_path):
    root = str(tmp_path)
    os.makedirs(f"{root}/etc")
    os.symlink("/run/somewhere", f"{root}/etc/hostname")
    debian.write_guest_files(root)
    seed_reader = f"{root}/usr/local/sbin/vjlab-seed"
    assert stat.S_IMODE(os.stat(seed_reader).st_mode) == 0o755
    assert not os.path.islink(f"{root}/etc/hostname")
    network = open(f"{root}/etc/systemd/network/50-vjlab.network").read()
    assert "DHCP=ipv4" in network


def test_seed_service_waits_for_the_cidata_device():
    unit = debian.GUEST_FILES["/etc/systemd/system/vjlab-seed.service"]
    assert "Wants=dev-disk-by\\x2dlabel-cidata.device" in unit
    assert "WantedBy=multi-user.target" in unit


def test_seed_reader_is_valid_python():
    compile(debian.SEED_READER, "vjlab-seed", "exec")


def test_seed_reader_installs_keys_from_what_cloud_config_writes(tmp_path):
    from lab.vm import seed

    namespace = {"__name__": "vjlab_seed"}
    exec(compile(debian.SEED_READER, "vjlab-seed", "exec"), namespace)
    installed = []
    namespace["install"] = lambda user, keys: installed.append((user, keys))
    namespace["read_seed"] = lambda: {
        "user-data": seed.cloud_config("ssh-ed25519 AAAAkey vjlab"),
        "meta-data": "",
    }
    assert namespace["main"]() == 0
    assert installed == [("root", ["ssh-ed25519 AAAAkey vjlab"])]


def test_seed_reader_ignores_anything_but_cloud_config():
    namespace = {"__name__": "vjlab_seed"}
    exec(compile(debian.SEED_READER, "vjlab-seed", "exec"), namespace)
    namespace["read_seed"] = lambda: {"user-data": "#!/bin/sh\nreboot\n"}
    namespace["install"] = lambda *a: pytest.fail("installed from a script")
    assert namespace["main"]() == 1


def test_provisioning_checks_the_lab_preflight_and_loads_modules():
    names = [what for what, _ in debian.PROVISION]
    assert "the lab's preflight passes" in names
    modprobe = dict(debian.PROVISION)["load the lab's kernel modules"]
    assert modprobe[:2] == ["modprobe", "-a"] and "esp4" in modprobe


def test_packages_are_read_from_the_chroot_dpkg_database(tmp_path, monkeypatch):
    seen = []

    class Result:
        stdout = "strongswan-charon 5.9.8-5+deb12u5\nlinux-image-6.1.0-50-amd64 6.1\n"

    def fake_run(argv, **kwargs):
        seen.append(argv)
        return Result()

    monkeypatch.setattr(debian.command, "run", fake_run)
    versions = debian._package_versions(str(tmp_path))
    assert seen[0][1] == f"--admindir={tmp_path}/var/lib/dpkg"
    assert debian._kernel_version(versions) == "6.1.0-50-amd64"


def test_manifest_is_yaml_and_json_readable(tmp_path):
    (tmp_path / "packages.json").write_text('{"strongswan-charon": "5.9.8"}')
    debian.write_manifest(str(tmp_path), "0123", 12.34)
    manifest = yaml.safe_load((tmp_path / "manifest.json").read_text())
    assert manifest["key"] == "0123" and manifest["strongswan"] == "5.9.8"
    assert manifest["build_seconds"] == 12.3
