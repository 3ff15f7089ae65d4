"""Polling with a deadline: the lab waits for state, it never sleeps blindly."""

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class WaitTimeout(Exception):
    """A condition did not hold before its deadline."""


def wait_until(
    check: Callable[[], str | None],
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> None:
    """Call *check* until it returns None (done) or *timeout* passes.

    *check* returns None when the awaited state holds, otherwise a short
    description of what is still missing; the last one ends up in the error.
    """
    started = time.monotonic()
    missing = check()
    while missing is not None:
        if time.monotonic() - started > timeout:
            raise WaitTimeout(f"{what}: not reached within {timeout:.0f}s: {missing}")
        time.sleep(interval)
        missing = check()
    log.debug("%s after %.2fs", what, time.monotonic() - started)
