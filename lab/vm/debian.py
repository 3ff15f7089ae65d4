"""A Debian 12 guest built by the lab from Debian's own packages.

The base image is made without loop devices or partition tables:
debootstrap into a directory, the lab's Python dependencies installed from
PyPI into a virtualenv there (at build time: the guest has no outside
network when it runs), a copy of the repository, then ``mkfs.ext4 -d`` on
a sparse file (root=/dev/vda) converted to qcow2. The kernel and initrd
sit next to it for direct kernel boot. A small seed reader stands in for
cloud-init: it installs the SSH key from the NoCloud ``cidata`` ISO.

The image is cached under ``images/cache/debian12-<key>/``, where the key
is :func:`lab.vm.disks.layer_key` of every input; a build with the same
inputs reuses it. :data:`PROVISION` is what the provisioned layer adds,
over SSH, on top of it.
"""

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lab import command
from lab.vm import disks

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Bump when a step below changes what it produces without changing an input.
RECIPE = "1"
PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "openssh-server",
    "iproute2",
    "nftables",
    "tcpdump",
    "iputils-ping",
    "procps",
    "util-linux",
    "strongswan-charon",
    "strongswan-swanctl",
    "libcharon-extra-plugins",
    "libcharon-extauth-plugins",
    "libstrongswan-standard-plugins",
    "python3",
    "python3-venv",
    "python3-yaml",
    "ca-certificates",
)
GUEST_VENV = "/opt/vjlab/venv"
GUEST_REPO = "/opt/vjlab/repo"
GUEST_PYTHON = f"{GUEST_VENV}/bin/python"
IMAGE_BYTES = 4 * 1024**3
ROOT_LABEL = "vjlab-root"
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 panic=-1"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUILD_CA = "/tmp/vjlab-build-ca.crt"
TOOLS = {
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "unshare": "util-linux",
}
# Modules the lab's cells use, loaded at every boot of the provisioned layer.
MODULES = ("esp4", "xfrm_user", "xfrm4_tunnel", "af_key", "tun", "veth", "nf_tables")
# Units that only fetch or tidy up; the guest is offline and short-lived.
DISABLED_UNITS = (
    "strongswan-starter.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)

SEED_READER = '''\
#!/usr/bin/python3
"""Install SSH keys from a NoCloud "cidata" seed: the lab's cloud-init.

Applies only users[].ssh_authorized_keys, ssh_authorized_keys (for root)
and meta-data's local-hostname; says which other keys it ignored.
"""
import os
import pwd
import subprocess
import sys
import tempfile

import yaml

DEVICE = "/dev/disk/by-label/cidata"
APPLIED = {"users", "ssh_authorized_keys", "disable_root"}


def read_seed():
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", "-o", "ro", DEVICE, mnt], check=True)
        try:
            files = {}
            for name in ("user-data", "meta-data"):
                path = os.path.join(mnt, name)
                if os.path.exists(path):
                    with open(path) as src:
                        files[name] = src.read()
            return files
        finally:
            subprocess.run(["umount", mnt], check=True)


def install(user, keys):
    account = pwd.getpwnam(user)
    ssh_dir = os.path.join(account.pw_dir, ".ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    path = os.path.join(ssh_dir, "authorized_keys")
    present = set()
    if os.path.exists(path):
        with open(path) as src:
            present = {line.strip() for line in src}
    new = [key.strip() for key in keys if key.strip() not in present]
    with open(path, "a") as out:
        out.writelines(key + "\\n" for key in new)
    for item in (ssh_dir, path):
        os.chown(item, account.pw_uid, account.pw_gid)
    os.chmod(path, 0o600)
    print(f"vjlab-seed: {len(new)} new key(s) for {user}")


def main():
    files = read_seed()
    user_data = files.get("user-data", "")
    if not user_data.startswith("#cloud-config\\n"):
        print("vjlab-seed: user-data is not #cloud-config; nothing installed")
        return 1
    config = yaml.safe_load(user_data) or {}
    for entry in config.get("users") or []:
        if isinstance(entry, dict) and entry.get("ssh_authorized_keys"):
            install(entry["name"], entry["ssh_authorized_keys"])
    if config.get("ssh_authorized_keys"):
        install("root", config["ssh_authorized_keys"])
    ignored = sorted(set(config) - APPLIED)
    if ignored:
        print("vjlab-seed: ignored " + ", ".join(ignored))
    meta = yaml.safe_load(files.get("meta-data", "")) or {}
    hostname = meta.get("local-hostname")
    if hostname:
        subprocess.run(["hostname", str(hostname)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

GUEST_FILES = {
    "/etc/fstab": "/dev/vda / ext4 rw,noatime,errors=remount-ro 0 1\n",
    "/etc/hostname": "vjlab-debian12\n",
    "/etc/hosts": "127.0.0.1 localhost\n127.0.1.1 vjlab-debian12\n",
    # Empty: each boot makes its own, so guests of one image differ.
    "/etc/machine-id": "",
    "/etc/systemd/network/50-vjlab.network": (
        "[Match]\nName=eth*\n\n[Network]\nDHCP=ipv4\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    ),
    "/etc/ssh/sshd_config.d/vjlab.conf": (
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUseDNS no\n"
    ),
    "/etc/systemd/journald.conf.d/vjlab.conf": "[Journal]\nStorage=volatile\n",
    # A small initrd boots faster under TCG than Debian's "most" modules.
    "/etc/initramfs-tools/conf.d/vjlab.conf": "MODULES=list\n",
    "/etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n",
    "/usr/local/sbin/vjlab-seed": SEED_READER,
    # Waits for the seed's CD (up to systemd's device timeout) at every boot.
    "/etc/systemd/system/vjlab-seed.service": (
        "[Unit]\nDescription=Install SSH keys from the NoCloud cidata seed\n"
        "Wants=dev-disk-by\\x2dlabel-cidata.device\n"
        "After=dev-disk-by\\x2dlabel-cidata.device\nBefore=ssh.service\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/local/sbin/vjlab-seed\n"
        "StandardOutput=journal+console\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    ),
}
EXECUTABLES = ("/usr/local/sbin/vjlab-seed",)

# What the provisioned layer adds over SSH, once, in order.
PROVISION = (
    ("load the lab's kernel modules", ["modprobe", "-a", *MODULES]),
    (
        "load them at every boot",
        ["sh", "-c", "printf '%s\\n' \"$@\" > /etc/modules-load.d/vjlab.conf", "-"]
        + list(MODULES),
    ),
    (
        "the lab's preflight passes",
        ["sh", "-c", f"cd {GUEST_REPO} && {GUEST_PYTHON} -m lab preflight"],
    ),
    ("byte-compile the venv", [GUEST_PYTHON, "-m", "compileall", "-q", GUEST_VENV]),
    ("flush the disk", ["sync"]),
)
PROVISION_RECIPE = "1"


@dataclass(frozen=True)
class Step:
    """One build step: a command (in the chroot or not) or a Python action."""

    name: str
    argv: tuple[str, ...] = ()
    action: Callable[[], None] | None = field(default=None, compare=False)
    timeout: float = 600.0
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BaseImage:
    key: str
    directory: str

    @property
    def disk(self) -> str:
        return os.path.join(self.directory, "disk.qcow2")

    @property
    def kernel(self) -> str:
        return os.path.join(self.directory, "vmlinuz")

    @property
    def initrd(self) -> str:
        return os.path.join(self.directory, "initrd.img")

    @property
    def cmdline(self) -> str:
        return KERNEL_CMDLINE

    @property
    def host_key(self) -> str:
        with open(os.path.join(self.directory, "ssh_host_ed25519_key.pub")) as src:
            return " ".join(src.read().split()[:2])

    def manifest(self) -> dict:
        with open(os.path.join(self.directory, "manifest.json")) as src:
            return json.load(src)

    def provisioned_path(self, key: str) -> str:
        return os.path.join(self.directory, f"provisioned-{key}.qcow2")


def missing_tools() -> list[str]:
    """One line per tool the build needs and this host lacks."""
    return [
        f"{tool} missing: apt-get install {package}"
        for tool, package in TOOLS.items()
        if shutil.which(tool) is None
    ]


def image_key(repo: str = disks.REPO) -> str:
    """The cache key: recipe, suite, mirror, packages, guest files, requirements."""
    with open(os.path.join(repo, "lab", "requirements.txt")) as src:
        requirements = src.read()
    files = [f"{path}\0{text}" for path, text in sorted(GUEST_FILES.items())]
    return disks.layer_key(
        "debian12", RECIPE, SUITE, MIRROR, *PACKAGES, *files, requirements
    )


def provision_key(base: BaseImage) -> str:
    steps = [" ".join(argv) for _, argv in PROVISION]
    return disks.layer_key(base.key, PROVISION_RECIPE, *steps)


def cached(key: str, cache_dir: str = disks.CACHE_DIR) -> BaseImage | None:
    image = BaseImage(key, os.path.join(cache_dir, f"debian12-{key}"))
    return (
        image
        if os.path.exists(os.path.join(image.directory, "manifest.json"))
        else None
    )


def ensure(
    run_id: str, cache_dir: str = disks.CACHE_DIR, repo: str = disks.REPO
) -> tuple[BaseImage, bool]:
    """The base image, built now if no cached one has the same key."""
    key = image_key(repo)
    with disks.locked(os.path.join(cache_dir, ".debian12.lock"), timeout=3600):
        found = cached(key, cache_dir)
        if found is not None:
            log.info("debian12 base %s: cached, not rebuilt", found.directory)
            return found, False
        return build(run_id, key, cache_dir, repo), True


def build(run_id: str, key: str, cache_dir: str, repo: str) -> BaseImage:
    """Build the base image in a run-tagged directory, then move it in place."""
    partial = os.path.join(cache_dir, f"vjlab-{run_id}-debian12-{key}.partial")
    final = os.path.join(cache_dir, f"debian12-{key}")
    started = time.monotonic()
    try:
        os.makedirs(partial)
        for step in plan(partial, repo):
            run_step(step)
        write_manifest(partial, key, time.monotonic() - started)
        os.rename(partial, final)
    finally:
        disks.remove(partial)
    log.info("debian12 base built in %.0fs: %s", time.monotonic() - started, final)
    return BaseImage(key, final)


def run_step(step: Step) -> None:
    started = time.monotonic()
    if step.action is not None:
        step.action()
        log.debug("[build] %s (%.2fs)", step.name, time.monotonic() - started)
        return
    env = dict(step.env) if step.env else None
    command.run(list(step.argv), where="build", timeout=step.timeout, env=env)


def plan(out: str, repo: str = disks.REPO) -> list[Step]:
    """Every step of a build into directory *out*, in order."""
    root = os.path.join(out, "rootfs")
    raw = os.path.join(out, "rootfs.ext4")
    return [
        Step("debootstrap", debootstrap_argv(root), timeout=1800),
        Step("write guest files", action=lambda: write_guest_files(root)),
        in_chroot("small initrd", root, "update-initramfs", "-u", "-k", "all"),
        in_chroot(
            "quiet units", root, "systemctl", "disable", "--quiet", *DISABLED_UNITS
        ),
        in_chroot(
            "enable networkd and the seed reader",
            root,
            "systemctl",
            "enable",
            "--quiet",
            "systemd-networkd.service",
            "vjlab-seed.service",
        ),
        in_chroot("venv", root, "python3", "-m", "venv", GUEST_VENV),
        Step("copy repository", action=lambda: copy_repo(repo, root + GUEST_REPO)),
        Step("build trust", action=lambda: share_trust(root)),
        Step(
            "pip install",
            chroot(
                root,
                f"{GUEST_VENV}/bin/python",
                "-m",
                "pip",
                "install",
                "--no-cache-dir",
                "-q",
                "-r",
                f"{GUEST_REPO}/lab/requirements.txt",
            ),
            timeout=1200,
            env=pip_env(),
        ),
        Step("tidy", action=lambda: tidy(root)),
        Step("boot files", action=lambda: keep_boot_files(root, out)),
        Step("sparse file", action=lambda: make_sparse(raw, IMAGE_BYTES)),
        Step(
            "mkfs.ext4 -d",
            ("mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", root, raw),
            timeout=900,
        ),
        Step(
            "qcow2",
            (
                disks.QEMU_IMG,
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                raw,
                os.path.join(out, "disk.qcow2"),
            ),
            timeout=900,
        ),
        Step("drop the tree", action=lambda: drop(root, raw)),
    ]


def debootstrap_argv(root: str) -> tuple[str, ...]:
    return (
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        root,
        MIRROR,
    )


def in_chroot(name: str, root: str, *argv: str) -> Step:
    return Step(name, chroot(root, *argv), env=chroot_env())


def chroot(root: str, *argv: str) -> tuple[str, ...]:
    """*argv* inside *root*, with a /proc that vanishes with the command.

    A private mount namespace means no mount can outlive a failed step.
    """
    return (
        "unshare",
        "--mount",
        "--propagation",
        "private",
        f"--root={root}",
        "--mount-proc",
        *argv,
    )


def chroot_env() -> tuple[tuple[str, str], ...]:
    """A clean environment for the chroot.

    The host's variables name host paths (CA bundles, pip config), which
    mean nothing, or the wrong file, inside the chroot.
    """
    return (
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    )


def pip_env() -> tuple[tuple[str, str], ...]:
    """The chroot's environment for pip: the build's CA, the host's proxies."""
    env = dict(chroot_env())
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_CERT"] = BUILD_CA
    for name in ("http_proxy", "https_proxy", "no_proxy", "PIP_INDEX_URL"):
        for variant in (name, name.upper()):
            if variant in os.environ:
                env[variant] = os.environ[variant]
    return tuple(sorted(env.items()))


def write_guest_files(root: str) -> None:
    for path, text in GUEST_FILES.items():
        target = root + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(target):
            os.unlink(target)
        with open(target, "w") as out:
            out.write(text)
        os.chmod(target, 0o755 if path in EXECUTABLES else 0o644)


def repo_files(repo: str) -> list[str]:
    """The repository's files as git sees them (tracked and new, not ignored)."""
    result = command.run(
        [
            "git",
            "-C",
            repo,
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        check=False,
    )
    if not result.ok:
        raise RuntimeError(f"{repo}: cannot list files with git: {result.stderr}")
    names = [name for name in result.stdout.split("\0") if name]
    return sorted(name for name in names if os.path.isfile(os.path.join(repo, name)))


def copy_repo(repo: str, target: str) -> None:
    for name in repo_files(repo):
        destination = os.path.join(target, name)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(os.path.join(repo, name), destination)


def share_trust(root: str) -> None:
    """Give pip in the chroot the host's CA bundle, for this build only.

    Hosts behind a TLS-inspecting proxy trust its CA in this bundle; the
    chroot's fresh ca-certificates would not. tidy() removes it again.
    """
    source = os.environ.get("PIP_CERT") or HOST_CA_BUNDLE
    shutil.copyfile(source, root + BUILD_CA)


def tidy(root: str) -> None:
    """Drop what only the build needed: its CA, apt's caches, the host's DNS."""
    os.unlink(root + BUILD_CA)
    # Nothing to resolve: the guest reaches only what is forwarded to it.
    # (Unlink first: a symlink here would point into the host's /run.)
    resolv = root + "/etc/resolv.conf"
    if os.path.lexists(resolv):
        os.unlink(resolv)
    with open(resolv, "w"):
        pass
    for folder in ("/var/cache/apt/archives", "/var/lib/apt/lists"):
        for name in os.listdir(root + folder):
            path = os.path.join(root + folder, name)
            if os.path.isfile(path) and name not in ("lock",):
                os.unlink(path)


def keep_boot_files(root: str, out: str) -> None:
    """The kernel and initrd for direct boot, and the host key to pin."""
    boot = os.path.join(root, "boot")
    for prefix, name in (("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")):
        found = sorted(f for f in os.listdir(boot) if f.startswith(prefix))
        if len(found) != 1:
            raise RuntimeError(f"{boot}: expected one {prefix}*, found {found}")
        shutil.copyfile(os.path.join(boot, found[0]), os.path.join(out, name))
    shutil.copyfile(
        os.path.join(root, "etc/ssh/ssh_host_ed25519_key.pub"),
        os.path.join(out, "ssh_host_ed25519_key.pub"),
    )
    versions = _package_versions(root)
    with open(os.path.join(out, "packages.json"), "w") as dump:
        json.dump(versions, dump, indent=2)


def _package_versions(root: str) -> dict[str, str]:
    result = command.run(
        [
            "dpkg-query",
            f"--admindir={root}/var/lib/dpkg",
            "-W",
            "-f=${Package} ${Version}\\n",
        ],
        where="build",
    )
    pairs = (line.split(" ", 1) for line in result.stdout.splitlines() if line)
    return dict(pair for pair in pairs if len(pair) == 2)


def make_sparse(path: str, size: int) -> None:
    with open(path, "wb") as out:
        out.truncate(size)


def drop(root: str, raw: str) -> None:
    disks.remove(root)
    os.unlink(raw)


def write_manifest(out: str, key: str, seconds: float) -> None:
    with open(os.path.join(out, "packages.json")) as src:
        versions = json.load(src)
    manifest = {
        "key": key,
        "recipe": RECIPE,
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": list(PACKAGES),
        "kernel": _kernel_version(versions),
        "strongswan": versions.get("strongswan-charon", "?"),
        "cmdline": KERNEL_CMDLINE,
        "build_seconds": round(seconds, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(os.path.join(out, "manifest.json"), "w") as dump:
        json.dump(manifest, dump, indent=2)


def _kernel_version(versions: dict[str, str]) -> str:
    images = [name for name in versions if name.startswith("linux-image-6")]
    return images[0].removeprefix("linux-image-") if images else "?"
