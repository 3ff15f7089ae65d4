"""lab/outcome.py: the outcome vocabulary."""

import pytest

from lab.outcome import KINDS, Outcome


@pytest.mark.parametrize(
    ("text", "kind", "qualifier"),
    [
        ("UP", "UP", ""),
        ("TIMEOUT", "TIMEOUT", ""),
        ("SAD_INSTALL_FAILED(EINVAL)", "SAD_INSTALL_FAILED", "EINVAL"),
        ("AUTH_FAILED(xauth)", "AUTH_FAILED", "xauth"),
        ("DEGRADED(forward,ping)", "DEGRADED", "forward,ping"),
        ("KERNEL_IPSEC_UNAVAILABLE(tun)", "KERNEL_IPSEC_UNAVAILABLE", "tun"),
    ],
)
def test_parse_and_str_round_trip(text, kind, qualifier):
    outcome = Outcome.parse(text)
    assert (outcome.kind, outcome.qualifier) == (kind, qualifier)
    assert str(outcome) == text


def test_parse_strips_surrounding_space():
    assert Outcome.parse("  NO_PROPOSAL(phase2)\n") == Outcome("NO_PROPOSAL", "phase2")


def test_equality_ignores_detail_and_deciding():
    assert Outcome("UP", "", "one", (("client", "a"),)) == Outcome("UP", "", "two")
    assert Outcome("AUTH_FAILED", "psk") != Outcome("AUTH_FAILED", "id")


def test_unknown_kind_is_rejected_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown outcome kind 'UPP'") as raised:
        Outcome.parse("UPP")
    for kind in KINDS:
        assert kind in str(raised.value)


@pytest.mark.parametrize("text", ["up", "UP(", "UP(a(b))", "AUTH FAILED", ""])
def test_text_that_is_no_outcome_is_rejected(text):
    with pytest.raises(ValueError, match="not an outcome"):
        Outcome.parse(text)
