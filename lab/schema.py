"""The lab's fixture files, validated before anything is created.

A bad fixture stops the run with one line per problem, each naming the file,
the field and what is allowed.
"""

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

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


class FixtureError(Exception):
    """A fixture file is missing, unreadable or invalid."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _network(value: str) -> str:
    ipaddress.ip_network(value, strict=True)
    return value


def _address(value: str) -> str:
    ipaddress.ip_address(value)
    return value


def _pool(value: str) -> str:
    first, sep, last = value.partition("-")
    if not sep:
        ipaddress.ip_network(value, strict=True)
        return value
    start, end = ipaddress.ip_address(first), ipaddress.ip_address(last)
    if start.version != end.version:
        raise ValueError("range mixes IPv4 and IPv6 addresses")
    if start > end:
        raise ValueError("range start is above its end")
    return value


Network = Annotated[str, AfterValidator(_network)]
Address = Annotated[str, AfterValidator(_address)]
Pool = Annotated[str, AfterValidator(_pool)]
Secret = Annotated[str, Field(min_length=6)]
DhGroup = Literal[1, 2, 5, 14, 15, 16, 19, 20, 21]
Encryption = Literal["aes128", "aes192", "aes256", "3des", "des", "aes128gcm16"]
Integrity = Literal["sha1", "sha256", "sha384", "sha512", "md5"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(Strict):
    type: Literal["address", "fqdn", "userfqdn", "keyid"]
    value: str | None = None


class XauthUser(Strict):
    name: str = Field(min_length=1)
    password: Secret


class Phase1(Strict):
    encryption: list[Encryption] = Field(min_length=1)
    integrity: list[Integrity] = Field(min_length=1)
    dh_groups: list[DhGroup] = Field(min_length=1)
    lifetime: int = Field(gt=0)


class Phase2(Strict):
    encryption: list[Encryption] = Field(min_length=1)
    integrity: list[Integrity] = Field(min_length=1)
    pfs_groups: list[DhGroup] = Field(default_factory=list)
    lifetime: int = Field(gt=0)


class Dpd(Strict):
    delay: int = Field(gt=0)
    timeout: int = Field(gt=0)


class ModeConfig(Strict):
    pool: Pool
    dns: list[Address] = Field(default_factory=list)
    split_include: list[Network] = Field(min_length=1)
    banner: str | None = None


class Responder(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    local_id: Identity
    peer_id: Identity
    psk: Secret
    xauth_users: list[XauthUser] = Field(min_length=1)
    phase1: Phase1
    phase2: Phase2
    dpd: Dpd
    nat_traversal: Literal["enable", "forced"]
    mode_config: ModeConfig


class XauthLogin(Strict):
    user: str = Field(min_length=1)
    password: Secret


class Retransmit(Strict):
    tries: int = Field(ge=0, le=10)
    timeout: float = Field(gt=0)
    base: float = Field(ge=1)


class Client(Strict):
    local_id: Identity
    remote_id: Identity
    psk: Secret
    xauth: XauthLogin
    ike_proposals: list[str] = Field(min_length=1)
    esp_proposals: list[str] = Field(min_length=1)
    remote_ts: list[Network] = Field(min_length=1)
    retransmit: Retransmit


AxisValues = list[str]


class Matrix(Strict):
    platform: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    axes: dict[str, AxisValues]
    exclude: list[dict[str, str]] = Field(default_factory=list)
    auth: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default: list[dict[str, str | list[str]]] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_known(self) -> "Matrix":
        for where, entry in _axis_references(self):
            for axis, values in entry.items():
                if axis not in self.axes:
                    raise ValueError(
                        f"{where}: unknown axis {axis!r}; "
                        f"allowed: {', '.join(self.axes)}"
                    )
                for value in [values] if isinstance(values, str) else values:
                    if value != "*" and value not in self.axes[axis]:
                        raise ValueError(
                            f"{where}.{axis}: unknown value {value!r}; "
                            f"allowed: {', '.join(self.axes[axis])}"
                        )
        missing = set(self.axes.get("auth", [])) - set(self.auth)
        if missing:
            raise ValueError(f"auth: no overrides for {', '.join(sorted(missing))}")
        return self


def _axis_references(matrix: Matrix):
    for n, entry in enumerate(matrix.exclude):
        yield f"exclude[{n}]", entry
    for n, entry in enumerate(matrix.default):
        yield f"default[{n}]", entry


class Rule(Strict):
    when: dict[str, str] = Field(default_factory=dict)
    requires: dict[str, bool] = Field(default_factory=dict)
    expect: str = Field(pattern=r"^[A-Z_]+(\([A-Za-z0-9_.:,-]+\))?$")
    why: str = ""

    @field_validator("expect")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from lab.outcome import KINDS, qualifier_problem

        kind, _, rest = value.partition("(")
        if kind not in KINDS:
            raise ValueError(f"unknown outcome {kind!r}; allowed: {', '.join(KINDS)}")
        problem = qualifier_problem(kind, rest.rstrip(")"))
        if problem:
            raise ValueError(problem)
        return value


class Expectations(Strict):
    platform: str
    recorded_with: dict[str, str] = Field(default_factory=dict)
    rules: list[Rule]


def load(path: str | Path, model: type[BaseModel]) -> Any:
    """Read *path* as YAML and validate it as *model*."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FixtureError([f"{path}: file not found"]) from None
    except yaml.YAMLError as exc:
        raise FixtureError([f"{path}: not valid YAML: {_yaml_where(exc)}"]) from None
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise FixtureError(_problems(path, exc)) from None


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"line {mark.line + 1}: {problem}" if mark else problem


def describe_error(error: dict) -> str:
    """One pydantic error as ``field: message``, never echoing the input."""
    field = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    elif error["type"] == "missing":
        message = "required field is missing"
    return f"{field}: {message}" if field else message


def _problems(path: Path, exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        problems.append(f"{path}: {describe_error(error)}")
    return problems
