"""Running commands: one place that logs, times and checks every command.

Every command the lab runs goes through :func:`run`, which logs exactly one
DEBUG line per command (where, what, exit status, time) so a cell's log file
reads as a transcript.
"""

import logging
import shlex
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    where: str
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


class CommandError(Exception):
    """A command exited with an unexpected status."""

    def __init__(self, result: Result, expected: str = "exit status 0"):
        self.result = result
        detail = (result.stderr or result.stdout).strip().splitlines()
        last = detail[-1] if detail else "(no output)"
        super().__init__(
            f"{result.where}: `{result.command}` expected {expected}, "
            f"got exit status {result.returncode}: {last}"
        )


def run(
    argv: list[str],
    where: str = "root",
    check: bool = True,
    timeout: float = 60.0,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run *argv* (never through a shell) and return its :class:`Result`."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = -1, _text(exc.stdout), f"timed out after {timeout}s"
    except FileNotFoundError as exc:
        code, out, err = 127, "", str(exc)
    result = Result(where, tuple(argv), code, out, err, time.monotonic() - started)
    log.debug(
        "[%s] %s -> %s (%.2fs)%s",
        where,
        result.command,
        code,
        result.seconds,
        _short_output(result),
    )
    if check and not result.ok:
        raise CommandError(result)
    return result


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def _short_output(result: Result) -> str:
    if result.ok:
        return ""
    tail = (result.stderr or result.stdout).strip().splitlines()[-2:]
    return " | " + " / ".join(tail) if tail else ""
