"""lab/diff.py and lab/results.py: comparing two runs' results files."""

import json

import pytest

from lab import diff, results

OLD = {
    "run": {"id": "old"},
    "cells": [
        {"id": "local/jail/netlink/tun-visible/nat/good", "outcome": "UP"},
        {"id": "local/jail/libipsec/tun-hidden/nat/good", "outcome": "DAEMON_CRASH"},
        {"id": "local/host/netlink/tun-visible/direct/good", "outcome": "UP"},
        {"id": "local/jail/netlink/tun-visible/direct/wrong-psk", "outcome": "TIMEOUT"},
    ],
}
NEW = {
    "run": {"id": "new"},
    "cells": [
        {"id": "local/jail/netlink/tun-visible/nat/good", "outcome": "UP"},
        {
            "id": "local/jail/libipsec/tun-hidden/nat/good",
            "outcome": "KERNEL_IPSEC_UNAVAILABLE(tun)",
        },
        {"id": "local/host/netlink/tun-visible/direct/good", "outcome": "UP"},
        {
            "id": "local/jail/libipsec/tun-visible/nat/wrong-id",
            "outcome": "AUTH_FAILED(id)",
        },
    ],
}


def write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_compare_sorts_cells_into_changed_added_removed_same():
    comparison = diff.compare(OLD, NEW)
    assert comparison.changed == [
        diff.Change(
            "local/jail/libipsec/tun-hidden/nat/good",
            "DAEMON_CRASH",
            "KERNEL_IPSEC_UNAVAILABLE(tun)",
        )
    ]
    assert comparison.added == ["local/jail/libipsec/tun-visible/nat/wrong-id"]
    assert comparison.removed == ["local/jail/netlink/tun-visible/direct/wrong-psk"]
    assert comparison.same == 2


def test_render_lists_each_difference_and_the_counts():
    text = diff.render(diff.compare(OLD, NEW), "a.json", "b.json")
    assert text.splitlines() == [
        "comparing a.json -> b.json",
        "CHANGED local/jail/libipsec/tun-hidden/nat/good: DAEMON_CRASH -> "
        "KERNEL_IPSEC_UNAVAILABLE(tun)",
        "only in new: local/jail/libipsec/tun-visible/nat/wrong-id",
        "only in old: local/jail/netlink/tun-visible/direct/wrong-psk",
        "1 changed, 2 unchanged, 1 only in new, 1 only in old",
    ]


def test_main_exits_1_when_an_outcome_changed(tmp_path, capsys):
    status = diff.main(
        write(tmp_path / "old.json", OLD), write(tmp_path / "new.json", NEW)
    )
    assert status == 1
    assert "CHANGED local/jail/libipsec/tun-hidden/nat/good" in capsys.readouterr().out


def test_main_exits_0_when_cells_were_only_added_or_removed(tmp_path):
    # Only the common cells count: a narrower or wider run is no regression.
    new = {
        "cells": [
            c for c in NEW["cells"] if c["outcome"] != "KERNEL_IPSEC_UNAVAILABLE(tun)"
        ]
    }
    old = {"cells": [c for c in OLD["cells"] if c["outcome"] != "DAEMON_CRASH"]}
    assert (
        diff.main(write(tmp_path / "o.json", old), write(tmp_path / "n.json", new)) == 0
    )


def test_main_exits_0_for_identical_runs(tmp_path, capsys):
    path = write(tmp_path / "r.json", OLD)
    assert diff.main(path, path) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "0 changed, 4 unchanged, 0 only in new, 0 only in old"
    )


def test_load_results_reads_a_run_directory(tmp_path):
    write(tmp_path / results.RESULTS, OLD)
    assert results.load_results(str(tmp_path)) == OLD


@pytest.mark.parametrize("data", [{"run": {}}, {"cells": {}}, [1, 2]])
def test_load_results_rejects_a_file_without_a_cells_list(tmp_path, data):
    path = write(tmp_path / "results.json", data)
    with pytest.raises(ValueError, match="not a lab results file"):
        results.load_results(path)


@pytest.mark.parametrize(
    ("expected", "outcome", "verdict"),
    [
        ("UP", "UP", "pass"),
        ("UP", "DEGRADED(ping)", "fail"),
        (None, "UP", "new"),
    ],
)
def test_verdict(expected, outcome, verdict):
    assert results.verdict(expected, outcome) == verdict


def test_records_written_per_cell_are_collected_in_name_order(tmp_path):
    for slug in ("b", "a"):
        (tmp_path / "cells" / slug).mkdir(parents=True)
        record = results.CellRecord(
            slug, {"auth": "good"}, "UP", "UP", "pass", "", 1.5, f"cells/{slug}"
        )
        results.write_record(str(tmp_path), record)
    (tmp_path / "cells" / "c").mkdir()  # a cell that wrote no record
    assert [r["id"] for r in results.collect(str(tmp_path))] == ["a", "b"]
