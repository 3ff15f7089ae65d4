"""The ``vpnjail`` command."""

import argparse
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

from vpnjail import pool, render, system
from vpnjail.manager import Manager
from vpnjail.profile import NAME_PATTERN, ProfileError, check_secret, load_dir
from vpnjail.state import State

log = logging.getLogger("vpnjail")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except RuntimeError as exc:
        print(f"vpnjail: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except ProfileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"vpnjail: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    os_name = system.current()
    defaults = system.DEFAULTS[os_name]
    parser = argparse.ArgumentParser(prog="vpnjail", description=__doc__)
    parser.add_argument(
        "--profiles",
        default=os.environ.get("VPNJAIL_PROFILES", defaults["profiles"]),
        help="profiles directory",
    )
    parser.add_argument(
        "--state-dir", default=os.environ.get("VPNJAIL_STATE", defaults["state"])
    )
    parser.add_argument("--link-pool", default=pool.DEFAULT_POOL)
    parser.add_argument("--host-netns", help="Linux: the host stack to work in")
    parser.add_argument(
        "--prefix",
        default=os.environ.get("VPNJAIL_PREFIX"),
        help="name prefix of namespaces (Linux)",
    )
    parser.add_argument("--egress", help="FreeBSD: the host's outside interface")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, handler, help_text):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(handler=handler)
        return p

    command("check", _check, "preflight of the host for the profiles").add_argument(
        "names", nargs="*"
    )
    command("render", _render, "print what profiles produce").add_argument(
        "names", nargs="*"
    )
    up = command("up", _up, "bring profiles up (in parallel)")
    up.add_argument("names", nargs="*")
    up.add_argument("--all", action="store_true")
    up.add_argument(
        "--skip-check",
        action="store_true",
        help="skip the host preflight (to reproduce a failure on purpose)",
    )
    down = command("down", _down, "bring profiles down")
    down.add_argument("names", nargs="*")
    down.add_argument("--all", action="store_true")
    status = command("status", _status, "state from charon over VICI")
    status.add_argument("names", nargs="*")
    status.add_argument("--json", action="store_true")
    command("list", _list, "profiles and whether they run")
    logs = command("logs", _logs, "charon's log of a profile")
    logs.add_argument("name")
    logs.add_argument("-n", "--lines", type=_positive, default=50)
    command("gc", _gc, "remove what stopped profiles left behind")
    run = command("run", _run, "keep enabled profiles up (foreground)")
    run.add_argument("--interval", type=float, default=2.0)
    return parser  # fmt: skip


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give a number of lines above 0")
    return value


def _context(args):
    os_name = system.current()
    options = {
        "state_dir": args.state_dir,
        "prefix": args.prefix,
        "host_netns": args.host_netns,
        "egress": args.egress,
    }
    driver = system.driver(os_name, options)
    manager = Manager(driver, State(args.state_dir), args.link_pool)
    return driver, manager


def _select(args, loaded, allow_all: bool = True):
    if getattr(args, "all", False) or (allow_all and not args.names):
        return loaded
    by_name = {item.profile.name: item for item in loaded}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        raise ProfileError(
            [f"{args.profiles}: no profile named {n!r}; known: "
             f"{', '.join(sorted(by_name)) or 'none'}" for n in unknown]
        )  # fmt: skip
    return [by_name[n] for n in args.names]


def _secret_problems(loaded) -> list[str]:
    problems = []
    for item in loaded:
        auth = item.profile.auth
        problems += check_secret(auth.psk, f"{item.path}: auth.psk")
        if auth.xauth is not None:
            problems += check_secret(
                auth.xauth.password, f"{item.path}: auth.xauth.password"
            )
    return problems


def _validated(args, allow_all=True):
    loaded = load_dir(Path(args.profiles))
    chosen = _select(args, loaded, allow_all)
    problems = _secret_problems(chosen)
    if problems:
        raise ProfileError(problems)
    return loaded, chosen


def _check(args) -> int:
    driver, _ = _context(args)
    _, chosen = _validated(args)
    profiles = [item.profile for item in chosen]
    for advice in driver.advisories(profiles):
        print(f"warning: {advice}")
    problems = driver.preflight(profiles)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"ok: {len(chosen)} profile(s) can run on this host")
    return 1 if problems else 0


def _render(args) -> int:
    driver, _ = _context(args)
    _, chosen = _validated(args)
    for item in chosen:
        profile = item.profile
        rendered = render.render(driver.system, profile, str(item.path), False)
        link = _render_link(profile, args.link_pool)
        plan = driver.plan_up(profile, link, rendered.charon_conf)
        layout = driver.layout(profile)

        def argv_of(action, layout=layout):
            return driver.display_argv(action, layout)

        print(plan.render(argv_of), end="")
        after = driver.plan_after_up(profile, None)
        if after.steps:
            print(after.render(argv_of, first=len(plan.steps) + 1), end="")
        print("## swanctl.conf (loaded over VICI; secrets never written)")
        print(rendered.swanctl_text())
    return 0


