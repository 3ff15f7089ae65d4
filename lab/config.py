"""All fixture files of a platform, loaded and cross-checked together."""

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from lab import expectations, schema

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CAPABILITY_NAMES = {"esp", "tun", "af_key"}


@dataclass(frozen=True)
class LabConfig:
    matrix: schema.Matrix
    expectations: schema.Expectations
    responder: schema.Responder
    client: schema.Client
    paths: dict[str, Path]


def load(platform: str = "local", root: Path | str = FIXTURES) -> LabConfig:
    """Load every fixture; raise FixtureError listing every problem found."""
    root = Path(root)
    paths = {
        "matrix": root / "matrix" / f"{platform}.yaml",
        "expectations": root / "expectations" / f"{platform}.yaml",
        "responder": root / "responder.yaml",
        "client": root / "client.yaml",
    }
    models = {
        "matrix": schema.Matrix,
        "expectations": schema.Expectations,
        "responder": schema.Responder,
        "client": schema.Client,
    }
    loaded, problems = {}, []
    for key, path in paths.items():
        try:
            loaded[key] = schema.load(path, models[key])
        except schema.FixtureError as exc:
            problems += exc.problems
    if not problems:
        problems += _check_platform(loaded, platform, paths)
        problems += expectations.check_references(
            loaded["expectations"],
            loaded["matrix"].axes,
            CAPABILITY_NAMES,
            str(paths["expectations"]),
        )
        problems += _check_overrides(loaded, paths["matrix"])
    if problems:
        raise schema.FixtureError(problems)
    return LabConfig(paths=paths, **loaded)


# The axes a platform's cell runner understands, and their values (None:
# any value the matrix defines overrides for).
PLATFORM_AXES = {
    "local": {
        "isolation": {"jail", "host"},
        "backend": {"netlink", "libipsec"},
        "devices": {"tun-visible", "tun-hidden"},
        "nat": {"nat", "direct"},
        "auth": None,
    },
}


def _check_platform(loaded: dict, platform: str, paths: dict) -> list[str]:
    problems = []
    for key in ("matrix", "expectations"):
        if loaded[key].platform != platform:
            problems.append(
                f"{paths[key]}: platform: {loaded[key].platform!r} in the file for "
                f"{platform!r}; write platform: {platform}"
            )
    wanted = PLATFORM_AXES.get(platform)
    if wanted is None:
        return problems
    axes = loaded["matrix"].axes
    path = paths["matrix"]
    if list(axes) != list(wanted):
        problems.append(
            f"{path}: axes: {platform} cells need exactly these axes in this "
            f"order: {', '.join(wanted)}"
        )
        return problems
    for name, allowed in wanted.items():
        unknown = [v for v in axes[name] if allowed is not None and v not in allowed]
        if unknown:
            problems.append(
                f"{path}: axes.{name}: {', '.join(unknown)} cannot run on {platform}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        if not axes[name]:
            problems.append(f"{path}: axes.{name}: give at least one value")
    return problems


def _check_overrides(loaded: dict, path: Path) -> list[str]:
    from lab import client

    problems = []
    for value, overrides in loaded["matrix"].auth.items():
        try:
            client.with_overrides(loaded["client"], overrides)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                problems.append(
                    f"{path}: auth.{value}: does not fit client.yaml: "
                    f"{schema.describe_error(error)}"
                )
    return problems
