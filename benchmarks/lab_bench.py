"""Lab benchmark: matrix wall time, median cell time, harness vs swanctl.

    .venv/bin/python benchmarks/lab_bench.py [--rounds N] [--skip-matrix]

Prints figures and ratios; asserts nothing (targets live here, not in tests).
1. the default matrix through ``python -m lab run``: wall time and the
   median cell duration from its results.json;
2. on one world (a kernel-libipsec cell that comes UP here), the time to
   bring the tunnel up through the harness (VICI initiate from Python, as
   the cells do) against raw ``swanctl --initiate`` on the same topology,
   alternating, N rounds each, as a ratio of medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# swanctl needs no plugins to initiate; its own minimal configuration keeps
# it from loading (and complaining about) the machine's whole plugin list.
SWANCTL_CONF_TEXT = "swanctl {\n  load = pem\n}\n"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lab import cell as cell_runner  # noqa: E402
from lab import config as lab_config  # noqa: E402
from lab import reaper, runid  # noqa: E402
from lab.capabilities import values  # noqa: E402
from lab.matrix import default  # noqa: E402
from lab.platforms import get as get_platform  # noqa: E402
from lab.wait import wait_until  # noqa: E402


def matrix_figures() -> dict:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "lab", "run"],
        cwd=REPO,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.monotonic() - started
    with open(os.path.join(REPO, "reports", "latest", "results.json")) as src:
        cells = json.load(src)["cells"]
    durations = [cell["duration"] for cell in cells]
    return {"cells": len(cells), "wall": wall, "median": statistics.median(durations)}


def initiate_figures(rounds: int) -> dict:
    lab = lab_config.load()
    platform = get_platform("local")
    run_id = runid.new_run_id()
    capabilities = values(platform.capabilities(run_id))
    cell = next(
        c
        for c in default(lab.matrix)
        if c.id == "local/jail/libipsec/tun-visible/nat/good"
    )
    world = platform.build(cell, run_id, runid.runtime_dir(run_id), label="bench")
    try:
        return _measure(platform, world, lab, capabilities, rounds)
    finally:
        platform.teardown(world)
        reaper.reap(run_id=run_id, force=True)


def _measure(platform, world, lab, capabilities, rounds: int) -> dict:
    daemons = cell_runner.prepare(platform, world, lab, capabilities)
    client = daemons["client"]
    socket_uri = f"unix://{client.charon.vici_socket}"
    swanctl_conf = os.path.join(world.runtime_dir, "swanctl-bench.conf")
    with open(swanctl_conf, "w") as out:
        out.write(SWANCTL_CONF_TEXT)
    harness, raw = [], []
    for _ in range(rounds):
        harness.append(_timed(lambda: cell_runner.initiate(client)))
        _down(client)
        raw.append(_timed(lambda: _swanctl_initiate(socket_uri, swanctl_conf)))
        _down(client)
    cell_runner.stop(daemons)
    return {"harness": statistics.median(harness), "raw": statistics.median(raw)}


def _swanctl_initiate(uri: str, conf: str) -> None:
    result = subprocess.run(
        ["swanctl", "--initiate", "--child", "fgt", "--uri", uri],
        capture_output=True,
        text=True,
        env=dict(os.environ, STRONGSWAN_CONF=conf),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"swanctl --initiate failed: {result.stderr.strip()}")


def _timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def _down(daemon) -> None:
    for _ in daemon.session.terminate({"ike": "fgt", "timeout": 5000}):
        pass

    def gone() -> str | None:
        sas = list(daemon.session.list_sas())
        return None if not sas else "IKE_SA still there"

    wait_until(gone, 10, "client: tunnel down")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--skip-matrix", action="store_true")
    args = parser.parse_args()
    if not args.skip_matrix:
        m = matrix_figures()
        print(
            f"default matrix: {m['cells']} cells, wall {m['wall']:.1f} s, "
            f"median cell {m['median']:.2f} s"
        )
    i = initiate_figures(args.rounds)
    print(
        f"tunnel up via harness (VICI initiate): median {i['harness'] * 1000:.1f} ms "
        f"over {args.rounds} rounds"
    )
    print(f"tunnel up via swanctl --initiate:     median {i['raw'] * 1000:.1f} ms")
    print(f"ratio harness/swanctl: {i['harness'] / i['raw']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
