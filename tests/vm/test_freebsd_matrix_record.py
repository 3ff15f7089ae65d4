"""The FreeBSD matrix fixture, its expectations and record mode (lab/record.py)."""

import datetime
import json
import shutil

import pytest
import yaml

from lab import config, matrix, record, results, schema
from lab.expectations import expected

REPORTED = "freebsd/15.0/pkg/charon/vnet/pfkey/rs5/ipsec-unloaded/pf/good"
DAY = datetime.date(2026, 5, 1)


@pytest.fixture
def lab():
    return config.load("freebsd")


def test_the_freebsd_fixtures_load_and_start_with_no_rules(lab):
    assert lab.matrix.platform == "freebsd"
    assert lab.expectations.platform == "freebsd"
    assert lab.expectations.rules == []
    assert list(lab.matrix.axes) == [
        "freebsd", "strongswan", "client", "isolation", "backend", "devfs",
        "ipsec", "nat", "auth",
    ]  # fmt: skip


def test_the_default_set_holds_the_reported_failing_cell(lab):
    cells = {cell.id: cell for cell in matrix.default(lab.matrix)}

    assert REPORTED in cells
    assert cells[REPORTED].as_dict() == {
        "freebsd": "15.0",
        "strongswan": "pkg",
        "client": "charon",
        "isolation": "vnet",
        "backend": "pfkey",
        "devfs": "rs5",
        "ipsec": "ipsec-unloaded",
        "nat": "pf",
        "auth": "good",
    }
    assert REPORTED.replace("ipsec-unloaded", "ipsec-loaded") in cells


def test_the_default_set_covers_probe_vpnjail_libipsec_and_both_releases(lab):
    cells = matrix.default(lab.matrix)
    seen = {axis: {cell[axis] for cell in cells} for axis in lab.matrix.axes}

    assert seen["client"] == {"charon", "probe", "vpnjail"}
    assert seen["freebsd"] == {"14.3", "15.0"}
    assert {"rs4", "rs5", "rs5tun", "hostdev"} <= seen["devfs"]
    probes = {(c["freebsd"], c["isolation"], c["ipsec"]) for c in cells
              if c["client"] == "probe"}  # fmt: skip
    assert len(probes) == 8


def test_impossible_cells_are_excluded(lab):
    cells = matrix.full(lab.matrix)

    assert not [c for c in cells if c["isolation"] == "host" and c["nat"] == "pf"]
    assert not [
        c for c in cells if c["isolation"] == "host" and c["devfs"] != "hostdev"
    ]
    assert not [
        c for c in cells if c["isolation"] != "host" and c["devfs"] == "hostdev"
    ]
    assert not [c for c in cells if c["client"] == "probe" and c["backend"] != "pfkey"]
    assert not [
        c for c in cells if c["client"] == "vpnjail" and c["isolation"] != "vnet"
    ]


def test_auth_values_reuse_the_local_overrides(lab):
    local = config.load("local")
    assert lab.matrix.auth == local.matrix.auth


def test_an_unrecorded_cell_is_new_never_passed(lab):
    cell = next(c for c in matrix.default(lab.matrix) if c.id == REPORTED)

    assert expected(lab.expectations, cell, {"esp": False}) is None
    assert results.verdict(None, "UP") == "new"


def copy_fixtures(tmp_path):
    root = tmp_path / "fixtures"
    shutil.copytree(config.FIXTURES, root)
    return root


def cell_record(cell, outcome: str, detail: str = "") -> dict:
    return {"id": cell.id, "axes": cell.as_dict(), "outcome": outcome, "detail": detail}


