"""Record mode: write what cells did into their expectations file.

Where nobody knows yet what a cell should do (FreeBSD, before the lab has
run there), a run can record its outcomes as expectations: one rule per
cell whose ``when`` names every axis of that cell, so it matches that cell
alone. Rules already in the file for other cells stay, in their order;
a cell recorded again replaces its own rule. Each rule's ``why`` says which
versions it came from and when, and the file's ``recorded_with`` holds the
versions of the latest recording.

A cell with no rule stays NEW: :func:`lab.expectations.expected` returns
None for it and the run reports it as new, never as passed.
"""

import datetime
import json
import logging
import os
from pathlib import Path

import yaml

from lab import schema
from lab.outcome import Outcome

log = logging.getLogger(__name__)

HEADER = """\
# Expected outcome of every {platform} cell. Rules are read top to bottom; the
# first whose `when` matches the cell's axes (and whose `requires` matches
# the probed capabilities) decides. Rules naming every axis were recorded
# from runs (lab/record.py): their `why` says from which versions and when.
# A cell with no rule reports NEW, never a pass.
"""
NOT_RECORDED = {"ERROR", "NEW"}  # the harness failed, or nothing was observed
VERSIONS_FILE = "freebsd/versions.json"  # below a cell's evidence directory


def record(
    results: dict,
    expectations_path: str | Path,
    versions: dict[str, dict[str, str]],
    today: datetime.date | None = None,
) -> list[str]:
    """Record each cell of *results* (a results.json) as an exact rule.

    *versions* maps a cell id to the versions its outcome came from
    (e.g. ``freebsd-version``, ``strongswan``); the key ``*`` serves cells
    not listed. Returns the ids of the cells recorded.
    """
    path = Path(expectations_path)
    table = schema.load(path, schema.Expectations)
    date = (today or datetime.date.today()).isoformat()
    rules = [rule.model_dump(exclude_defaults=True) for rule in table.rules]
    recorded, axes = [], set()
    for cell in results.get("cells", []):
        rule = _rule_for(cell, _versions_of(versions, cell["id"]), date)
        if rule is not None:
            rules = _replace(rules, rule)
            recorded.append(cell["id"])
            axes = set(rule["when"])
    if not recorded:
        return []
    latest = {**_versions_of(versions, recorded[-1]), "date": date}
    _write(path, table, _ordered(rules, axes), latest)
    log.info("recorded %s cells into %s", len(recorded), path)
    return recorded


def _versions_of(versions: dict, cell_id: str) -> dict[str, str]:
    return dict(versions.get(cell_id) or versions.get("*") or {})


def _rule_for(cell: dict, versions: dict[str, str], date: str) -> dict | None:
    outcome = cell.get("outcome", "")
    try:
        kind = Outcome.parse(outcome).kind
        schema.Rule(when=cell["axes"], expect=outcome)
    except ValueError as exc:
        log.warning("%s: outcome %r not recordable: %s", cell["id"], outcome, exc)
        return None
    if kind in NOT_RECORDED:
        log.warning(
            "%s: %s is not an outcome to expect; not recorded", cell["id"], kind
        )
        return None
    return {"when": dict(cell["axes"]), "expect": outcome, "why": _why(versions, date)}


def _why(versions: dict[str, str], date: str) -> str:
    shown = ", ".join(f"{name} {value}" for name, value in sorted(versions.items()))
    return f"recorded {date} with {shown or 'unknown versions'}"


def _replace(rules: list[dict], new: dict) -> list[dict]:
    return [rule for rule in rules if rule.get("when") != new["when"]] + [new]


def _ordered(rules: list[dict], axes: set[str]) -> list[dict]:
    """Exact rules first, by cell; then the hand-written ones, as they were.

    The first matching rule decides, so a recorded rule must come before a
    broader rule that would also match its cell.
    """
    exact = [rule for rule in rules if set(rule.get("when", {})) == axes]
    broad = [rule for rule in rules if rule not in exact]
    return sorted(exact, key=lambda rule: list(rule["when"].values())) + broad


def _write(path: Path, table, rules: list[dict], recorded_with: dict) -> None:
    data = {"platform": table.platform}
    if recorded_with:
        data["recorded_with"] = {k: str(v) for k, v in recorded_with.items()}
    data["rules"] = rules
    schema.Expectations.model_validate(data)
    text = HEADER.format(platform=table.platform) + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, width=88
    )
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def versions_from_evidence(run_dir: str, results: dict) -> dict[str, dict[str, str]]:
    """Each cell's versions, from ``freebsd/versions.json`` in its evidence."""
    found = {}
    for cell in results.get("cells", []):
        source = os.path.join(run_dir, cell.get("evidence", ""), VERSIONS_FILE)
        if os.path.exists(source):
            with open(source) as src:
                found[cell["id"]] = json.load(src)
    return found
