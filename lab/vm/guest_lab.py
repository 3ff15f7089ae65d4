"""The lab's own matrix, run inside a Debian 12 guest.

Three disk layers: the base image (:mod:`lab.vm.debian`), a provisioned
layer made once over SSH and kept in the cache, and a throw-away overlay
per guest. A guest boots from its overlay under the chosen hypervisor,
takes the run's key from a ``cidata`` seed, gets the repository as it is
on the host, runs ``scenarios/test_matrix.py`` and hands back its
results.json and evidence, which land in ``reports/<run>/vm-debian/``.
"""

import contextlib
import json
import logging
import os
import shutil
import tarfile
import time
from dataclasses import dataclass, field

from lab import runid
from lab.vm import debian, disks, hypervisor, seed
from lab.vm.spec import Nic, VmSpec
from lab.vm.ssh import SSHNode, generate_key, wait_for_ssh

log = logging.getLogger(__name__)

MEMORY_MIB = 1536
CPUS = 2
# The guest's slirp network: a documentation range the cells do not use.
SLIRP_NET = "198.51.100.128/25"
SSH_TIMEOUT = 100.0  # seconds under KVM; grows by the accelerator's factor
POWEROFF_TIMEOUT = 30.0
CELLS_TIMEOUT = 300.0
GUEST_REPORTS = "/var/tmp/vjlab-reports"
GUEST_REPO_TAR = "/var/tmp/vjlab-repo.tar.gz"
GUEST_REPORT_TAR = "/var/tmp/vjlab-report.tar.gz"
LINUX_SUBSET = ("isolation=jail", "nat=nat", "auth=good")


@dataclass
class Layers:
    base: debian.BaseImage
    provisioned: str
    built_base: bool
    provisioned_now: bool
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class GuestRun:
    """What the matrix inside the guest did, fetched to the host."""

    returncode: int
    output: str
    directory: str  # the guest's run directory, now on the host
    results: dict
    seconds: float

    def mismatches(self) -> list[dict]:
        return [c for c in self.results.get("cells", []) if c["verdict"] != "pass"]


