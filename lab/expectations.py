"""Expected outcomes: a table of rules in fixtures/expectations/."""

from dataclasses import dataclass

from lab.matrix import Cell
from lab.outcome import Outcome
from lab.schema import Expectations


@dataclass(frozen=True)
class Expectation:
    outcome: Outcome
    why: str
    rule: int


def expected(
    table: Expectations, cell: Cell, capabilities: dict[str, bool]
) -> Expectation | None:
    """The first rule matching the cell and the probed capabilities."""
    axes = cell.as_dict()
    for number, rule in enumerate(table.rules):
        if any(axes.get(axis) != value for axis, value in rule.when.items()):
            continue
        if any(capabilities.get(k) != v for k, v in rule.requires.items()):
            continue
        return Expectation(Outcome.parse(rule.expect), rule.why, number)
    return None


def check_references(
    table: Expectations, axes: dict[str, list[str]], capabilities: set[str], path: str
) -> list[str]:
    """Problems with axis, value or capability names the rules refer to."""
    problems = []
    for number, rule in enumerate(table.rules):
        for axis, value in rule.when.items():
            if axis not in axes:
                problems.append(
                    f"{path}: rules.{number}.when: unknown axis {axis!r}; "
                    f"allowed: {', '.join(axes)}"
                )
            elif value not in axes[axis]:
                problems.append(
                    f"{path}: rules.{number}.when.{axis}: unknown value {value!r}; "
                    f"allowed: {', '.join(axes[axis])}"
                )
        for name in rule.requires:
            if name not in capabilities:
                problems.append(
                    f"{path}: rules.{number}.requires: unknown capability {name!r}; "
                    f"allowed: {', '.join(sorted(capabilities))}"
                )
    return problems
