"""lab/runid.py: run ids and the tags that find a run's resources."""

import pytest

from lab import runid

RUN = "20261204-154353-a1a0"


def test_new_run_id_matches_the_pattern():
    for _ in range(20):
        assert runid.RUN_ID_PATTERN.match(runid.new_run_id())


def test_new_run_ids_differ_within_one_second():
    # Two runs started together must not share namespaces or /run/vjlab/<id>.
    assert len({runid.new_run_id() for _ in range(20)}) > 1


@pytest.mark.parametrize(
    ("name", "run"),
    [
        (f"vjlab-{RUN}-local_jail_netlink_tun-visible_nat_good-gw", RUN),
        (f"vjlab-{RUN}-probe", RUN),
        (runid.namespace_prefix(RUN) + "x", RUN),
        # Not ours: another prefix, a malformed id, or nothing after the id.
        (f"other-{RUN}-gw", None),
        ("vjlab-2026124-154353-a1a0-gw", None),
        ("vjlab-20261204-154353-A1A0-gw", None),
        (f"vjlab-{RUN}", None),
        ("eth0", None),
    ],
)
def test_run_of_namespace(name, run):
    assert runid.run_of_namespace(name) == run


def test_runtime_dir_and_namespace_prefix():
    assert runid.runtime_dir(RUN) == f"/run/vjlab/{RUN}"
    assert runid.namespace_prefix(RUN) == f"vjlab-{RUN}-"
