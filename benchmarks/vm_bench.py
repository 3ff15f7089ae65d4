"""VM benchmark: the Debian 12 guest under QEMU, from nothing and from cache.

    .venv/bin/python benchmarks/vm_bench.py [--keep-cache]

Prints figures; asserts nothing (targets live here, not in tests).
1. cold: an empty, run-tagged cache directory under images/cache: build
   the base image, provision its layer, boot a throw-away guest and run
   one cell in it; the time to that first finished cell;
2. warm: the same again with both layers cached (nothing is built or
   provisioned): boot and one cell;
3. in the warm guest, the Linux subset of the matrix (4 cells): the
   median cell time from the guest's results.json.
The accelerator is probed as the lab does (KVM where it really boots,
else TCG). The cache directory is removed afterwards unless asked not to.
"""

import argparse
import os
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lab import reaper, runid  # noqa: E402
from lab.vm import disks, guest_lab  # noqa: E402

ONE_CELL = (
    "isolation=jail",
    "backend=netlink",
    "devices=tun-visible",
    "nat=nat",
    "auth=good",
)


def first_cell(lab: guest_lab.GuestLab, purpose: str) -> dict:
    """Layers (built or cached), a guest, one cell: each step's seconds."""
    started = time.monotonic()
    layers = lab.layers()
    target = os.path.join(lab.workdir, f"report-{purpose}")
    with lab.guest(purpose, layers.provisioned, layers.base) as node:
        run = lab.run_cells(node, target, ONE_CELL)
        first = time.monotonic() - started
        median = median_cell(lab, node, purpose) if purpose == "warm" else None
    return {
        "built": layers.built_base,
        "provisioned": layers.provisioned_now,
        "base": layers.seconds["base"],
        "provision": layers.seconds["provisioned"],
        "boot": lab.timings[f"boot-{purpose}"],
        "cell_run": run.seconds,
        "first_cell": first,
        "outcome": run.results["cells"][0]["outcome"],
        "median": median,
    }


def median_cell(lab: guest_lab.GuestLab, node, purpose: str) -> dict:
    run = lab.run_cells(node, os.path.join(lab.workdir, f"report-{purpose}-4"))
    durations = [cell["duration"] for cell in run.results["cells"]]
    return {
        "cells": len(durations),
        "median": statistics.median(durations),
        "run": run.seconds,
        "verdicts": sorted({cell["verdict"] for cell in run.results["cells"]}),
    }


def report(label: str, figures: dict) -> None:
    built = "built" if figures["built"] else "cached"
    provisioned = "provisioned" if figures["provisioned"] else "cached"
    print(
        f"{label}: first finished cell after {figures['first_cell']:.0f}s "
        f"(base {built} {figures['base']:.0f}s, layer {provisioned} "
        f"{figures['provision']:.0f}s, boot to SSH {figures['boot']:.0f}s, "
        f"one-cell pytest run {figures['cell_run']:.0f}s, "
        f"outcome {figures['outcome']})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-cache", action="store_true", help="keep the benchmark's cache"
    )
    args = parser.parse_args()
    run_id = runid.new_run_id()
    reaper.claim(run_id)
    cache = os.path.join(disks.CACHE_DIR, f"vjlab-{run_id}-bench")
    try:
        cold = guest_lab.GuestLab(run_id, cache_dir=cache)
        problem = cold.unavailable()
        if problem:
            print(f"cannot run the Debian guest here: {problem}")
            return 1
        report("cold", first_cell(cold, "cold"))
        warm = guest_lab.GuestLab(run_id, cache_dir=cache)
        figures = first_cell(warm, "warm")
        report("warm", figures)
        median = figures["median"]
        print(
            f"accelerator: {warm.accel.name} ({warm.accel.detail})\n"
            f"median cell in the guest: {median['median']:.2f}s over "
            f"{median['cells']} cells (pytest run {median['run']:.0f}s, "
            f"verdicts {', '.join(median['verdicts'])})"
        )
    finally:
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)
        reaper.reap(run_id=run_id, force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
