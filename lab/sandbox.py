"""A private /run, strongSwan configuration and /dev for a lab stack.

The sandbox is a mount namespace held open by a tagged ``sleep`` process.
Inside it, the stack's runtime directory is bind-mounted over /run (so
charon's pid file and VICI socket are private to the stack, while the lab
still reaches them from outside) and /dev is a fresh tmpfs that holds only
the device nodes the cell's device policy allows.
"""

import logging
import os

from lab.node import Node, Process
from lab.wait import wait_until
from vpnjail import linux_sandbox
from vpnjail.linux_sandbox import READY_FILE

log = logging.getLogger(__name__)

DEVICE_POLICIES = {"tun-visible": True, "tun-hidden": False}


def render_script(run_dir: str, policy: str) -> str:
    """The shell script that builds the sandbox, kept as evidence."""
    return linux_sandbox.render_script(run_dir, tun=DEVICE_POLICIES[policy])


def start(node: Node, run_dir: str, policy: str, timeout: float = 10.0) -> Process:
    """Start the sandbox holder in *node*; return once it is ready."""
    if policy not in DEVICE_POLICIES:
        raise ValueError(f"unknown device policy {policy!r}")
    os.makedirs(run_dir, exist_ok=True)
    script = os.path.join(run_dir, "sandbox.sh")
    with open(script, "w") as out:
        out.write(render_script(run_dir, policy))
    holder = node.spawn(
        ["unshare", "--mount", "--propagation", "private", "sh", script],
        log_path=os.path.join(run_dir, "sandbox.out"),
    )
    ready = os.path.join(run_dir, READY_FILE)

    def is_ready() -> str | None:
        if os.path.exists(ready):
            return None
        if holder.exited() is not None:
            raise RuntimeError(
                f"{node.label}: sandbox setup exited with {holder.exited()}; "
                f"see {holder.log_path}"
            )
        return f"{ready} missing"

    wait_until(is_ready, timeout, f"{node.label}: sandbox ready")
    return holder
