"""lab/report.py: the run's HTML grid and the reports/latest link."""

import os

from lab import report

AXES = ("isolation", "backend", "devices", "nat", "auth")


def record(cell_id: str, outcome: str, expected: str = "UP") -> dict:
    values = cell_id.split("/")[1:]
    verdict = "pass" if outcome == expected else "fail"
    return {
        "id": cell_id,
        "axes": dict(zip(AXES, values, strict=True)),
        "expected": expected,
        "outcome": outcome,
        "verdict": verdict,
        "detail": "",
        "duration": 3.2,
        "evidence": "cells/" + cell_id.replace("/", "_"),
        "why_expected": "",
        "deciding": [["client", "07[IKE] <fgt|1> CHILD_SA fgt{1} established"]],
        "traffic": {"ping": None, "tcp": "no answer"},
    }


RECORDS = [
    record(
        "local/jail/netlink/tun-visible/nat/good", "SAD_INSTALL_FAILED(EPROTONOSUPPORT)"
    ),
    record("local/jail/netlink/tun-visible/direct/good", "UP"),
    record(
        "local/jail/libipsec/tun-hidden/nat/good",
        "KERNEL_IPSEC_UNAVAILABLE(tun)",
        "KERNEL_IPSEC_UNAVAILABLE(tun)",
    ),
    record(
        "local/jail/libipsec/tun-visible/nat/wrong-psk",
        "AUTH_FAILED(psk)",
        "AUTH_FAILED(psk)",
    ),
]
RUN = {
    "id": "20261204-154353-a1a0",
    "platform": "local",
    "host": "lab",
    "kernel": "6.1.0",
    "seconds": 42.0,
    "capabilities": {"esp": {"value": False}, "tun": {"value": True}},
}


def write_run(tmp_path) -> str:
    for rec in RECORDS:
        (tmp_path / rec["evidence"]).mkdir(parents=True)
        (tmp_path / rec["evidence"] / "client").mkdir()
        (tmp_path / rec["evidence"] / "client" / "charon.log").write_text("log\n")
    return report.write_html(str(tmp_path), RUN, RECORDS)


def test_grid_rows_are_platform_and_leading_axes_columns_the_last_two():
    grid = report.grid(RECORDS)
    assert grid["row_axes"] == "platform/isolation/backend/devices"
    assert grid["column_axes"] == "nat/auth"
    # "good" columns first, then the others, each group in name order.
    assert grid["columns"] == ["direct/good", "nat/good", "nat/wrong-psk"]
    assert list(grid["rows"]) == [
        "local/jail/libipsec/tun-hidden",
        "local/jail/libipsec/tun-visible",
        "local/jail/netlink/tun-visible",
    ]
    assert grid["rows"]["local/jail/netlink/tun-visible"]["direct/good"] is RECORDS[1]


def test_grid_keeps_platforms_apart():
    twin = {**RECORDS[1], "id": RECORDS[1]["id"].replace("local/", "vpnjail/", 1)}
    grid = report.grid([RECORDS[1], twin])
    assert grid["rows"]["local/jail/netlink/tun-visible"]["direct/good"] is RECORDS[1]
    assert grid["rows"]["vpnjail/jail/netlink/tun-visible"]["direct/good"] is twin


def test_grid_of_no_records_is_empty():
    assert report.grid([]) == {
        "rows": {},
        "columns": [],
        "row_axes": "",
        "column_axes": "",
    }


def test_index_shows_every_outcome_linked_to_its_evidence_page(tmp_path):
    path = write_run(tmp_path)
    assert path == os.path.join(tmp_path, "index.html")
    page = (tmp_path / "index.html").read_text()
    for rec in RECORDS:
        assert f'<a href="{rec["evidence"]}/index.html"' in page
        assert rec["outcome"] in page
        assert (tmp_path / rec["evidence"] / "index.html").is_file()


def test_index_marks_failed_cells_with_their_expectation(tmp_path):
    write_run(tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert page.count('class="cell fail"') == 1
    assert page.count('class="cell pass"') == 3
    assert "SAD_INSTALL_FAILED(EPROTONOSUPPORT)\n<br>expected UP</a>" in page
    assert "1 fail, 3 pass." in page
    assert "esp=no tun=yes" in page


def test_cell_page_lists_deciding_lines_traffic_and_evidence_files(tmp_path):
    write_run(tmp_path)
    rec = RECORDS[0]
    page = (tmp_path / rec["evidence"] / "index.html").read_text()
    assert '<p class="outcome">SAD_INSTALL_FAILED(EPROTONOSUPPORT)</p>' in page
    assert "client: 07[IKE] &lt;fgt|1&gt; CHILD_SA fgt{1} established" in page
    assert "<li>ping: passed</li><li>tcp: no answer</li>" in page
    assert '<a href="client/charon.log">client/charon.log</a>' in page
    assert '<a href="../../index.html">' in page


def test_point_latest_replaces_an_existing_link(tmp_path):
    (tmp_path / "run-a").mkdir()
    (tmp_path / "run-b").mkdir()
    report.point_latest(str(tmp_path), "run-a")
    assert os.readlink(tmp_path / "latest") == "run-a"
    report.point_latest(str(tmp_path), "run-b")
    assert os.readlink(tmp_path / "latest") == "run-b"
    # Relative, so the reports directory can move; no temporary link is left.
    assert sorted(os.listdir(tmp_path)) == ["latest", "run-a", "run-b"]


def test_the_page_says_where_the_responder_ran(tmp_path):
    for rec in RECORDS:
        (tmp_path / rec["evidence"]).mkdir(parents=True)
    page = report.write_html(str(tmp_path), {**RUN, "responder": "vm"}, RECORDS)

    with open(page) as src:
        assert "responder in a Debian VM" in src.read()
