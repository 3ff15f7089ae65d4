"""lab/schema.py and lab/config.py: the shipped fixtures, and broken copies.

Each broken fixture is a copy of the shipped directory with one textual edit,
so the problem found is exactly the one made.
"""

import shutil

import pytest

from lab import config, schema


def broken(tmp_path, name: str, old: str, new: str):
    """Copy fixtures/ to tmp_path, replace *old* by *new* in *name*."""
    root = tmp_path / "fixtures"
    shutil.copytree(config.FIXTURES, root)
    path = root / name
    text = path.read_text()
    assert old in text, f"{name} no longer holds {old!r}; update this test"
    path.write_text(text.replace(old, new, 1))
    return root, path


def problems_of(root) -> list[str]:
    with pytest.raises(schema.FixtureError) as raised:
        config.load("local", root)
    return raised.value.problems


def test_shipped_fixtures_load():
    lab = config.load()
    assert lab.matrix.platform == "local"
    assert lab.expectations.platform == "local"
    assert lab.responder.name == "fgt-dialup"
    assert lab.client.xauth.user == "alice"
    assert lab.paths["expectations"] == config.FIXTURES / "expectations" / "local.yaml"


def test_load_accepts_a_string_root():
    assert config.load("local", str(config.FIXTURES)).responder.psk == "lab-psk-5f0c1e"


# file, old text, new text, field named, words of the message.
BROKEN = [
    (
        "responder.yaml",
        "name: fgt-dialup",
        "name: fgt-dialup\ncolour: red",
        "colour",
        "unknown field",
    ),
    (
        "responder.yaml",
        "pool: 203.0.113.200-203.0.113.220",
        "pool: 203.0.113.300-203.0.113.220",
        "mode_config.pool",
        "'203.0.113.300' does not appear to be an IPv4 or IPv6 address",
    ),
    (
        "responder.yaml",
        "pool: 203.0.113.200-203.0.113.220",
        "pool: 203.0.113.220-203.0.113.200",
        "mode_config.pool",
        "range start is above its end",
    ),
    (
        "responder.yaml",
        "dns: [203.0.113.53]",
        "dns: [203.0.113.530]",
        "mode_config.dns.0",
        "'203.0.113.530' does not appear",
    ),
    (
        "responder.yaml",
        "dh_groups: [14, 5]",
        "dh_groups: [14, 7]",
        "phase1.dh_groups.1",
        "Input should be 1, 2, 5, 14",
    ),
    (
        "client.yaml",
        "psk: lab-psk-5f0c1e",
        "psk: short",
        "psk",
        "at least 6 characters",
    ),
    (
        "matrix/local.yaml",
        "auth: [wrong-psk, wrong-xauth, wrong-id]",
        "auth: [wrong-psk, wrong-pin]",
        "default[1].auth",
        "unknown value 'wrong-pin'; allowed: good, wrong-psk, wrong-xauth, wrong-id",
    ),
    (
        "matrix/local.yaml",
        "- {isolation: host, nat: nat}",
        "- {isolation: host, nat: nat}\n  - {colour: red}",
        "exclude[1]",
        "unknown axis 'colour'; allowed: isolation, backend, devices, nat, auth",
    ),
    (
        "matrix/local.yaml",
        "  wrong-id: {local_id: {type: keyid, value: othergroup}}\n",
        "",
        "auth",
        "no overrides for wrong-id",
    ),
    (
        "expectations/local.yaml",
        "requires: {esp: false}",
        "requires: {ipsec: false}",
        "rules.4.requires",
        "unknown capability 'ipsec'; allowed: af_key, esp, tun",
    ),
    (
        "expectations/local.yaml",
        "when: {backend: libipsec, devices: tun-hidden}",
        "when: {backend: pfkey, devices: tun-hidden}",
        "rules.0.when.backend",
        "unknown value 'pfkey'; allowed: netlink, libipsec",
    ),
    (
        "expectations/local.yaml",
        "when: {auth: wrong-psk}",
        "when: {secret: wrong-psk}",
        "rules.1.when",
        "unknown axis 'secret'",
    ),
    (
        "matrix/local.yaml",
        "wrong-psk: {psk: lab-psk-wrong0}",
        "wrong-psk: {pks: lab-psk-wrong0}",
        "auth.wrong-psk",
        "does not fit client.yaml: pks",
    ),
    (
        "matrix/local.yaml",
        "wrong-xauth: {xauth: {password: lab-xauth-wrong0}}",
        "wrong-xauth: {xauth: {password: 12345}}",
        "auth.wrong-xauth",
        "does not fit client.yaml: xauth.password",
    ),
]


