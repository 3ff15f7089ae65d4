"""The operating system is decided here, and only here."""

import platform

from vpnjail.drivers.base import Driver

DEFAULTS = {
    "linux": {
        "profiles": "/etc/vpnjail/profiles",
        "state": "/run/vpnjail",
    },
    "freebsd": {
        "profiles": "/usr/local/etc/vpnjail/profiles",
        # Jail roots live under the state directory: keep it on disk.
        "state": "/var/db/vpnjail",
    },
}


def current() -> str:
    name = platform.system().lower()
    if name not in DEFAULTS:
        raise RuntimeError(f"vpnjail runs on Linux and FreeBSD, not on {name}")
    return name


def driver(system: str, options: dict) -> Driver:
    """The driver for *system*, configured from command-line *options*."""
    if system == "linux":
        from vpnjail.drivers.linux import LinuxDriver

        return LinuxDriver(
            state_dir=options["state_dir"],
            prefix=options.get("prefix") or "vpnjail-",
            host_netns=options.get("host_netns"),
        )
    if system != "freebsd":
        raise RuntimeError(f"no vpnjail driver for {system}")
    from vpnjail.drivers.freebsd import FreeBSDDriver

    return FreeBSDDriver(
        state_dir=options["state_dir"],
        egress=options.get("egress") or "vtnet0",
    )