class GuestLab:
    """Debian guests of one run: their key, seed, consoles and overlays."""

    def __init__(
        self,
        run_id: str,
        workdir: str | None = None,
        hypervisor_uri: str | None = None,
        cache_dir: str = disks.CACHE_DIR,
        repo: str = disks.REPO,
    ):
        self.run_id = run_id
        self.workdir = workdir or os.path.join(runid.runtime_dir(run_id), "vm-debian")
        self.hypervisor = hypervisor.select(hypervisor_uri)
        self.cache_dir = cache_dir
        self.overlay_dir = os.path.join(cache_dir, "overlays")
        self.repo = repo
        self.key_path = os.path.join(self.workdir, "id_ed25519")
        self.timings: dict[str, float] = {}
        self._seed: str | None = None
        self.accel = None

    def unavailable(self) -> str | None:
        """None when this host can build and boot the guest, else why not."""
        problems = debian.missing_tools()
        problem = self.hypervisor.unavailable()
        if problem:
            problems.append(problem)
        if os.geteuid() != 0:
            problems.append("not root: debootstrap and chroot need root")
        return "; ".join(problems) or None

    def layers(self) -> Layers:
        """The base image and the provisioned layer, built only if not cached."""
        started = time.monotonic()
        base, built = debian.ensure(self.run_id, self.cache_dir, self.repo)
        seconds = {"base": round(time.monotonic() - started, 1)}
        key = debian.provision_key(base)
        lock = os.path.join(self.cache_dir, f".debian12-provision-{key}.lock")
        started = time.monotonic()
        with disks.locked(lock, timeout=3600):
            provisioned_now = not os.path.exists(base.provisioned_path(key))
            if provisioned_now:
                self._provision(base, key)
            else:
                log.info("provisioned layer %s: cached", base.provisioned_path(key))
        seconds["provisioned"] = round(time.monotonic() - started, 1)
        return Layers(base, base.provisioned_path(key), built, provisioned_now, seconds)

    def _provision(self, base: debian.BaseImage, key: str) -> None:
        """Boot the new layer itself, provision over SSH, power off, keep it."""
        partial = os.path.join(
            self.cache_dir, f"vjlab-{self.run_id}-debian12-provision-{key}.qcow2"
        )
        disks.overlay(base.disk, partial)
        try:
            with self.booted("provision", partial, base, keep=True) as node:
                for what, argv in debian.PROVISION:
                    log.info("provision %s: %s", node.label, what)
                    node.run(argv, timeout=self._scaled(120))
            os.rename(partial, base.provisioned_path(key))
        finally:
            disks.remove(partial)

    @contextlib.contextmanager
    def guest(
        self,
        purpose: str,
        backing: str,
        base: debian.BaseImage,
        extra_nics: tuple[Nic, ...] = (),
    ):
        """A guest on a throw-away overlay of *backing*, removed afterwards.

        *extra_nics* come after the management NIC (SSH only).
        """
        overlay = os.path.join(
            self.overlay_dir, f"vjlab-{self.run_id}-debian12-{purpose}.qcow2"
        )
        disks.overlay(backing, overlay)
        try:
            with self.booted(purpose, overlay, base, extra_nics=extra_nics) as node:
                yield node
        finally:
            disks.remove(overlay)

    @contextlib.contextmanager
    def booted(
        self,
        purpose: str,
        disk: str,
        base: debian.BaseImage,
        keep: bool = False,
        extra_nics: tuple[Nic, ...] = (),
    ):
        """Boot from *disk*, wait for SSH, yield the node; stop it even on failure.

        A disk to *keep* is powered off from inside, so it holds a clean
        filesystem; a throw-away one is simply stopped.
        """
        spec = self.spec(purpose, disk, base, extra_nics)
        started = time.monotonic()
        guest = self.hypervisor.start(spec)
        self.accel = guest.accel
        node = None
        try:
            node = wait_for_ssh(
                guest,
                "127.0.0.1",
                guest.ssh_port,
                "root",
                self.key_path,
                timeout=guest.accel.scaled(SSH_TIMEOUT),
                known_host_key=base.host_key,
                role=f"vm-debian-{purpose}",
                system="linux",
            )
            self.timings[f"boot-{purpose}"] = round(time.monotonic() - started, 1)
            log.info("%s: SSH after %.0fs", guest.name, time.monotonic() - started)
            yield node
        finally:
            if node is not None and keep:
                node.run(["systemctl", "poweroff"], check=False, timeout=30)
            if node is not None:
                node.close()
            guest.stop(timeout=self._scaled(POWEROFF_TIMEOUT) if keep else 0)

    def spec(
        self,
        purpose: str,
        disk: str,
        base: debian.BaseImage,
        extra_nics: tuple[Nic, ...] = (),
    ) -> VmSpec:
        os.makedirs(self.workdir, exist_ok=True)
        return VmSpec(
            name=f"vjlab-{self.run_id}-debian12-{purpose}",
            memory_mib=MEMORY_MIB,
            cpus=CPUS,
            disk=disk,
            seed_iso=self.seed_iso(),
            kernel=base.kernel,
            initrd=base.initrd,
            cmdline=base.cmdline,
            nics=(
                Nic("user", forwards=((hypervisor.free_port(), 22),), net=SLIRP_NET),
                *extra_nics,
            ),
            console_log=os.path.join(self.workdir, f"console-{purpose}.log"),
        )

    def seed_iso(self) -> str:
        """The run's seed: its own key for root, made once per run."""
        if self._seed is None:
            public = generate_key(self.key_path, f"vjlab-{self.run_id}")
            path = os.path.join(self.workdir, "seed.iso")
            seed.build_seed_iso(
                path,
                seed.cloud_config(public),
                seed.meta_data(f"vjlab-{self.run_id}", "vjlab-debian12"),
            )
            self._seed = path
        return self._seed

    def _scaled(self, seconds: float) -> float:
        return self.accel.scaled(seconds) if self.accel else seconds

    def run_cells(
        self, node: SSHNode, target: str, axes: tuple[str, ...] = LINUX_SUBSET
    ) -> GuestRun:
        """Run the matrix in the guest; fetch its run directory to *target*."""
        self.send_repo(node)
        # One run's reports per fetch, however often this guest is used.
        node.run(["rm", "-rf", GUEST_REPORTS])
        argv = pytest_argv(axes)
        started = time.monotonic()
        result = node.run(
            ["sh", "-c", 'cd "$1" && shift && exec "$@"', "-", debian.GUEST_REPO]
            + argv,
            check=False,
            timeout=self._scaled(CELLS_TIMEOUT),
        )
        seconds = round(time.monotonic() - started, 1)
        if result.returncode not in (0, 1):
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise RuntimeError(
                f"{node.label}: `{result.command}` expected exit status 0 or 1 "
                f"(cells judged), got {result.returncode}:\n{tail}"
            )
        directory = self.fetch_reports(node, target)
        with open(os.path.join(directory, "results.json")) as src:
            results = json.load(src)
        output = (result.stdout + result.stderr).strip()
        return GuestRun(result.returncode, output, directory, results, seconds)

    def send_repo(self, node: SSHNode) -> None:
        """The repository as it is on the host, replacing the image's copy."""
        archive = os.path.join(self.workdir, "repo.tar.gz")
        with tarfile.open(archive, "w:gz") as tar:
            for name in debian.repo_files(self.repo):
                tar.add(os.path.join(self.repo, name), arcname=name)
        node.put(archive, GUEST_REPO_TAR)
        script = 'rm -rf "$1" && mkdir -p "$1" && tar -xzf "$2" -C "$1"'
        node.run(["sh", "-c", script, "-", debian.GUEST_REPO, GUEST_REPO_TAR])

    def fetch_reports(self, node: SSHNode, target: str) -> str:
        """Copy the guest's run directory (results.json, evidence) to *target*."""
        listing = node.run(["ls", GUEST_REPORTS]).stdout.split()
        runs = sorted(name for name in listing if runid.RUN_ID_PATTERN.match(name))
        if len(runs) != 1:
            raise RuntimeError(
                f"{node.label}: expected one run in {GUEST_REPORTS}, found {runs}"
            )
        source = f"{GUEST_REPORTS}/{runs[0]}"
        node.run(["tar", "-czf", GUEST_REPORT_TAR, "-C", source, "."])
        archive = os.path.join(self.workdir, "report.tar.gz")
        node.get(GUEST_REPORT_TAR, archive)
        os.makedirs(target, exist_ok=True)
        with tarfile.open(archive) as tar:
            # The guest wrote these names: extract them as data only.
            tar.extractall(target, filter="data")
        return target

    def keep_consoles(self, target: str) -> None:
        """Copy every console log of this run's guests next to its report."""
        if not os.path.isdir(self.workdir):
            return
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(self.workdir)):
            if name.startswith("console-"):
                shutil.copyfile(
                    os.path.join(self.workdir, name), os.path.join(target, name)
                )


def pytest_argv(axes: tuple[str, ...]) -> list[str]:
    argv = [
        debian.GUEST_PYTHON,
        "-m",
        "pytest",
        "scenarios/test_matrix.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--lab-reports",
        GUEST_REPORTS,
    ]
    for axis in axes:
        argv += ["--axis", axis]
    return argv
