"""lab/cli.py: the `diff` command through main(), as a user runs it."""

import json

import pytest

from lab import cli

CELL = "local/jail/netlink/tun-visible/nat/good"


def results_file(path, outcome: str) -> str:
    path.write_text(
        json.dumps({"run": {}, "cells": [{"id": CELL, "outcome": outcome}]})
    )
    return str(path)


def test_diff_of_unchanged_runs_exits_0(tmp_path, capsys):
    old = results_file(tmp_path / "old.json", "UP")
    assert cli.main(["diff", old, old]) == 0
    assert "0 changed, 1 unchanged" in capsys.readouterr().out


def test_diff_of_a_changed_outcome_exits_1(tmp_path, capsys):
    old = results_file(tmp_path / "old.json", "UP")
    new = results_file(tmp_path / "new.json", "SAD_INSTALL_FAILED(EPROTONOSUPPORT)")
    assert cli.main(["diff", old, new]) == 1
    assert f"CHANGED {CELL}: UP -> SAD_INSTALL_FAILED(EPROTONOSUPPORT)" in (
        capsys.readouterr().out
    )


def test_diff_takes_run_directories(tmp_path):
    for name, outcome in (("a", "UP"), ("b", "TIMEOUT")):
        (tmp_path / name).mkdir()
        results_file(tmp_path / name / "results.json", outcome)
    assert cli.main(["diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 1


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "No such file or directory"),
        ('{"run": {}}', "not a lab results file (no 'cells' list)"),
        ("{not json", "Expecting property name"),
    ],
    ids=["missing", "no-cells", "not-json"],
)
def test_diff_of_a_bad_file_exits_2_with_one_line(tmp_path, capsys, content, words):
    good = results_file(tmp_path / "good.json", "UP")
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert cli.main(["diff", good, str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert words in err
    assert "Traceback" not in err


def test_diff_of_cells_without_outcome_exits_2(tmp_path, capsys):
    good = results_file(tmp_path / "good.json", "UP")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cells": [{"id": CELL}]}))
    assert cli.main(["diff", good, str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["frobnicate"])
    assert raised.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("problems", "status", "out"),
    [
        ([], 0, "preflight: everything the local lab needs is present\n"),
        (
            ["missing nft: apt-get install nftables"],
            1,
            "missing nft: apt-get install nftables\n",
        ),
    ],
)
def test_preflight_prints_problems_and_exits_1_if_any(
    monkeypatch, capsys, problems, status, out
):
    monkeypatch.setattr(cli.preflight, "problems", lambda: problems)
    assert cli.main(["preflight"]) == status
    assert capsys.readouterr().out == out