def test_record_round_trip(tmp_path, lab):
    root = copy_fixtures(tmp_path)
    path = root / "expectations" / "freebsd.yaml"
    cells = {c.id: c for c in matrix.default(lab.matrix)}
    reported = cells[REPORTED]
    loaded = cells[REPORTED.replace("ipsec-unloaded", "ipsec-loaded")]
    versions = {
        REPORTED: {"freebsd-version": "15.0-RELEASE-p1", "strongswan": "6.0.1"},
        "*": {"freebsd-version": "15.0-RELEASE", "strongswan": "6.0.0"},
    }
    run = {"cells": [cell_record(reported, "SAD_INSTALL_FAILED(EINVAL)"),
                     cell_record(loaded, "UP")]}  # fmt: skip

    assert record.record(run, path, versions, DAY) == [REPORTED, loaded.id]

    again = config.load("freebsd", root)
    got = expected(again.expectations, reported, {})
    assert str(got.outcome) == "SAD_INSTALL_FAILED(EINVAL)"
    assert got.why == (
        "recorded 2026-05-01 with freebsd-version 15.0-RELEASE-p1, strongswan 6.0.1"
    )
    assert str(expected(again.expectations, loaded, {}).outcome) == "UP"
    assert (
        "15.0-RELEASE, strongswan 6.0.0" in expected(again.expectations, loaded, {}).why
    )
    other = cells[REPORTED.replace("15.0", "14.3")]
    assert expected(again.expectations, other, {}) is None  # still NEW
    data = yaml.safe_load(path.read_text())
    assert data["recorded_with"]["date"] == "2026-05-01"
    assert all(set(rule["when"]) == set(lab.matrix.axes) for rule in data["rules"])


def test_recording_again_replaces_the_cells_rule_and_keeps_others(tmp_path, lab):
    root = copy_fixtures(tmp_path)
    path = root / "expectations" / "freebsd.yaml"
    cells = {c.id: c for c in matrix.default(lab.matrix)}
    first, second = cells[REPORTED], cells[REPORTED.replace("15.0", "14.3")]
    record.record({"cells": [cell_record(first, "UP")]}, path, {}, DAY)
    record.record({"cells": [cell_record(second, "UP")]}, path, {}, DAY)

    record.record({"cells": [cell_record(first, "SAD_INSTALL_FAILED(EINVAL)")]},
                  path, {}, DAY)  # fmt: skip

    table = schema.load(path, schema.Expectations)
    assert len(table.rules) == 2
    assert str(expected(table, first, {}).outcome) == "SAD_INSTALL_FAILED(EINVAL)"
    assert str(expected(table, second, {}).outcome) == "UP"


def test_recorded_rules_go_before_hand_written_broad_rules(tmp_path, lab):
    root = copy_fixtures(tmp_path)
    path = root / "expectations" / "freebsd.yaml"
    path.write_text(
        "platform: freebsd\nrules:\n"
        "  - when: {backend: pfkey}\n    expect: UP\n    why: hand-written\n"
    )
    cell = next(c for c in matrix.default(lab.matrix) if c.id == REPORTED)

    record.record({"cells": [cell_record(cell, "SAD_INSTALL_FAILED(EINVAL)")]},
                  path, {}, DAY)  # fmt: skip

    table = schema.load(path, schema.Expectations)
    assert [rule.why for rule in table.rules][1] == "hand-written"
    assert str(expected(table, cell, {}).outcome) == "SAD_INSTALL_FAILED(EINVAL)"


def test_errors_and_new_are_not_recorded(tmp_path, lab):
    root = copy_fixtures(tmp_path)
    path = root / "expectations" / "freebsd.yaml"
    before = path.read_text()
    cell = next(c for c in matrix.default(lab.matrix) if c.id == REPORTED)

    recorded = record.record(
        {"cells": [cell_record(cell, "ERROR"), cell_record(cell, "not an outcome")]},
        path, {}, DAY,
    )  # fmt: skip

    assert recorded == []
    assert path.read_text() == before


def test_versions_from_evidence(tmp_path):
    folder = tmp_path / "cells" / "a" / "freebsd"
    folder.mkdir(parents=True)
    (folder / "versions.json").write_text(json.dumps({"strongswan": "6.0.1"}))
    run = {"cells": [{"id": "freebsd/a", "evidence": "cells/a"},
                     {"id": "freebsd/b", "evidence": "cells/b"}]}  # fmt: skip

    assert record.versions_from_evidence(str(tmp_path), run) == {
        "freebsd/a": {"strongswan": "6.0.1"}
    }
