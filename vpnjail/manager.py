"""Bringing profiles up and down, and reading their state.

The manager holds the policy: it validates profiles, picks link addresses,
asks the driver for a plan, carries it out with rollback, then talks to the
profile's charon over VICI. It works the same on every operating system.
"""

import concurrent.futures
import contextlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field

from vpnjail import pool, render
from vpnjail import vici_control as control
from vpnjail.drivers.base import Driver, Layout, LinkAddresses
from vpnjail.plan import Plan, Run, Spawn, WriteFile
from vpnjail.profile import LoadedProfile, Profile, ProfileError
from vpnjail.state import State

log = logging.getLogger(__name__)


class UpError(Exception):
    """Bringing a profile up failed; what it created has been removed."""


@dataclass
class Outcome:
    name: str
    ok: bool
    message: str
    details: dict = field(default_factory=dict)


class Manager:
    def __init__(
        self,
        driver: Driver,
        state: State,
        link_pool: str = pool.DEFAULT_POOL,
        timeout: float = 30.0,
    ):
        self.driver = driver
        self.state = state
        self.link_pool = link_pool
        self.timeout = timeout

    # -- up -----------------------------------------------------------------

    def up_many(
        self, loaded: list[LoadedProfile], everyone: list[LoadedProfile] | None = None
    ) -> list[Outcome]:
        """Bring *loaded* up in parallel; one outcome each. *everyone* (all
        profiles of the directory) keeps pool links off explicit ones."""
        everyone = everyone or loaded
        workers = max(1, min(16, len(loaded)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool_:
            return list(pool_.map(self.up_one, loaded, [everyone] * len(loaded)))

    def up_one(self, item: LoadedProfile, everyone: list[LoadedProfile]) -> Outcome:
        profile = item.profile
        try:
            with self.state.lock(profile.name):
                return self._up_locked(item, everyone)
        except (UpError, ProfileError) as exc:
            return Outcome(profile.name, False, str(exc))
        except pool.PoolExhausted as exc:
            return Outcome(profile.name, False, str(exc))

    def _up_locked(self, item: LoadedProfile, everyone) -> Outcome:
        profile = item.profile
        record = self.state.load(profile.name)
        if record is not None and self.charon_alive(profile.name):
            established = self.ensure_tunnel(profile, str(item.path))
            return Outcome(
                profile.name,
                established,
                "already running" + ("" if established else "; tunnel not established"),
            )
        if record is not None:
            self.down_one(profile.name)
        rendered = render.render(self.driver.system, profile, str(item.path), True)
        link = self._link_for(profile, everyone)
        layout = self.driver.layout(profile)
        plan = self.driver.plan_up(profile, link, rendered.charon_conf)
        self.state.save(profile.name, _record(profile, link, layout, "starting"))
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.failed_log(profile.name))
        taken = self.driver.existing_objects(profile)
        if taken and profile.name not in self.state.owned():
            self.state.remove(profile.name)
            verb = "exists" if len(taken) == 1 else "exist"
            raise UpError(
                f"{', '.join(taken)} already {verb} and not managed from "
                f"{self.state.directory}; remove it or use another --prefix"
            )
        self.state.own(profile.name)
        executor = Executor(self.driver, layout, self.timeout)
        try:
            executor.carry_out(plan)
            virtual_ip = self._connect(profile, layout, rendered)
            executor.carry_out(self.driver.plan_after_up(profile, virtual_ip))
        except Exception as exc:
            self._rollback(profile.name, executor.begun(plan), layout)
            hint = telling_line(self.failed_log(profile.name))
            raise UpError(
                f"{exc}; everything it created was removed"
                + (f"; charon said: {hint}" if hint else "")
            ) from exc
        self.state.save(profile.name, _record(profile, link, layout, "up", virtual_ip))
        return Outcome(profile.name, True, f"up, virtual IP {virtual_ip or 'none'}")

    def _link_for(self, profile: Profile, everyone) -> LinkAddresses:
        if profile.link is not None:
            return LinkAddresses(profile.link.host, profile.link.jail)
        with self.state.lock("pool"):
            taken = set()
            for name in self.state.names():
                rec = self.state.load(name) or {}
                if rec.get("link") and name != profile.name:
                    taken |= pool.addresses(LinkAddresses(**rec["link"]))
            for other in everyone:
                if other.profile.link is not None:
                    taken |= pool.addresses(
                        LinkAddresses(other.profile.link.host, other.profile.link.jail)
                    )
            link = pool.allocate(self.link_pool, taken)
            # Reserve it before leaving the pool lock.
            self.state.save(profile.name, {"name": profile.name, "link": link.__dict__})
            return link

    def _connect(self, profile: Profile, layout: Layout, rendered) -> str | None:
        session = control.connect(layout.vici_socket, self.timeout)
        control.load(session, rendered.conns, rendered.secrets)
        error = control.initiate(session, rendered.child, self.timeout)
        if error:
            raise UpError(
                f"tunnel did not come up: {error}; see `vpnjail logs {profile.name}`"
            )
        return control.virtual_ip(session)

    def ensure_tunnel(self, profile: Profile, where: str) -> bool:
        """Initiate the tunnel again if it is not established."""
        layout = self.driver.layout(profile)
        try:
            session = control.connect(layout.vici_socket, self.timeout)
            if control.established(session):
                return True
            rendered = render.render(self.driver.system, profile, where, True)
            control.load(session, rendered.conns, rendered.secrets)
            return control.initiate(session, rendered.child, self.timeout) is None
        except OSError as exc:
            log.info("%s: VICI unreachable: %s", profile.name, exc)
            return False

    def charon_alive(self, name: str) -> bool:
        layout = self.driver.layout(name)
        return os.path.exists(layout.vici_socket) and control.reachable(
            layout.vici_socket
        )

    def failed_log(self, name: str) -> str:
        """Where charon's log of the last failed start of *name* is kept."""
        return os.path.join(self.state.directory, f"{name}.failed.log")

    def _rollback(self, name: str, steps: list, layout: Layout) -> None:
        """Undo the steps that changed something (a step whose first action
        failed created nothing: an object that "already exists" is not ours)."""
        self.driver.stop(layout)
        try:
            shutil.copyfile(layout.log_file, self.failed_log(name))
        except OSError:
            log.debug("%s: no charon log to keep", name)
        for step in reversed(steps):
            for action in step.undo:
                if isinstance(action, Run):
                    self.driver.run(action, layout)
        self.driver.forget(layout)
        self.state.remove(name)
        self.state.disown(name)

    # -- down ---------------------------------------------------------------

    def down_one(self, name: str) -> Outcome:
        layout = self.driver.layout(name)
        self.driver.stop(layout)
        problems = []
        for step in self.driver.plan_down(name).steps:
            for action in step.do:
                if isinstance(action, Run):
                    result = self.driver.run(action, layout)
                    if result.returncode not in action.ok_codes:
                        problems.append(f"{action.describe()}: {result.stderr.strip()}")
        self.driver.forget(layout)
        self.state.remove(name)
        if problems:
            return Outcome(name, False, "; ".join(problems))
        self.state.disown(name)
        return Outcome(name, True, "down")

    def down(self, names: list[str]) -> list[Outcome]:
        outcomes = []
        for name in names:
            if self.state.load(name) is None:
                outcomes.append(Outcome(name, False, "not running"))
                continue
            with self.state.lock(name):
                outcomes.append(self.down_one(name))
        return outcomes

    # -- status -------------------------------------------------------------

    def status(self, name: str) -> dict:
        record = self.state.load(name) or {}
        layout = self.driver.layout(name)
        info = {"name": name, "link": record.get("link"), "state": "down"}
        if not os.path.exists(layout.vici_socket):
            return info
        try:
            session = control.connect(layout.vici_socket, 5)
            info.update(control.describe(session))
        except OSError as exc:
            info["state"] = f"charon unreachable: {exc}"
            return info
        info["last_dpd"] = control.last_dpd(layout.log_file)
        return info


# What charon says when a start or an initiation fails, most decisive
# first; the first pattern that matches any line wins.
_DECISIVE = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"failed to open /dev/(net/)?tun",
        r"loading critical plugin .* failed",
        r"unmet dependency",
        r"unable to add SAD entry",
        r"unable to install .* in kernel",
        r"calculated HASH does not match",
        r"XAuth authentication of .* failed",
        r"AUTHENTICATION_FAILED",
        r"N\(AUTH_FAILED\)",
        r"no (matching )?peer config found",
        r"does not match to",
        r"NO_PROPOSAL_CHOSEN|no (matching|acceptable )?proposal found",
        r"peer not responding",
        r"giving up after \d+ retransmits",
        r"killing ourself",
        r"initialization failed",
    )
]


