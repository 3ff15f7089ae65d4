"""Responder VM benchmark: what moving the responder into a guest costs.

    .venv/bin/python benchmarks/responder_vm_bench.py [--rounds N]

Prints figures and ratios; asserts nothing (targets live here, not in tests).
1. booting the responder VM (the Debian guest's layers cached, as after
   one run of the VM scenarios) until it is configured;
2. the jail/nat/good cells (4) run N rounds each against the responder in
   namespaces and against the VM, alternating cell by cell: the median
   cell time of each, and their ratio; each cell's outcomes under both,
   which must agree.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lab import cell as cell_runner  # noqa: E402
from lab import config as lab_config  # noqa: E402
from lab import reaper, runid  # noqa: E402
from lab.capabilities import values  # noqa: E402
from lab.evidence import EvidenceDir  # noqa: E402
from lab.matrix import default, select  # noqa: E402
from lab.platforms.local import LocalPlatform  # noqa: E402
from lab.vm import guest_lab  # noqa: E402


def subset(lab) -> list:
    wanted = {a: {v} for a, v in (s.split("=") for s in guest_lab.LINUX_SUBSET)}
    return select(default(lab.matrix), wanted)


def timed_cell(platform, lab, cell, run_id, capabilities, folder) -> tuple:
    started = time.monotonic()
    world = platform.build(cell, run_id, runid.runtime_dir(run_id))
    try:
        evidence = EvidenceDir(folder, cell_runner.redactor_for(lab))
        report = cell_runner.run_cell(platform, world, lab, capabilities, evidence)
    finally:
        platform.teardown(world)
    return time.monotonic() - started, str(report.outcome)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    problem = guest_lab.GuestLab(runid.new_run_id()).unavailable()
    if problem:
        print(f"cannot boot the responder VM here: {problem}")
        return 2
    lab = lab_config.load()
    run_id = runid.new_run_id()
    local, vm = LocalPlatform("namespaces"), LocalPlatform("vm")
    capabilities = values(local.capabilities(run_id))
    cells = subset(lab)
    times = {"namespaces": [], "vm": []}
    outcomes = set()
    try:
        started = time.monotonic()
        vm._responder_guest(run_id)
        boot = time.monotonic() - started
        with tempfile.TemporaryDirectory() as scratch:
            for round_ in range(args.rounds):
                for cell in cells:
                    for name, platform in (("namespaces", local), ("vm", vm)):
                        folder = os.path.join(scratch, f"{name}-{round_}-{cell.slug}")
                        seconds, outcome = timed_cell(
                            platform, lab, cell, run_id, capabilities, folder
                        )
                        times[name].append(seconds)
                        outcomes.add((cell.id, name, outcome))
    finally:
        vm.close()
        reaper.reap(run_id=run_id, force=True)

    ns, guest = statistics.median(times["namespaces"]), statistics.median(times["vm"])
    print(f"responder VM boot to configured: {boot:.1f} s (layers cached)")
    for name, median in (("namespaces", ns), ("VM", guest)):
        count = len(times["vm" if name == "VM" else name])
        print(f"median cell, responder in {name}: {median:.2f} s ({count} cells)")
    print(f"ratio VM / namespaces: {guest / ns:.1f}")
    for cell_id in sorted({c for c, _, _ in outcomes}):
        seen = sorted({f"{n}={o}" for c, n, o in outcomes if c == cell_id})
        print(f"  {cell_id}: {', '.join(seen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
