"""A libvirtd of the lab's own, for machines where none runs.

The libvirt path must run where only Debian's packages are at hand, without
a system libvirtd, its default network or its service manager. The lab
starts ``libvirtd`` in a private mount namespace where /etc/libvirt is the
lab's configuration and libvirt's state directories are the run's:

- its sockets are in the run's directory, reached with
  ``qemu:///system?socket=...``;
- no network is defined (the configuration directory is empty of them),
  so it creates no bridge and no firewall rule: the root namespace is
  left as it was;
- QEMU runs as root without cgroups or a security driver, and writes
  chardev logs itself (``stdio_handler = "file"``), so neither virtlogd
  nor systemd is needed.

The daemon carries the run's tag (``VJLAB_RUN``), so the reaper stops it;
:meth:`PrivateLibvirtd.stop` destroys its domains first, because QEMU
processes started by libvirtd do not inherit the tag.
"""

import logging
import os
import shutil

from lab import runid
from lab.node import LocalNode, Process
from lab.vm.hypervisor import tail
from lab.wait import WaitTimeout, wait_until

log = logging.getLogger(__name__)

LIBVIRTD = "/usr/sbin/libvirtd"
PACKAGES = "libvirt-daemon-driver-qemu libvirt-clients"
QEMU_USER = "libvirt-qemu"  # resolved by the qemu driver before qemu.conf is read
# libvirt's own directories, replaced inside the daemon's mount namespace.
STATE_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
START_TIMEOUT = 30.0
LIBVIRTD_CONF = """\
unix_sock_dir = "{sockets}"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
"""
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
"""


def unavailable() -> str | None:
    """None when a private libvirtd can start here, else what is missing."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        from lab.vm.libvirt_backend import INSTALL_HINT

        return f"python module libvirt missing: {INSTALL_HINT}"
    if not os.path.exists(LIBVIRTD):
        return f"{LIBVIRTD} missing: apt-get install {PACKAGES}"
    if shutil.which("unshare") is None:
        return "unshare missing: apt-get install util-linux"
    if not _user_exists(QEMU_USER):
        return (
            f"user {QEMU_USER} missing (libvirt's qemu driver resolves it even "
            f"when told to run QEMU as root): useradd --system {QEMU_USER}"
        )
    if os.geteuid() != 0:
        return "a private libvirtd runs QEMU as root: run as root"
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def namespace_script(folder: str) -> str:
    """The shell that binds the private directories, then execs libvirtd."""
    binds = " && ".join(
        f"mount --bind {folder}/{key} {target}" for key, target in STATE_DIRS.items()
    )
    conf = f"{folder}/etc/libvirtd.conf"
    return (
        f"{binds} && exec {LIBVIRTD} --config {conf} --pid-file {folder}/libvirtd.pid"
    )


class PrivateLibvirtd:
    """One libvirtd for one run, its files under the run's directory."""

    def __init__(self, run_id: str, folder: str | None = None):
        self.run_id = run_id
        self.folder = folder or os.path.join(runid.runtime_dir(run_id), "libvirtd")
        self.process: Process | None = None

    @property
    def socket(self) -> str:
        return os.path.join(self.folder, "sockets", "libvirt-sock")

    @property
    def process_log(self) -> str:
        return os.path.join(self.folder, "libvirtd.log")

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    def start(self) -> str:
        """Start the daemon; return its URI once it answers."""
        self._write_config()
        for target in STATE_DIRS.values():
            # Mount points only: without the system package they are absent.
            os.makedirs(target, exist_ok=True)
        self.process = LocalNode(role="libvirtd", run_id=self.run_id).spawn(
            [
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", namespace_script(self.folder),
            ],
            log_path=self.process_log,
        )  # fmt: skip
        try:
            wait_until(self._answers, START_TIMEOUT, f"libvirtd at {self.socket}")
        except (WaitTimeout, RuntimeError) as exc:
            self.stop()
            # The log goes with the run's directory: its end goes in the error.
            raise RuntimeError(
                f"private libvirtd: {exc}; its log ends:\n{tail(self.process_log)}"
            ) from None
        log.info("private libvirtd up: %s", self.uri)
        return self.uri

    def _write_config(self) -> None:
        for key in (*STATE_DIRS, "sockets"):
            os.makedirs(os.path.join(self.folder, key), exist_ok=True)
        etc = os.path.join(self.folder, "etc")
        with open(os.path.join(etc, "libvirtd.conf"), "w") as out:
            out.write(LIBVIRTD_CONF.format(sockets=os.path.dirname(self.socket)))
        with open(os.path.join(etc, "qemu.conf"), "w") as out:
            out.write(QEMU_CONF)

    def _answers(self) -> str | None:
        if self.process.exited() is not None:
            raise RuntimeError(f"libvirtd exited with {self.process.exited()}")
        if not os.path.exists(self.socket):
            return "no socket yet"
        import libvirt

        try:
            libvirt.open(self.uri).close()
        except libvirt.libvirtError as exc:
            return str(exc)
        return None

    def stop(self) -> None:
        """Destroy its domains and stop it; never raises."""
        if self.process is None:
            return
        try:
            self._destroy_domains()
        except Exception as exc:  # the daemon goes anyway
            log.warning("libvirtd %s: destroying domains: %s", self.uri, exc)
        self.process.stop()
        self.process = None

    def _destroy_domains(self) -> None:
        import libvirt

        if not os.path.exists(self.socket):
            return
        conn = libvirt.open(self.uri)
        try:
            for domain in conn.listAllDomains():
                if domain.isActive():
                    log.debug("libvirtd: destroying leftover domain %s", domain.name())
                    domain.destroy()
        finally:
            conn.close()
