"""Platforms: where a cell's world is built. The OS is chosen here alone."""

from lab.platforms.base import Platform


def get(
    name: str, responder: str = "namespaces", hypervisor: str | None = None
) -> Platform:
    """The platform *name*; *responder* says where the responder side lives."""
    if name == "local":
        from lab.platforms.local import LocalPlatform

        return LocalPlatform(responder, hypervisor)
    raise ValueError(f"unknown platform {name!r}; allowed: local")
