"""The matrix: axes, cells, the default set and what a user selects."""

import itertools
from dataclasses import dataclass

from lab.schema import Matrix


class SelectionError(ValueError):
    """A command-line axis selection names an unknown axis or value."""


@dataclass(frozen=True)
class Cell:
    platform: str
    axes: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return "/".join([self.platform, *(value for _, value in self.axes)])

    @property
    def slug(self) -> str:
        """The id as one path component (for directories and namespaces)."""
        return self.id.replace("/", "_")

    def __getitem__(self, axis: str) -> str:
        return dict(self.axes)[axis]

    def as_dict(self) -> dict[str, str]:
        return dict(self.axes)


def full(matrix: Matrix) -> list[Cell]:
    """Every combination of every axis value, exclusions dropped."""
    names = list(matrix.axes)
    combos = itertools.product(*(matrix.axes[name] for name in names))
    cells = [_cell(matrix, dict(zip(names, combo))) for combo in combos]
    return [cell for cell in cells if not _excluded(matrix, cell)]


def default(matrix: Matrix) -> list[Cell]:
    """The default set: each entry expanded, exclusions dropped, in order."""
    cells: dict[str, Cell] = {}
    for entry in matrix.default:
        values = {
            name: _entry_values(matrix, name, entry.get(name, "*"))
            for name in matrix.axes
        }
        for combo in itertools.product(*values.values()):
            cell = _cell(matrix, dict(zip(values, combo)))
            if not _excluded(matrix, cell):
                cells.setdefault(cell.id, cell)
    return list(cells.values())


def parse_selection(matrix: Matrix, specs: list[str]) -> dict[str, set[str]]:
    """Turn ``axis=value[,value]`` strings into a selection, checking names."""
    selection: dict[str, set[str]] = {}
    for spec in specs:
        axis, sep, raw = spec.partition("=")
        if not sep or not raw:
            raise SelectionError(
                f"--axis {spec!r}: write AXIS=VALUE[,VALUE...], e.g. backend=libipsec"
            )
        if axis not in matrix.axes:
            raise SelectionError(
                f"--axis {spec!r}: unknown axis {axis!r}; "
                f"allowed: {', '.join(matrix.axes)}"
            )
        for value in raw.split(","):
            if value not in matrix.axes[axis]:
                raise SelectionError(
                    f"--axis {spec!r}: unknown {axis} value {value!r}; "
                    f"allowed: {', '.join(matrix.axes[axis])}"
                )
            selection.setdefault(axis, set()).add(value)
    return selection


def parse_selection_across(
    matrices: list[Matrix], specs: list[str]
) -> dict[str, set[str]]:
    """A selection valid for at least one of *matrices* (every platform's
    scenarios share one command line); an axis or value no matrix knows is
    an error naming what they allow."""
    merged = Matrix.model_construct(
        platform="any",
        axes=_union_axes(matrices),
        exclude=[],
        auth={},
        default=[],
    )
    return parse_selection(merged, specs)


def _union_axes(matrices: list[Matrix]) -> dict[str, list[str]]:
    axes: dict[str, list[str]] = {}
    for matrix in matrices:
        for name, values in matrix.axes.items():
            known = axes.setdefault(name, [])
            known += [v for v in values if v not in known]
    return axes


def select(cells: list[Cell], selection: dict[str, set[str]]) -> list[Cell]:
    """Cells matching every selected axis; a cell without one of the axes
    (another platform's) does not match."""
    return [
        cell
        for cell in cells
        if all(cell.as_dict().get(axis) in values for axis, values in selection.items())
    ]


def _cell(matrix: Matrix, values: dict[str, str]) -> Cell:
    return Cell(matrix.platform, tuple((name, values[name]) for name in matrix.axes))


def _entry_values(matrix: Matrix, name: str, raw: str | list[str]) -> list[str]:
    if raw == "*":
        return list(matrix.axes[name])
    return [raw] if isinstance(raw, str) else list(raw)


def _excluded(matrix: Matrix, cell: Cell) -> bool:
    return any(
        all(cell[axis] == value for axis, value in rule.items())
        for rule in matrix.exclude
    )
