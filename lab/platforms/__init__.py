"""Platforms: where a cell's world is built. The OS is chosen here alone."""

from lab.platforms.base import Platform


def get(name: str) -> Platform:
    if name == "local":
        from lab.platforms.local import LocalPlatform

        return LocalPlatform()
    raise ValueError(f"unknown platform {name!r}; allowed: local")
