"""A private /run and /dev for one Linux stack, held by a mount namespace.

The script below is run as ``unshare --mount --propagation private sh
SCRIPT`` inside the stack's network namespace. It bind-mounts the stack's
run directory over /run (charon's pid file, VICI socket and log become
private to the stack, yet reachable from outside at the run directory),
mounts a fresh tmpfs on /dev holding only the device nodes allowed, marks
itself ready and then sleeps, holding the mount namespace open for
``nsenter``.
"""

import shlex

READY_FILE = "sandbox.ready"

# (path under /dev, type, major, minor, mode): what every stack gets.
BASE_DEVICES = (
    ("null", "c", 1, 3, "0666"),
    ("zero", "c", 1, 5, "0666"),
    ("full", "c", 1, 7, "0666"),
    ("random", "c", 1, 8, "0666"),
    ("urandom", "c", 1, 9, "0666"),
)
TUN_DEVICE = ("net/tun", "c", 10, 200, "0600")


def devices(tun: bool) -> tuple:
    return BASE_DEVICES + ((TUN_DEVICE,) if tun else ())


def render_script(run_dir: str, tun: bool) -> str:
    lines = [
        "set -eu",
        "mount --make-rprivate /",
        f"mount --bind {shlex.quote(run_dir)} /run",
        "mount -t tmpfs -o mode=0755,size=64k vpnjail-dev /dev",
        "mkdir -p /dev/net /dev/pts /dev/shm",
    ]
    for path, kind, major, minor, mode in devices(tun):
        lines.append(f"mknod -m {mode} /dev/{path} {kind} {major} {minor}")
    lines += [f": > /run/{READY_FILE}", "exec sleep infinity"]
    return "\n".join(lines) + "\n"
