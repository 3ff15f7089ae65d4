"""vpnjail benchmark: `up` of 1, 10 and 50 profiles, memory per profile,
and one tunnel's bring-up against the lab's raw `swanctl --initiate`.

    .venv/bin/python benchmarks/vpnjail_bench.py [--sizes 1,10,50]

Runs vpnjail against the lab's two FortiGate-like gateways (Linux
namespaces), half the profiles on each; prints figures and ratios and
asserts nothing.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import lab_bench  # noqa: E402

from lab import config as lab_config  # noqa: E402
from lab import gateways, reaper, runid, schema, topology  # noqa: E402
from lab.capabilities import values  # noqa: E402
from lab.platforms import get as get_platform  # noqa: E402
from lab.vpnjail_runner import VpnjailRunner  # noqa: E402


def responder_spec(lab, users: int) -> schema.Responder:
    data = lab.responder.model_dump()
    data["xauth_users"] = gateways.dialup_users(users, lab.client.xauth.password)
    data["mode_config"] = {**data["mode_config"], "pool": "203.0.113.128/25"}
    return schema.Responder.model_validate(data)


def rss_kib(pid_file: str) -> int:
    try:
        pid = int(Path(pid_file).read_text())
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def measure_up(runner: VpnjailRunner, count: int) -> dict:
    for n in range(1, count + 1):
        role = "gw-a" if n % 2 else "gw-b"
        runner.write_profile(
            f"b{n:02d}", topology.GATEWAY_ADDRESSES[role], f"user{n:02d}"
        )
    started = time.monotonic()
    up = runner.cli("up", "--all", timeout=600)
    seconds = time.monotonic() - started
    if up.returncode != 0:
        raise RuntimeError(f"vpnjail up --all failed: {up.stdout}{up.stderr}")
    memory = [
        rss_kib(os.path.join(runner.state_dir, f"b{n:02d}", "charon.pid"))
        + rss_kib(os.path.join(runner.state_dir, f"b{n:02d}", "holder.pid"))
        for n in range(1, count + 1)
    ]
    runner.cli("down", "--all", timeout=600)
    runner.cli("gc")
    for path in runner.profiles.glob("*.yaml"):
        path.unlink()
    return {"seconds": seconds, "rss_kib": statistics.median(memory)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    lab = lab_config.load()
    platform = get_platform("local")
    run_id = runid.new_run_id()
    capabilities = values(platform.capabilities(run_id))
    world = platform.build_gateways(run_id, runid.runtime_dir(run_id), "vjbench")
    spec = responder_spec(lab, max(sizes) + 2)
    gws = gateways.start(
        platform, world, spec, platform.responder_backend(capabilities)
    )
    try:
        with tempfile.TemporaryDirectory() as workdir:
            runner = VpnjailRunner(
                world, run_id, Path(workdir), "vjbp",
                lab.client.psk, lab.client.xauth.password,
            )  # fmt: skip
            figures = {size: measure_up(runner, size) for size in sizes}
            singles = [measure_up(runner, 1)["seconds"] for _ in range(args.rounds)]
    finally:
        gws.stop()
        platform.teardown(world)
        reaper.reap(run_id=run_id, force=True)
    raw = lab_bench.initiate_figures(args.rounds)["raw"]

    for size, figure in figures.items():
        print(
            f"vpnjail up --all, {size:3d} profiles: {figure['seconds']:.2f} s "
            f"({figure['seconds'] / size * 1000:.0f} ms per profile), "
            f"median RSS per profile {figure['rss_kib'] / 1024:.1f} MiB "
            "(charon + holder)"
        )
    single = statistics.median(singles)
    print(
        "one tunnel via `vpnjail up` (stack, charon, tunnel): "
        f"median {single * 1000:.0f} ms"
    )
    print(
        "one tunnel via raw `swanctl --initiate` (lab):       "
        f"median {raw * 1000:.1f} ms"
    )
    print(f"ratio vpnjail up / swanctl --initiate: {single / raw:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
