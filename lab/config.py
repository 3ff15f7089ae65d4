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
