"""The run's static HTML page: the matrix as a grid coloured by outcome.

Rows are the cells' leading axes, columns their last two; every cell links
to a page of its own evidence.
"""

import os
from collections import OrderedDict

import jinja2

COLOURS = {
    "UP": "#2e7d32",
    "DEGRADED": "#f9a825",
    "SAD_INSTALL_FAILED": "#c62828",
    "KERNEL_IPSEC_UNAVAILABLE": "#6a1b9a",
    "AUTH_FAILED": "#ef6c00",
    "NO_PROPOSAL": "#8d6e63",
    "TIMEOUT": "#546e7a",
    "DAEMON_CRASH": "#000000",
    "ERROR": "#424242",
    "NEW": "#1565c0",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(
        os.path.join(os.path.dirname(__file__), "templates")
    ),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def kind_of(outcome: str) -> str:
    return outcome.split("(", 1)[0]


def grid(records: list[dict]) -> dict:
    """Rows and columns of the matrix: the last two id parts make columns."""
    rows: OrderedDict = OrderedDict()
    columns: OrderedDict = OrderedDict()
    for record in sorted(records, key=lambda r: r["id"]):
        parts = record["id"].split("/")
        split = max(len(parts) - 2, 1)
        row, column = "/".join(parts[:split]), "/".join(parts[split:])
        columns.setdefault(column, None)
        rows.setdefault(row, {})[column] = record
    axis_names = ["platform", *records[0]["axes"]] if records else []
    split = max(len(axis_names) - 2, 1)
    return {
        "rows": rows,
        "columns": sorted(columns, key=lambda c: (not c.endswith("/good"), c)),
        "row_axes": "/".join(axis_names[:split]),
        "column_axes": "/".join(axis_names[split:]),
    }


def write_html(run_dir: str, run: dict, records: list[dict]) -> str:
    for record in records:
        _write_cell_page(run_dir, record)
    counts: dict[str, int] = {}
    for record in records:
        counts[record["verdict"]] = counts.get(record["verdict"], 0) + 1
    page = _env.get_template("run.html.j2").render(
        run=run, grid=grid(records), colours=COLOURS, kind_of=kind_of, counts=counts
    )
    path = os.path.join(run_dir, "index.html")
    with open(path, "w") as out:
        out.write(page)
    return path


def _write_cell_page(run_dir: str, record: dict) -> None:
    folder = os.path.join(run_dir, record["evidence"])
    files = []
    for base, _, names in os.walk(folder):
        for name in names:
            files.append(os.path.relpath(os.path.join(base, name), folder))
    page = _env.get_template("cell.html.j2").render(
        record=record,
        files=sorted(f for f in files if f != "index.html"),
        colour=COLOURS.get(kind_of(record["outcome"]), "#424242"),
    )
    with open(os.path.join(folder, "index.html"), "w") as out:
        out.write(page)


def point_latest(reports_dir: str, run_id: str) -> None:
    """Make ``reports/latest`` point at *run_id*, replacing it atomically."""
    link = os.path.join(reports_dir, "latest")
    temporary = f"{link}.{os.getpid()}"
    os.symlink(run_id, temporary)
    os.replace(temporary, link)
