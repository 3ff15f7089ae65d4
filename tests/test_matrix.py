"""lab/matrix.py on the shipped fixtures/matrix/local.yaml."""

import itertools

import pytest

from lab import config, matrix

MATRIX = config.load().matrix
AXES = ("isolation", "backend", "devices", "nat", "auth")

# The default set, written out by hand from fixtures/matrix/local.yaml so that a
# change to the file or to the expansion shows up here.
DEFAULT_IDS = [
    "local/jail/netlink/tun-visible/nat/good",
    "local/jail/netlink/tun-visible/direct/good",
    "local/jail/netlink/tun-hidden/nat/good",
    "local/jail/netlink/tun-hidden/direct/good",
    "local/jail/libipsec/tun-visible/nat/good",
    "local/jail/libipsec/tun-visible/direct/good",
    "local/jail/libipsec/tun-hidden/nat/good",
    "local/jail/libipsec/tun-hidden/direct/good",
    "local/host/netlink/tun-visible/direct/good",
    "local/host/netlink/tun-hidden/direct/good",
    "local/host/libipsec/tun-visible/direct/good",
    "local/host/libipsec/tun-hidden/direct/good",
    "local/jail/libipsec/tun-visible/nat/wrong-psk",
    "local/jail/libipsec/tun-visible/nat/wrong-xauth",
    "local/jail/libipsec/tun-visible/nat/wrong-id",
    "local/jail/netlink/tun-visible/direct/wrong-psk",
]


def test_axes_are_in_cell_id_order():
    assert tuple(MATRIX.axes) == AXES


def test_default_set_is_the_expanded_entries_in_order():
    assert [cell.id for cell in matrix.default(MATRIX)] == DEFAULT_IDS


def test_cell_id_reads_platform_then_each_axis():
    for cell in matrix.default(MATRIX):
        assert cell.id.split("/") == ["local", *(cell[axis] for axis in AXES)]
        assert cell.slug == cell.id.replace("/", "_")


@pytest.mark.parametrize(
    "cells", [matrix.default, matrix.full], ids=["default", "full"]
)
def test_no_cell_puts_the_host_client_behind_nat(cells):
    assert not [
        c.id for c in cells(MATRIX) if c["isolation"] == "host" and c["nat"] == "nat"
    ]


@pytest.mark.parametrize("axis", AXES)
def test_default_set_covers_every_axis_value(axis):
    seen = {cell[axis] for cell in matrix.default(MATRIX)}
    assert seen == set(MATRIX.axes[axis])


def test_default_set_covers_backend_devices_isolation_product():
    seen = {
        (c["backend"], c["devices"], c["isolation"]) for c in matrix.default(MATRIX)
    }
    want = set(
        itertools.product(
            MATRIX.axes["backend"], MATRIX.axes["devices"], MATRIX.axes["isolation"]
        )
    )
    assert seen == want


def test_full_set_is_the_product_less_exclusions():
    # 2*2*2*2*4 = 64 combinations; host+nat removes 2*2*4 = 16 of them.
    cells = matrix.full(MATRIX)
    assert len(cells) == 48
    assert len({cell.id for cell in cells}) == 48


def test_default_is_a_subset_of_full():
    full_ids = {cell.id for cell in matrix.full(MATRIX)}
    assert set(DEFAULT_IDS) <= full_ids


@pytest.mark.parametrize(
    ("specs", "want"),
    [
        (["backend=libipsec"], {"backend": {"libipsec"}}),
        (
            ["auth=good,wrong-psk", "nat=direct"],
            {"auth": {"good", "wrong-psk"}, "nat": {"direct"}},
        ),
        # Repeating an axis adds to it rather than replacing it.
        (
            ["backend=netlink", "backend=libipsec"],
            {"backend": {"netlink", "libipsec"}},
        ),
        ([], {}),
    ],
)
def test_parse_selection_accepts_known_names(specs, want):
    assert matrix.parse_selection(MATRIX, specs) == want


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (
            "colour=red",
            ["unknown axis 'colour'", "allowed: isolation, backend, devices, nat"],
        ),
        (
            "backend=pfkey",
            ["unknown backend value 'pfkey'", "allowed: netlink, libipsec"],
        ),
        (
            "auth=good,wrong-pin",
            [
                "unknown auth value 'wrong-pin'",
                "good, wrong-psk, wrong-xauth, wrong-id",
            ],
        ),
        ("backend", ["'backend'", "write AXIS=VALUE"]),
        ("backend=", ["'backend='", "write AXIS=VALUE"]),
    ],
)
def test_parse_selection_rejects_with_a_message_naming_what_is_allowed(spec, words):
    with pytest.raises(matrix.SelectionError) as raised:
        matrix.parse_selection(MATRIX, [spec])
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_select_keeps_cells_matching_every_selected_axis():
    selection = matrix.parse_selection(
        MATRIX, ["backend=libipsec", "auth=wrong-psk,wrong-id"]
    )
    assert [cell.id for cell in matrix.select(matrix.default(MATRIX), selection)] == [
        "local/jail/libipsec/tun-visible/nat/wrong-psk",
        "local/jail/libipsec/tun-visible/nat/wrong-id",
    ]


def test_select_with_nothing_selected_keeps_every_cell():
    cells = matrix.default(MATRIX)
    assert matrix.select(cells, {}) == cells


def test_cell_axes_as_dict():
    cell = matrix.default(MATRIX)[0]
    assert cell.as_dict() == {
        "isolation": "jail",
        "backend": "netlink",
        "devices": "tun-visible",
        "nat": "nat",
        "auth": "good",
    }