def _render_link(profile, link_pool: str):
    from vpnjail.drivers.base import LinkAddresses

    if profile.link is not None:
        return LinkAddresses(profile.link.host, profile.link.jail)
    # `render` reserves nothing: show the pool's first link as an example.
    return pool.allocate(link_pool, set())


def _up(args) -> int:
    driver, manager = _context(args)
    loaded, chosen = _validated(args, allow_all=False)
    if not chosen:
        raise ProfileError(["name profiles to bring up, or give --all"])
    if not args.skip_check:
        problems = driver.preflight([item.profile for item in chosen])
        if problems:
            raise ProfileError(problems)
    outcomes = manager.up_many(chosen, loaded)
    for outcome in outcomes:
        print(f"{outcome.name}: {outcome.message}")
    return 0 if all(o.ok for o in outcomes) else 1


def _down(args) -> int:
    _, manager = _context(args)
    names = manager.state.names() if args.all else _checked_names(args.names)
    if args.all and not names:
        print("nothing is running")
        return 0
    if not names:
        raise ProfileError(["name profiles to bring down, or give --all"])
    outcomes = manager.down(names)
    for outcome in outcomes:
        print(f"{outcome.name}: {outcome.message}")
    return 0 if all(o.ok for o in outcomes) else 1


def _status(args) -> int:
    _, manager = _context(args)
    names = _checked_names(args.names) or _expected_up(args, manager)
    states = [manager.status(name) for name in names]
    if args.json:
        print(json.dumps(states, indent=2))
    else:
        for info in states:
            print(_status_line(info))
    return 0 if states and all(s["state"] == "up" for s in states) else 1


def _expected_up(args, manager) -> list[str]:
    """Running profiles and every enabled one: all of them should be up."""
    names = set(manager.state.names())
    try:
        names |= {
            i.profile.name for i in load_dir(Path(args.profiles)) if i.profile.enabled
        }
    except ProfileError:
        pass  # status still reports what runs when the profiles are broken
    return sorted(names)


def _status_line(info: dict) -> str:
    parts = [f"{info['name']}: {info['state']}"]
    if info.get("virtual_ip"):
        parts.append(f"vip {info['virtual_ip']}")
    for child in info.get("children", []):
        parts.append(
            f"{child['name']} {child['state']} in {child['bytes_in']}B "
            f"out {child['bytes_out']}B"
        )
    if info.get("last_dpd"):
        parts.append(f"last DPD {info['last_dpd']}")
    return ", ".join(parts)


def _list(args) -> int:
    _, manager = _context(args)
    loaded = load_dir(Path(args.profiles))
    running = set(manager.state.names())
    for item in loaded:
        p = item.profile
        flags = ["running" if p.name in running else "stopped"]
        if not p.enabled:
            flags.append("disabled")
        print(f"{p.name}\t{p.gateway}\t{p.backend}\t{' '.join(flags)}")
    return 0


def _checked_names(names: list[str]) -> list[str]:
    """Refuse names no profile can have (they become paths and objects)."""
    bad = [n for n in names if not re.fullmatch(NAME_PATTERN, n)]
    if bad:
        raise ProfileError(
            [f"{n!r} is not a profile name (pattern {NAME_PATTERN})" for n in bad]
        )
    return names


def _logs(args) -> int:
    _checked_names([args.name])
    driver, manager = _context(args)
    path = driver.layout(args.name).log_file
    if not os.path.exists(path) and os.path.exists(manager.failed_log(args.name)):
        path = manager.failed_log(args.name)
        print(f"# {args.name} is not running; log of its last failed start:")
    try:
        with open(path, errors="replace") as src:
            lines = src.readlines()
    except FileNotFoundError:
        print(f"vpnjail: no log for {args.name!r}; is it up?", file=sys.stderr)
        return 1
    sys.stdout.writelines(lines[-args.lines :])
    return 0


def _gc(args) -> int:
    driver, manager = _context(args)
    removed, running = 0, set()
    # Only what this state directory owns is considered; each profile under
    # its lock, so a concurrent `up` is never mistaken for a dead profile.
    for name in sorted(set(manager.state.names()) | manager.state.owned()):
        with manager.state.lock(name):
            if manager.charon_alive(name):
                running.add(name)
                continue
            outcome = manager.down_one(name)
        print(f"removed what {name} left: {outcome.message}")
        removed += 1
    for item in driver.leftovers(running):
        driver.remove_leftover(item)
        print(f"removed {item}")
        removed += 1
    for path in manager.state.prune():
        print(f"removed {path}")
        removed += 1
    if not removed:
        print("nothing left behind")
    return 0


def _run(args) -> int:
    from vpnjail.supervisor import Supervisor

    driver, manager = _context(args)
    loaded = load_dir(Path(args.profiles))
    problems = _secret_problems(loaded) + driver.preflight([i.profile for i in loaded])
    if problems:
        raise ProfileError(problems)
    supervisor = Supervisor(manager, loaded, interval=args.interval)
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: supervisor.stopping.set())
    supervisor.run()
    return 0
