"""Comparing two runs: which cells changed outcome (the upgrade check)."""

from dataclasses import dataclass

from lab.results import load_results


@dataclass(frozen=True)
class Change:
    id: str
    old: str
    new: str


@dataclass(frozen=True)
class Comparison:
    changed: list[Change]
    added: list[str]
    removed: list[str]
    same: int


def compare(old: dict, new: dict) -> Comparison:
    before = {cell["id"]: cell["outcome"] for cell in old["cells"]}
    after = {cell["id"]: cell["outcome"] for cell in new["cells"]}
    changed = [
        Change(cell, before[cell], after[cell])
        for cell in sorted(before.keys() & after.keys())
        if before[cell] != after[cell]
    ]
    return Comparison(
        changed=changed,
        added=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        same=len(before.keys() & after.keys()) - len(changed),
    )


def render(comparison: Comparison, old_name: str, new_name: str) -> str:
    lines = [f"comparing {old_name} -> {new_name}"]
    for change in comparison.changed:
        lines.append(f"CHANGED {change.id}: {change.old} -> {change.new}")
    for cell in comparison.added:
        lines.append(f"only in new: {cell}")
    for cell in comparison.removed:
        lines.append(f"only in old: {cell}")
    lines.append(
        f"{len(comparison.changed)} changed, {comparison.same} unchanged, "
        f"{len(comparison.added)} only in new, {len(comparison.removed)} only in old"
    )
    return "\n".join(lines)


def main(old_path: str, new_path: str) -> int:
    comparison = compare(load_results(old_path), load_results(new_path))
    print(render(comparison, old_path, new_path))
    return 1 if comparison.changed else 0