def telling_line(log_path: str) -> str | None:
    """The line of a charon log that best says what went wrong."""
    try:
        with open(log_path, errors="replace") as src:
            lines = src.read().splitlines()
    except OSError:
        return None
    for pattern in _DECISIVE:
        for line in lines:
            if pattern.search(line):
                return line.split("]", 1)[-1].strip()
    return None


class Executor:
    """Carries out a plan's actions through a driver, step by step."""

    def __init__(self, driver: Driver, layout: Layout, timeout: float):
        self.driver = driver
        self.layout = layout
        self.timeout = timeout
        self.done: dict[int, int] = {}  # id(step) -> actions carried out

    def carry_out(self, plan: Plan) -> None:
        for step in plan.steps:
            log.debug("%s: %s", plan.profile, step.title)
            self.done[id(step)] = 0
            for action in step.do:
                self._do(action)
                self.done[id(step)] += 1

    def begun(self, plan: Plan) -> list:
        """Steps of *plan* that carried out at least one action."""
        return [step for step in plan.steps if self.done.get(id(step), 0) > 0]

    def _do(self, action) -> None:
        if isinstance(action, WriteFile):
            os.makedirs(os.path.dirname(action.path), exist_ok=True)
            fd = os.open(
                action.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, action.mode
            )
            with os.fdopen(fd, "w") as out:
                out.write(action.content)
        elif isinstance(action, Spawn):
            pid = self.driver.spawn(action, self.layout)
            self.driver.wait_started(action, self.layout, pid, self.timeout)
        else:
            _check(self.driver.run(action, self.layout), action)


def _check(result, action: Run) -> None:
    if result.returncode not in action.ok_codes:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise UpError(
            f"`{action.describe()}` failed with status {result.returncode}: "
            f"{detail[-1] if detail else 'no output'}"
        )


def _record(profile, link, layout, phase: str, virtual_ip: str | None = None) -> dict:
    return {
        "name": profile.name,
        "phase": phase,
        "link": link.__dict__,
        "stack": layout.stack,
        "virtual_ip": virtual_ip,
        "since": time.time(),
    }
