"""``vpnjail run``: keep the enabled profiles up, for a service manager.

Every interval it checks each enabled profile: a profile with no charon is
(re)started, a tunnel that is not established (after DPD declared the peer
dead, say) is initiated again. Failures back off exponentially per profile,
so a gateway that is down is not hammered.
"""

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass

from vpnjail.manager import Manager
from vpnjail.profile import LoadedProfile

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    failures: int = 0
    next_try: float = 0.0

    def failed(self, now: float, base: float, ceiling: float) -> None:
        self.failures += 1
        self.next_try = now + min(ceiling, base * 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        self.failures = 0
        self.next_try = 0.0


class Supervisor:
    def __init__(
        self,
        manager: Manager,
        profiles: list[LoadedProfile],
        interval: float = 2.0,
        backoff_base: float = 1.0,
        backoff_ceiling: float = 60.0,
    ):
        self.manager = manager
        self.profiles = [p for p in profiles if p.profile.enabled]
        self.interval = interval
        self.base = backoff_base
        self.ceiling = backoff_ceiling
        self.backoff = {p.profile.name: Backoff() for p in self.profiles}
        self.stopping = threading.Event()

    def run(self) -> None:
        log.info("supervising %s", ", ".join(p.profile.name for p in self.profiles))
        while not self.stopping.is_set():
            self.tick()
            self.stopping.wait(self.interval)

    def tick(self) -> None:
        """Check every profile that is due, in parallel: a gateway that does
        not answer must not hold the other profiles back."""
        now = time.monotonic()
        due = [p for p in self.profiles if now >= self.backoff[p.profile.name].next_try]
        if not due:
            return
        with concurrent.futures.ThreadPoolExecutor(min(16, len(due))) as workers:
            results = list(workers.map(self.keep_up, due))
        for item, ok in zip(due, results):
            state = self.backoff[item.profile.name]
            if ok:
                state.succeeded()
                continue
            state.failed(now, self.base, self.ceiling)
            log.warning(
                "%s: not up; next try in %.0fs",
                item.profile.name,
                state.next_try - now,
            )

    def keep_up(self, item: LoadedProfile) -> bool:
        outcome = self.manager.up_one(item, self.profiles)
        if not outcome.ok:
            log.warning("%s: %s", item.profile.name, outcome.message)
        return outcome.ok
