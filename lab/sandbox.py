"""A private /run, /etc-free strongSwan configuration and /dev for a stack.

The sandbox is a mount namespace held open by a tagged ``sleep`` process.
Inside it, the stack's runtime directory is bind-mounted over /run (so
charon's pid file and VICI socket are private to the stack, while the lab
still reaches them from outside) and /dev is a fresh tmpfs that holds only
the device nodes the cell's device policy allows.
"""

import logging
import os
import shlex

from lab.node import Node, Process
from lab.wait import wait_until

log = logging.getLogger(__name__)

READY_FILE = "sandbox.ready"

# (path, type, major, minor, mode): the nodes every stack gets.
BASE_DEVICES = [
    ("null", "c", 1, 3, "0666"),
    ("zero", "c", 1, 5, "0666"),
    ("full", "c", 1, 7, "0666"),
    ("random", "c", 1, 8, "0666"),
    ("urandom", "c", 1, 9, "0666"),
]
TUN_DEVICE = ("net/tun", "c", 10, 200, "0600")

DEVICE_POLICIES = {
    "tun-visible": BASE_DEVICES + [TUN_DEVICE],
    "tun-hidden": BASE_DEVICES,
}


def render_script(run_dir: str, policy: str) -> str:
    """The shell script that builds the sandbox, kept as evidence."""
    lines = [
        "set -eu",
        "mount --make-rprivate /",
        f"mount --bind {shlex.quote(run_dir)} /run",
        "mount -t tmpfs -o mode=0755,size=64k vjlab-dev /dev",
        "mkdir -p /dev/net /dev/pts /dev/shm",
    ]
    for path, kind, major, minor, mode in DEVICE_POLICIES[policy]:
        lines.append(f"mknod -m {mode} /dev/{path} {kind} {major} {minor}")
    lines += [f": > /run/{READY_FILE}", "exec sleep infinity"]
    return "\n".join(lines) + "\n"


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
