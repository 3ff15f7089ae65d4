"""Profiles: one YAML file per VPN, validated before anything is created.

Every problem is reported as one line naming the file, the field and the
fix. Secrets are never written in a profile: they are references to a file
readable only by root, or to an environment variable.
"""

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,14}$"  # fits interface and jail names


class ProfileError(Exception):
    """One or more profiles are invalid; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address; write one such as 198.51.100.10"
        ) from None
    return value


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a network; write one such as 203.0.113.0/25 "
            "(no host bits set)"
        ) from None
    return value


def _interface(value: str) -> str:
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an address with a prefix length; write one such "
            "as 192.0.2.1/30"
        ) from None
    return value


def _jail_or_address(value: str) -> str:
    if value == "jail":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither `jail` nor an IP address; write `jail` or an "
            "address behind the tunnel such as 203.0.113.10"
        ) from None
    return value


def _pushed_or_networks(value):
    if value == "pushed":
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(
            "write `pushed`, or a list of networks such as [203.0.113.0/25]"
        )
    return [_network(str(item)) for item in value]


Address = Annotated[str, AfterValidator(_address)]
Network = Annotated[str, AfterValidator(_network)]
Interface = Annotated[str, AfterValidator(_interface)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """Where a secret lives: a root-only file, or an environment variable."""

    file: str | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "SecretRef":
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of `file` or `env`")
        return self


class Identity(Strict):
    type: Literal["address", "fqdn", "userfqdn", "keyid", "any"]
    value: str | None = None

    @model_validator(mode="after")
    def _value_needed(self) -> "Identity":
        if self.type not in ("address", "any") and not self.value:
            raise ValueError(f"an identity of type {self.type} needs a `value`")
        return self


class Dpd(Strict):
    delay: int = Field(default=20, gt=0)
    timeout: int = Field(default=60, gt=0)


class Ike(Strict):
    mode: Literal["aggressive", "main"] = "aggressive"
    proposals: list[str] = Field(min_length=1)
    esp_proposals: list[str] = Field(min_length=1)
    lifetime: int = Field(default=86400, gt=0)
    child_lifetime: int = Field(default=43200, gt=0)
    dpd: Dpd = Dpd()


class Xauth(Strict):
    user: str = Field(min_length=1)
    password: SecretRef


class Auth(Strict):
    psk: SecretRef
    xauth: Xauth | None = None


class Link(Strict):
    """The host-to-jail link; picked from the configured pool when absent."""

    host: Interface
    jail: Interface

    @model_validator(mode="after")
    def _same_network(self) -> "Link":
        host, jail = (
            ipaddress.ip_interface(self.host),
            ipaddress.ip_interface(self.jail),
        )
        if host.network != jail.network:
            raise ValueError("host and jail addresses must share one network")
        if host.ip == jail.ip:
            raise ValueError("host and jail addresses must differ")
        return self


class PortForward(Strict):
    """A host port forwarded into the jail, or through it into the tunnel."""

    host_port: int = Field(ge=1, le=65535)
    proto: Literal["tcp", "udp"] = "tcp"
    to: Annotated[str, AfterValidator(_jail_or_address)] = "jail"
    port: int = Field(ge=1, le=65535)


class Profile(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    gateway: Address
    ike: Ike
    local_id: Identity
    remote_id: Identity = Identity(type="any")
    auth: Auth
    mode_config: Literal["pull", "push", "off"] = "pull"
    remote_networks: Annotated[str | list, AfterValidator(_pushed_or_networks)] = (
        "pushed"
    )
    backend: Literal["libipsec", "kernel"] = "libipsec"
    # "auto" exposes a tun device only where the backend needs one; "hidden"
    # and "exposed" override that, e.g. to reproduce a jail without tun.
    tun: Literal["auto", "exposed", "hidden"] = "auto"
    link: Link | None = None
    nat: bool = True
    port_forwards: list[PortForward] = Field(default_factory=list)
    enabled: bool = True

    # A field validator runs even when other fields failed, so a duplicate
    # forward is reported together with every other problem of the file.
    @field_validator("port_forwards")
    @classmethod
    def _forwards_unique(cls, forwards: list[PortForward]) -> list[PortForward]:
        seen = set()
        for forward in forwards:
            key = (forward.proto, forward.host_port)
            if key in seen:
                raise ValueError(
                    f"{forward.proto} port {forward.host_port} is forwarded twice; "
                    "keep one"
                )
            seen.add(key)
        tunnel_ports = {(f.proto, f.host_port) for f in forwards if f.to != "jail"}
        for forward in forwards:
            if forward.to == "jail" and (forward.proto, forward.port) in tunnel_ports:
                raise ValueError(
                    f"{forward.proto} port {forward.port} in the jail is also sent on "
                    "into the tunnel by another forward; pick another port"
                )
        return forwards


@dataclass(frozen=True)
class LoadedProfile:
    path: Path
    profile: Profile


def load_file(path: Path) -> LoadedProfile:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ProfileError([f"{path}: not valid YAML: {where}{exc}"]) from None
    except OSError as exc:
        raise ProfileError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = _anchor_secret_files(data or {}, path.parent)
        return LoadedProfile(path, Profile.model_validate(data))
    except ValidationError as exc:
        raise ProfileError(_problems(path, exc)) from None


def _anchor_secret_files(data, base: Path):
    """Relative secret file paths are relative to the profile, not the cwd."""
    if not isinstance(data, dict):
        return data
    anchored = {}
    for key, value in data.items():
        if key == "file" and isinstance(value, str) and not os.path.isabs(value):
            anchored[key] = str(base / value)
        else:
            anchored[key] = _anchor_secret_files(value, base)
    return anchored


def _problems(path: Path, exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        elif error["type"] == "missing":
            message = "required field is missing; add it"
        problems.append(f"{path}: {field}: {message}")
    return problems


def load_dir(directory: Path) -> list[LoadedProfile]:
    """Every ``*.yaml`` profile in *directory*, cross-checked together."""
    if not directory.is_dir():
        raise ProfileError(
            [f"{directory}: no such profiles directory; create it or pass --profiles"]
        )
    loaded, problems = [], []
    for path in sorted(directory.glob("*.yaml")):
        try:
            loaded.append(load_file(path))
        except ProfileError as exc:
            problems += exc.problems
    problems += cross_check(loaded)
    if problems:
        raise ProfileError(problems)
    return loaded


def cross_check(loaded: list[LoadedProfile]) -> list[str]:
    """Problems between profiles: duplicate names, links or host ports."""
    problems = []
    names: dict[str, Path] = {}
    links: dict[str, Path] = {}
    ports: dict[tuple[str, int], Path] = {}
    for item in loaded:
        p = item.profile
        if p.name in names:
            problems.append(
                f"{item.path}: name: {p.name!r} is also used by {names[p.name]}; "
                "rename one"
            )
        names.setdefault(p.name, item.path)
        if p.link is not None:
            for address in (p.link.host, p.link.jail):
                ip = str(ipaddress.ip_interface(address).ip)
                if ip in links:
                    problems.append(
                        f"{item.path}: link: address {ip} is also used by "
                        f"{links[ip]}; pick another or leave link out"
                    )
                links.setdefault(ip, item.path)
        for forward in p.port_forwards:
            key = (forward.proto, forward.host_port)
            if key in ports:
                problems.append(
                    f"{item.path}: port_forwards: {forward.proto} port "
                    f"{forward.host_port} is already forwarded by {ports[key]}; "
                    "pick another host_port"
                )
            ports.setdefault(key, item.path)
    return problems


def read_secret(ref: SecretRef, where: str) -> str:
    """The secret's value; refuses files that others can read."""
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise ProfileError(
                [f"{where}: environment variable {ref.env} is not set; export it"]
            )
        return value
    return _read_secret_file(Path(ref.file), where)


def check_secret(ref: SecretRef, where: str) -> list[str]:
    try:
        read_secret(ref, where)
    except ProfileError as exc:
        return exc.problems
    return []


def _read_secret_file(path: Path, where: str) -> str:
    try:
        info = path.stat()
    except OSError as exc:
        raise ProfileError([f"{where}: secret file {path}: {exc.strerror}"]) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ProfileError(
            [f"{where}: secret file {path} is readable by others; chmod 600 {path}"]
        )
    if info.st_uid != 0:
        raise ProfileError(
            [f"{where}: secret file {path} is not owned by root; chown root {path}"]
        )
    value = path.read_text().strip()
    if not value:
        raise ProfileError([f"{where}: secret file {path} is empty; write the secret"])
    return value
