"""lab/expectations.py: the first matching rule decides, capabilities included."""

import pytest

from lab import config, expectations, schema
from lab.matrix import Cell
from lab.outcome import Outcome

TABLE = config.load().expectations
AXES = ("isolation", "backend", "devices", "nat", "auth")


def cell(cell_id: str) -> Cell:
    """A Cell from an id in the form isolation/backend/devices/nat/auth."""
    return Cell("local", tuple(zip(AXES, cell_id.split("/"), strict=True)))


@pytest.mark.parametrize(
    ("cell_id", "capabilities", "outcome", "rule"),
    [
        # esp false: kernel-netlink cells cannot install the SA ...
        (
            "jail/netlink/tun-visible/direct/good",
            {"esp": False, "tun": True},
            "SAD_INSTALL_FAILED(EPROTONOSUPPORT)",
            4,
        ),
        # ... and where ESP works the same cell is expected up.
        ("jail/netlink/tun-visible/direct/good", {"esp": True, "tun": True}, "UP", 5),
        # libipsec does not care about the kernel's ESP.
        ("jail/libipsec/tun-visible/nat/good", {"esp": False}, "UP", 5),
        # An unprobed capability matches no `requires`.
        ("host/netlink/tun-hidden/direct/good", {}, "UP", 5),
        (
            "jail/libipsec/tun-hidden/nat/good",
            {"esp": True},
            "KERNEL_IPSEC_UNAVAILABLE(tun)",
            0,
        ),
        # First match wins: the hidden tun stops charon before any auth.
        (
            "jail/libipsec/tun-hidden/nat/wrong-psk",
            {"esp": True},
            "KERNEL_IPSEC_UNAVAILABLE(tun)",
            0,
        ),
        # Authentication fails before any SA is installed, with or without ESP.
        (
            "jail/netlink/tun-visible/direct/wrong-psk",
            {"esp": False},
            "AUTH_FAILED(psk)",
            1,
        ),
        ("jail/libipsec/tun-visible/nat/wrong-id", {"esp": True}, "AUTH_FAILED(id)", 2),
        (
            "jail/libipsec/tun-visible/nat/wrong-xauth",
            {"esp": True},
            "AUTH_FAILED(xauth)",
            3,
        ),
    ],
)
def test_first_matching_rule_decides(cell_id, capabilities, outcome, rule):
    found = expectations.expected(TABLE, cell(cell_id), capabilities)
    assert (str(found.outcome), found.rule) == (outcome, rule)
    assert found.why == TABLE.rules[rule].why


def test_expectation_outcome_is_a_parsed_outcome():
    found = expectations.expected(
        TABLE, cell("jail/netlink/tun-visible/direct/good"), {"esp": False}
    )
    assert found.outcome == Outcome("SAD_INSTALL_FAILED", "EPROTONOSUPPORT")


def test_cell_without_matching_rule_has_no_expectation():
    table = schema.Expectations(
        platform="local",
        rules=[
            schema.Rule(when={"backend": "netlink"}, expect="UP"),
            schema.Rule(when={"auth": "good"}, requires={"esp": True}, expect="UP"),
        ],
    )
    libipsec = cell("jail/libipsec/tun-visible/nat/good")
    assert expectations.expected(table, libipsec, {"esp": False}) is None
    assert expectations.expected(table, libipsec, {"esp": True}).rule == 1


def test_shipped_rules_refer_only_to_known_names():
    lab = config.load()
    assert (
        expectations.check_references(
            lab.expectations, lab.matrix.axes, config.CAPABILITY_NAMES, "x.yaml"
        )
        == []
    )
