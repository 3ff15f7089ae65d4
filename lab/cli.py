"""The lab's command line.

python -m lab run [--axis AXIS=V[,V]] [--cells default|full] [-- PYTEST ARGS]
python -m lab preflight
python -m lab clean [--force]
python -m lab diff OLD NEW
"""

import argparse
import json
import os
import sys
import time

from lab import diff as lab_diff
from lab import preflight, reaper
from lab.platforms import RESPONDERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(
            "interrupted; `python -m lab clean` removes anything left", file=sys.stderr
        )
        return 130
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the matrix (default set) and report")
    run.add_argument("--axis", action="append", default=[], metavar="AXIS=V[,V]")
    run.add_argument("--cells", choices=("default", "full"), default="default")
    run.add_argument(
        "--platform",
        choices=("local", "freebsd"),
        default="local",
        help="local: every scenario; freebsd: the FreeBSD cells only "
        "(give --image or --download-images after --)",
    )
    run.add_argument(
        "--responder",
        choices=RESPONDERS,
        default="namespaces",
        help="vm: the responder side in a Debian guest whose kernel has ESP",
    )
    run.add_argument(
        "--hypervisor", help="for guests: qemu (default), libvirt:URI or bhyve"
    )
    run.add_argument("--workers", default="2", help="pytest-xdist workers")
    run.add_argument("pytest_args", nargs="*", help="passed to pytest after --")
    run.set_defaults(handler=_run)

    check = sub.add_parser("preflight", help="list missing tools and plugins")
    check.set_defaults(handler=_preflight)

    clean = sub.add_parser("clean", help="remove what earlier runs left behind")
    clean.add_argument("--run", help="only this run id")
    clean.add_argument("--force", action="store_true", help="also runs still alive")
    clean.set_defaults(handler=_clean)

    report = sub.add_parser("bugreport", help="an upstream-ready report of a cell")
    report.add_argument(
        "cell", help="cell id, e.g. local/jail/netlink/tun-visible/nat/good"
    )
    report.add_argument(
        "--results",
        default=os.path.join(REPO, "reports", "latest"),
        help="results.json or run directory (default: the latest run)",
    )
    report.add_argument("--target", choices=("freebsd", "strongswan"))
    report.set_defaults(handler=_bugreport)

    compare = sub.add_parser("diff", help="cells whose outcome changed")
    compare.add_argument("old", help="results.json or run directory")
    compare.add_argument("new", help="results.json or run directory")
    compare.set_defaults(handler=_diff)
    return parser


def _preflight(args) -> int:
    problems = preflight.problems()
    for problem in problems:
        print(problem)
    if not problems:
        print("preflight: everything the local lab needs is present")
    return 1 if problems else 0


def _run(args) -> int:
    problems = preflight.problems()
    if problems:
        print("preflight found problems:", *problems, sep="\n", file=sys.stderr)
        return 1
    import pytest

    scenarios = os.path.join(REPO, "scenarios")
    if args.platform == "freebsd":
        scenarios = os.path.join(scenarios, "test_freebsd.py")
    pytest_args = [
        scenarios,
        "-q",
        "-n",
        args.workers,
        "--cells",
        args.cells,
        "--responder",
        args.responder,
    ]
    if args.hypervisor:
        pytest_args += ["--hypervisor", args.hypervisor]
    for spec in args.axis:
        pytest_args += ["--axis", spec]
    started = time.time()
    status = pytest.main(pytest_args + args.pytest_args)
    if status == pytest.ExitCode.INTERRUPTED:
        print(
            "interrupted; `python -m lab clean` removes anything left", file=sys.stderr
        )
    _summarise(os.path.join(REPO, "reports", "latest"), started)
    return int(status)


def _summarise(latest: str, since: float) -> None:
    path = os.path.join(latest, "results.json")
    if not os.path.exists(path) or os.path.getmtime(path) < since:
        print("this run judged no cell: see the skips or errors above", file=sys.stderr)
        return
    with open(path) as src:
        data = json.load(src)
    counts: dict[str, int] = {}
    for cell in data["cells"]:
        counts[cell["verdict"]] = counts.get(cell["verdict"], 0) + 1
    summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    run_dir = os.path.realpath(latest)
    state = " (interrupted: incomplete)" if data["run"].get("interrupted") else ""
    print(f"run {data['run']['id']}{state}: {summary}")
    print(f"report: {os.path.join(run_dir, 'index.html')}")


def _clean(args) -> int:
    removed = reaper.reap(run_id=args.run, force=args.force)
    for line in removed:
        print(f"removed {line}")
    if not removed:
        print("nothing left behind")
    spared = reaper.live_runs() if not args.force else set()
    for run in sorted(spared):
        print(f"left alone: run {run} is still running (use --force)")
    return 0


def _bugreport(args) -> int:
    from lab import bugreport, results
    from lab import config as lab_config
    from lab.cell import redactor_for

    data = results.load_results(args.results)
    run_dir = (
        args.results if os.path.isdir(args.results) else os.path.dirname(args.results)
    )
    # Every platform's fixtures share the responder's and client's secrets.
    redactor = redactor_for(lab_config.load("local"))
    try:
        report = bugreport.write(run_dir, data, args.cell, redactor, args.target)
    except bugreport.BugReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {report.markdown}")
    print(f"evidence: {report.tarball}")
    for name in report.omitted:
        print(f"left out of the tarball: {name}")
    return 0


def _diff(args) -> int:
    return lab_diff.main(args.old, args.new)
