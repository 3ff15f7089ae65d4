"""Processes by pid: reading pid files, checking and stopping them."""

import os
import signal
import time


def read_pid(path: str) -> int | None:
    try:
        with open(path) as src:
            return int(src.read().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Whether *pid* exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as src:
            return src.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        # No /proc (FreeBSD without linprocfs): kill(0) already answered.
        return False


def terminate(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL once *grace* seconds have passed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
