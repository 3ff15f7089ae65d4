"""Platforms: where a cell's world is built. The OS is chosen here alone."""

from lab.platforms.base import Platform

# Where the responder side of a local cell lives: the lab's namespaces, or
# the lab's Debian guest (lab.vm.responder_guest).
RESPONDERS = ("namespaces", "vm")


def get(
    name: str, responder: str = "namespaces", hypervisor: str | None = None
) -> Platform:
    """The platform *name*; *responder* says where the responder side lives."""
    if name == "local":
        from lab.platforms.local import LocalPlatform

        return LocalPlatform(responder, hypervisor)
    raise ValueError(f"unknown platform {name!r}; allowed: local")
