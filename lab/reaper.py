"""Finding and removing what lab runs left behind, by their tags alone.

A run owns: namespaces named ``vjlab-<run>-...``, processes whose
environment holds ``VJLAB_RUN=<run>`` and the directory
``/run/vjlab/<run>``. A run whose owner process is still alive is left
alone unless forced, so cleaning never breaks a run in progress.
"""

import logging
import os
import shutil
import signal

from lab import netns, runid
from vpnjail.processes import alive

log = logging.getLogger(__name__)
OWNER_FILE = "owner.pid"


def claim(run_id: str) -> None:
    """Record this process as the owner of *run_id*."""
    path = runid.runtime_dir(run_id)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, OWNER_FILE), "w") as out:
        out.write(str(os.getpid()))


def live_runs() -> set[str]:
    live = set()
    if not os.path.isdir(runid.RUNTIME_ROOT):
        return live
    for run in os.listdir(runid.RUNTIME_ROOT):
        pid = _owner(run)
        if pid and pid != os.getpid() and alive(pid):
            live.add(run)
    return live


def _owner(run: str) -> int | None:
    try:
        with open(os.path.join(runid.runtime_dir(run), OWNER_FILE)) as src:
            return int(src.read().strip())
    except (OSError, ValueError):
        return None


def reap(run_id: str | None = None, force: bool = False) -> list[str]:
    """Remove leftovers of *run_id* (or of every finished run); say what."""
    spared = set() if force else live_runs()
    if run_id is not None:
        spared.discard(run_id)

    def wanted(run: str | None) -> bool:
        return run is not None and run not in spared and run_id in (None, run)

    removed = _reap_processes(wanted)
    removed += _reap_namespaces(wanted)
    removed += _reap_vm_leftovers(wanted)
    removed += _reap_runtime(wanted)
    return removed


def _reap_vm_leftovers(wanted) -> list[str]:
    """Overlays, partial image builds, libvirt domains, bhyve VMs, taps,
    bridges and zvol clones; QEMU processes go with the other processes."""
    from lab.vm import hypervisor

    removed = []
    for item in hypervisor.leftovers(None):
        if wanted(hypervisor.run_of(item)):
            hypervisor.remove(item)
            removed.append(item)
    return removed


def _reap_processes(wanted) -> list[str]:
    removed = []
    for pid, run in tagged_processes():
        if wanted(run) and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
                removed.append(f"process {pid} ({_cmdline(pid)}) of run {run}")
            except ProcessLookupError:
                pass
    return removed


def tagged_processes() -> list[tuple[int, str]]:
    """(pid, run) of every process carrying a run: by its environment, or,
    for a QEMU that libvirtd started with an environment of its own, by the
    guest name on its command line."""
    found = []
    marker = f"{runid.ENV_VAR}=".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as src:
                env = src.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as src:
                argv = src.read().split(b"\0")
        except OSError:
            continue
        run = _run_in_env(env, marker) or guest_run(argv)
        if run:
            found.append((int(entry), run))
    return found


def _run_in_env(env: list[bytes], marker: bytes) -> str | None:
    for item in env:
        if item.startswith(marker):
            return item[len(marker) :].decode(errors="replace")
    return None


def guest_run(argv: list[bytes]) -> str | None:
    """The run of a QEMU whose ``-name guest=vjlab-<run>-...`` says it."""
    if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system"):
        return None
    for flag, value in zip(argv, argv[1:]):
        if flag == b"-name":
            name = value.decode(errors="replace").split(",")[0]
            return runid.run_of_namespace(name.removeprefix("guest="))
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as src:
            return src.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _reap_namespaces(wanted) -> list[str]:
    removed = []
    for name in netns.list_all():
        run = runid.run_of_namespace(name)
        if wanted(run):
            netns.delete(name)
            removed.append(f"namespace {name}")
    return removed


def _reap_runtime(wanted) -> list[str]:
    removed = []
    if not os.path.isdir(runid.RUNTIME_ROOT):
        return removed
    for run in os.listdir(runid.RUNTIME_ROOT):
        if wanted(run):
            shutil.rmtree(runid.runtime_dir(run), ignore_errors=True)
            removed.append(f"directory {runid.runtime_dir(run)}")
    return removed