@pytest.mark.parametrize(
    ("name", "old", "new", "field", "words"),
    BROKEN,
    ids=[f"{row[0]}:{row[3]}" for row in BROKEN],
)
def test_broken_fixture_is_one_line_naming_file_and_field(
    tmp_path, name, old, new, field, words
):
    root, path = broken(tmp_path, name, old, new)
    problems = problems_of(root)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert "\n" not in problem
    assert problem.startswith(f"{path}: ")
    assert f" {field}: " in problem
    assert words in problem


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    root, path = broken(tmp_path, "client.yaml", "psk: lab-psk-5f0c1e", "psk: [open")
    assert problems_of(root) == [
        f"{path}: not valid YAML: line 6: expected ',' or ']', but got ':'"
    ]


def test_missing_file_is_named(tmp_path):
    root, path = broken(tmp_path, "client.yaml", "psk", "psk")
    path.unlink()
    assert problems_of(root) == [f"{path}: file not found"]


def test_missing_fixtures_of_a_platform_are_named(tmp_path):
    with pytest.raises(schema.FixtureError) as raised:
        config.load("plan9")
    assert raised.value.problems == [
        f"{config.FIXTURES / 'matrix' / 'plan9.yaml'}: file not found",
        f"{config.FIXTURES / 'expectations' / 'plan9.yaml'}: file not found",
    ]


def test_every_broken_file_is_reported_at_once(tmp_path):
    root, client_path = broken(tmp_path, "client.yaml", "psk: lab", "pks: lab")
    responder_path = root / "responder.yaml"
    responder_path.write_text(responder_path.read_text() + "colour: red\n")
    problems = problems_of(root)
    assert [p.split(": ", 1)[0] for p in problems] == [
        str(responder_path),
        str(client_path),
        str(client_path),
    ]
    assert f"{client_path}: psk: required field is missing" in problems
    assert f"{client_path}: pks: unknown field; remove it or check its spelling" in (
        problems
    )


def test_empty_file_reports_each_required_field(tmp_path):
    root, path = broken(tmp_path, "client.yaml", "psk", "psk")
    path.write_text("")
    problems = problems_of(root)
    assert len(problems) == 8
    assert f"{path}: retransmit: required field is missing" in problems


def test_fixture_error_message_is_its_problems_one_per_line():
    error = schema.FixtureError(["a.yaml: x: bad", "b.yaml: y: bad"])
    assert str(error) == "a.yaml: x: bad\nb.yaml: y: bad"


def test_pool_range_mixing_ip_versions_is_a_fixture_error(tmp_path):
    root, path = broken(
        tmp_path,
        "responder.yaml",
        "pool: 203.0.113.200-203.0.113.220",
        "pool: 203.0.113.200-2001:db8::1",
    )
    (problem,) = problems_of(root)
    assert problem.startswith(f"{path}: mode_config.pool: ")


def test_unknown_outcome_kind_in_expectations_is_a_fixture_error(tmp_path):
    root, path = broken(
        tmp_path, "expectations/local.yaml", "expect: UP", "expect: UPP"
    )
    (problem,) = problems_of(root)
    assert problem.startswith(f"{path}: rules.5.expect: ")


def test_override_problem_does_not_echo_the_rejected_secret(tmp_path):
    root, _ = broken(
        tmp_path,
        "matrix/local.yaml",
        "wrong-psk: {psk: lab-psk-wrong0}",
        "wrong-psk: {psk: s3cr}",
    )
    (problem,) = problems_of(root)
    assert "s3cr" not in problem
