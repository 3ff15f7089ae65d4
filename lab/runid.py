"""Run ids and resource tags.

Every resource the lab makes carries the run id: namespace names start with
``vjlab-<run>-``, processes carry ``VJLAB_RUN=<run>`` in their environment and
runtime files live below ``/run/vjlab/<run>``. The reaper finds leftovers by
these tags alone.
"""

import datetime
import os
import re
import secrets

PREFIX = "vjlab"
ENV_VAR = "VJLAB_RUN"
RUNTIME_ROOT = "/run/vjlab"
RUN_ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")


def new_run_id() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def runtime_dir(run_id: str) -> str:
    return os.path.join(RUNTIME_ROOT, run_id)


def namespace_prefix(run_id: str) -> str:
    return f"{PREFIX}-{run_id}-"


def run_of_namespace(name: str) -> str | None:
    """The run id a lab namespace name carries, or None if it is not ours."""
    match = re.match(rf"^{PREFIX}-(\d{{8}}-\d{{6}}-[0-9a-f]{{4}})-", name)
    return match.group(1) if match else None
