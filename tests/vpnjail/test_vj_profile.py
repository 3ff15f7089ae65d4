"""vpnjail/profile.py: the profile schema, its one-line problems and secrets.

(The test files of vpnjail are named test_vj_*: tests/ has no __init__.py,
so their basenames must differ from tests/test_cli.py and the like, and a
tests/vpnjail/__init__.py would shadow the vpnjail package itself.)
"""

import os
import re
from pathlib import Path

import pytest
import yaml

import vpnjail
from vpnjail.profile import (
    Profile,
    ProfileError,
    SecretRef,
    check_secret,
    cross_check,
    load_dir,
    load_file,
    read_secret,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = Path(vpnjail.__file__).parent / "data" / "example-fortigate.yaml"
# Secret files must be owned by root; files the tests write are root's only
# when the tests run as root (as the README and CI run them).
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root-owned files")


def profile_data(**changes) -> dict:
    """A minimal valid profile, with top-level fields replaced by *changes*."""
    data = {
        "name": "office",
        "gateway": "198.51.100.1",
        "ike": {
            "proposals": ["aes256-sha256-modp2048"],
            "esp_proposals": ["aes256-sha256"],
        },
        "local_id": {"type": "fqdn", "value": "client.example"},
        "auth": {"psk": {"env": "VJ_TEST_PSK"}},
    }
    data.update(changes)
    return data


def write(directory: Path, filename: str, data) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ProfileError) as caught:
        load_file(path)
    return caught.value.problems


def dir_problems(directory: Path) -> list[str]:
    with pytest.raises(ProfileError) as caught:
        load_dir(directory)
    return caught.value.problems


def secret_file(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def test_a_minimal_profile_takes_the_documented_defaults(tmp_path):
    p = load_file(write(tmp_path, "office.yaml", profile_data())).profile
    assert (p.ike.mode, p.ike.lifetime, p.ike.child_lifetime) == (
        "aggressive",
        86400,
        43200,
    )
    assert (p.ike.dpd.delay, p.ike.dpd.timeout) == (20, 60)
    assert (p.remote_id.type, p.remote_id.value) == ("any", None)
    assert (p.mode_config, p.remote_networks, p.backend, p.tun) == (
        "pull",
        "pushed",
        "libipsec",
        "auto",
    )
    assert (p.link, p.nat, p.port_forwards, p.enabled) == (None, True, [], True)


def test_every_profile_field_is_in_the_documented_table():
    # The docs table is the schema's documentation; the two must not drift.
    text = (REPO / "docs" / "vpnjail.md").read_text()
    cells = re.findall(r"^\| (`[^|]+) \|", text, flags=re.MULTILINE)
    fields = [f for cell in cells for f in re.findall(r"`([a-z_.]+)`", cell)]
    documented = {field.split(".")[0] for field in fields}
    assert documented == set(Profile.model_fields)


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        (
            {"colour": "blue"},
            "colour: unknown field; remove it or check its spelling",
        ),
        (
            {"ike": {"proposals": ["x"], "esp_proposals": ["y"], "pfs": True}},
            "ike.pfs: unknown field; remove it or check its spelling",
        ),
        (
            {"auth": {"psk": {"env": "X", "vault": "y"}}},
            "auth.psk.vault: unknown field; remove it or check its spelling",
        ),
        ({"gateway": None}, "gateway: Input should be a valid string"),
        ({"auth": {}}, "auth.psk: required field is missing; add it"),
        (
            {"auth": {"psk": {"env": "X"}, "xauth": {"user": "alice"}}},
            "auth.xauth.password: required field is missing; add it",
        ),
        (
            {"auth": {"psk": {"env": "X", "file": "/x"}}},
            "auth.psk: give exactly one of `file` or `env`",
        ),
        ({"auth": {"psk": {}}}, "auth.psk: give exactly one of `file` or `env`"),
        (
            {"local_id": {"type": "fqdn"}},
            "local_id: an identity of type fqdn needs a `value`",
        ),
        (
            {"remote_id": {"type": "keyid"}},
            "remote_id: an identity of type keyid needs a `value`",
        ),
        (
            {"local_id": {"type": "userfqdn", "value": ""}},
            "local_id: an identity of type userfqdn needs a `value`",
        ),
        (
            {"link": {"host": "192.0.2.1/30", "jail": "192.0.2.9/30"}},
            "link: host and jail addresses must share one network",
        ),
        (
            {"link": {"host": "192.0.2.1/30", "jail": "192.0.2.1/30"}},
            "link: host and jail addresses must differ",
        ),
        (
            {"link": {"host": "192.0.2.1/30"}},
            "link.jail: required field is missing; add it",
        ),
        (
            {"ike": {"mode": "main", "proposals": ["x"]}},
            "ike.esp_proposals: required field is missing; add it",
        ),
        (
            {"ike": {"mode": "quick", "proposals": ["x"], "esp_proposals": ["y"]}},
            "ike.mode: Input should be 'aggressive' or 'main'",
        ),
        (
            {"port_forwards": [{"host_port": 70000, "port": 22}]},
            "port_forwards.0.host_port: Input should be less than or equal to 65535",
        ),
    ],
    ids=[
        "unknown-top-key",
        "unknown-ike-key",
        "unknown-secret-key",
        "null-gateway",
        "missing-psk",
        "missing-xauth-password",
        "psk-two-sources",
        "psk-no-source",
        "fqdn-without-value",
        "keyid-without-value",
        "userfqdn-empty-value",
        "link-two-networks",
        "link-same-address",
        "link-half",
        "ike-incomplete",
        "ike-bad-mode",
        "port-out-of-range",
    ],
)
def test_a_bad_field_gives_exactly_one_line_naming_file_and_field(
    tmp_path, changes, line
):
    path = write(tmp_path, "office.yaml", profile_data(**changes))
    assert problems_of(path) == [f"{path}: {line}"]


@pytest.mark.parametrize("field", ["name", "gateway", "ike", "local_id", "auth"])
def test_each_missing_required_field_is_one_line(tmp_path, field):
    data = profile_data()
    del data[field]
    path = write(tmp_path, "office.yaml", data)
    assert problems_of(path) == [f"{path}: {field}: required field is missing; add it"]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    data = profile_data(colour="blue", local_id={"type": "fqdn"})
    del data["gateway"]
    path = write(tmp_path, "office.yaml", data)
    assert problems_of(path) == [
        f"{path}: gateway: required field is missing; add it",
        f"{path}: local_id: an identity of type fqdn needs a `value`",
        f"{path}: colour: unknown field; remove it or check its spelling",
    ]


@pytest.mark.parametrize(
    "name",
    ["a;b", "a b", "$(reboot)", "Office", "1office", "-office", "office_1", "a" * 16],
)
def test_a_name_that_could_inject_or_not_fit_is_refused(tmp_path, name):
    path = write(tmp_path, "office.yaml", profile_data(name=name))
    assert problems_of(path) == [
        f"{path}: name: String should match pattern '^[a-z][a-z0-9-]{{0,14}}$'"
    ]


@pytest.mark.parametrize("name", ["a", "office-2", "a" * 15])
def test_names_of_the_documented_pattern_are_accepted(tmp_path, name):
    path = write(tmp_path, "office.yaml", profile_data(name=name))
    assert load_file(path).profile.name == name


BAD_ADDRESSES = [
    pytest.param(
        {"gateway": "198.51.100.300"}, "gateway", "'198.51.100.300'", id="gateway"
    ),
    pytest.param(
        {"link": {"host": "192.0.2.300/30", "jail": "192.0.2.2/30"}},
        "link.host",
        "'192.0.2.300/30'",
        id="link-host",
    ),
    pytest.param(
        {"link": {"host": "192.0.2.1/30", "jail": "gateway"}},
        "link.jail",
        "'gateway'",
        id="link-jail",
    ),
    pytest.param(
        {"port_forwards": [{"host_port": 8022, "port": 22, "to": "203.0.113.300"}]},
        "port_forwards.0.to",
        "'203.0.113.300'",
        id="forward-to",
    ),
    pytest.param(
        {"remote_networks": ["198.51.100.0/33"]},
        "remote_networks",
        "'198.51.100.0/33'",
        id="remote-network",
    ),
]


@pytest.mark.parametrize(("changes", "field", "value"), BAD_ADDRESSES)
def test_a_bad_address_is_one_line_naming_file_field_and_value(
    tmp_path, changes, field, value
):
    path = write(tmp_path, "office.yaml", profile_data(**changes))
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: {field}: ")
    assert value in problems[0]


def test_a_bad_address_line_names_the_fix(tmp_path):
    path = write(tmp_path, "office.yaml", profile_data(gateway="198.51.100.300"))
    (line,) = problems_of(path)
    assert "; " in line.removeprefix(f"{path}: gateway: ")


def test_a_network_with_host_bits_is_refused(tmp_path):
    path = write(
        tmp_path, "office.yaml", profile_data(remote_networks=["203.0.113.5/24"])
    )
    assert f"{path}: remote_networks" in "\n".join(problems_of(path))


def test_a_port_forwarded_twice_in_one_profile_is_one_line(tmp_path):
    forwards = [
        {"host_port": 8022, "port": 22},
        {"host_port": 8022, "port": 2222, "to": "203.0.113.10"},
    ]
    path = write(tmp_path, "office.yaml", profile_data(port_forwards=forwards))
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: ")
    assert line.endswith("port_forwards: tcp port 8022 is forwarded twice; keep one")


def test_the_same_port_over_tcp_and_udp_is_two_forwards(tmp_path):
    forwards = [
        {"host_port": 5353, "port": 53, "proto": "tcp"},
        {"host_port": 5353, "port": 53, "proto": "udp"},
    ]
    path = write(tmp_path, "office.yaml", profile_data(port_forwards=forwards))
    assert len(load_file(path).profile.port_forwards) == 2


def test_a_duplicate_forward_is_reported_beside_another_problem(tmp_path):
    forwards = [{"host_port": 8022, "port": 22}, {"host_port": 8022, "port": 23}]
    data = profile_data(port_forwards=forwards, colour="blue")
    path = write(tmp_path, "office.yaml", data)
    assert any("forwarded twice" in line for line in problems_of(path))


def test_not_yaml_is_one_line_with_its_line_number(tmp_path):
    path = tmp_path / "office.yaml"
    path.write_text("name: office\ngateway: [198.51.100.1\n")
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: not valid YAML: line 3: ")


def test_a_yaml_list_instead_of_a_mapping_is_refused(tmp_path):
    path = write(tmp_path, "office.yaml", ["name", "office"])
    assert problems_of(path) == [
        f"{path}: (top level): Input should be a valid dictionary or instance "
        "of Profile"
    ]


def test_a_missing_profiles_directory_says_how_to_fix_it(tmp_path):
    missing = tmp_path / "nowhere"
    assert dir_problems(missing) == [
        f"{missing}: no such profiles directory; create it or pass --profiles"
    ]


def test_load_dir_reads_every_yaml_file_in_name_order(tmp_path):
    write(tmp_path, "b.yaml", profile_data(name="home"))
    write(tmp_path, "a.yaml", profile_data(name="office"))
    (tmp_path / "notes.txt").write_text("not a profile")
    names = [item.profile.name for item in load_dir(tmp_path)]
    assert names == ["office", "home"]


def test_load_dir_reports_the_problems_of_every_file(tmp_path):
    first = write(tmp_path, "a.yaml", profile_data(colour="blue"))
    second = write(tmp_path, "b.yaml", profile_data(name="home", gateway="x"))
    problems = dir_problems(tmp_path)
    assert problems[0] == (
        f"{first}: colour: unknown field; remove it or check its spelling"
    )
    assert problems[1].startswith(f"{second}: gateway: ")
    assert len(problems) == 2


def test_two_profiles_with_one_name_are_refused(tmp_path):
    first = write(tmp_path, "a.yaml", profile_data())
    second = write(tmp_path, "b.yaml", profile_data())
    assert dir_problems(tmp_path) == [
        f"{second}: name: 'office' is also used by {first}; rename one"
    ]


def test_two_profiles_with_the_same_link_are_refused(tmp_path):
    link = {"host": "192.0.2.1/30", "jail": "192.0.2.2/30"}
    first = write(tmp_path, "a.yaml", profile_data(link=link))
    second = write(tmp_path, "b.yaml", profile_data(name="home", link=link))
    assert dir_problems(tmp_path) == [
        f"{second}: link: address {ip} is also used by {first}; "
        "pick another or leave link out"
        for ip in ("192.0.2.1", "192.0.2.2")
    ]


def test_a_link_address_reused_on_the_other_end_is_refused(tmp_path):
    write(tmp_path, "a.yaml", profile_data(link={"host": "192.0.2.1/30",
                                                 "jail": "192.0.2.2/30"}))  # fmt: skip
    second = write(
        tmp_path,
        "b.yaml",
        profile_data(
            name="home", link={"host": "192.0.2.2/24", "jail": "192.0.2.9/24"}
        ),
    )
    (line,) = dir_problems(tmp_path)
    assert line.startswith(f"{second}: link: address 192.0.2.2 is also used by ")


def test_a_port_forwarded_by_two_profiles_is_refused(tmp_path):
    forward = [{"host_port": 8022, "port": 22}]
    first = write(tmp_path, "a.yaml", profile_data(port_forwards=forward))
    second = write(tmp_path, "b.yaml", profile_data(name="home", port_forwards=forward))
    assert dir_problems(tmp_path) == [
        f"{second}: port_forwards: tcp port 8022 is already forwarded by "
        f"{first}; pick another host_port"
    ]


def test_one_port_over_tcp_and_udp_in_two_profiles_is_allowed(tmp_path):
    write(tmp_path, "a.yaml", profile_data(port_forwards=[
        {"host_port": 5353, "port": 53, "proto": "tcp"}]))  # fmt: skip
    write(tmp_path, "b.yaml", profile_data(name="home", port_forwards=[
        {"host_port": 5353, "port": 53, "proto": "udp"}]))  # fmt: skip
    assert len(load_dir(tmp_path)) == 2


def test_cross_check_of_distinct_profiles_finds_nothing(tmp_path):
    write(tmp_path, "a.yaml", profile_data())
    write(tmp_path, "b.yaml", profile_data(name="home"))
    assert cross_check(load_dir(tmp_path)) == []


# -- secrets ------------------------------------------------------------------


def test_a_secret_from_the_environment_is_read(monkeypatch):
    monkeypatch.setenv("VJ_TEST_PSK", "env-secret-value")
    assert read_secret(SecretRef(env="VJ_TEST_PSK"), "x") == "env-secret-value"


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_an_unset_secret_variable_says_export_it(monkeypatch, value):
    monkeypatch.delenv("VJ_TEST_PSK", raising=False)
    if value is not None:
        monkeypatch.setenv("VJ_TEST_PSK", value)
    where = "/p/office.yaml: auth.psk"
    assert check_secret(SecretRef(env="VJ_TEST_PSK"), where) == [
        f"{where}: environment variable VJ_TEST_PSK is not set; export it"
    ]


@as_root
def test_a_root_only_secret_file_is_read_without_its_newline(tmp_path):
    path = secret_file(tmp_path / "psk", "file-secret-value")
    assert read_secret(SecretRef(file=str(path)), "x") == "file-secret-value"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_a_secret_file_others_can_read_says_chmod_600(tmp_path, mode):
    path = secret_file(tmp_path / "psk", "file-secret-value", mode)
    where = "/p/office.yaml: auth.psk"
    assert check_secret(SecretRef(file=str(path)), where) == [
        f"{where}: secret file {path} is readable by others; chmod 600 {path}"
    ]


def test_a_secret_file_not_owned_by_root_says_chown(tmp_path, monkeypatch):
    path = secret_file(tmp_path / "psk", "file-secret-value")
    real_stat = Path.stat

    def stat_as_user_1000(self, *args, **kwargs):
        info = real_stat(self, *args, **kwargs)
        if self != path:
            return info
        fields = list(info)
        fields[4] = 1000  # st_uid: the file as if a user owned it
        return os.stat_result(fields)

    monkeypatch.setattr(Path, "stat", stat_as_user_1000)
    where = "/p/office.yaml: auth.psk"
    assert check_secret(SecretRef(file=str(path)), where) == [
        f"{where}: secret file {path} is not owned by root; chown root {path}"
    ]


def test_a_missing_secret_file_is_named(tmp_path):
    path = tmp_path / "psk"
    assert check_secret(SecretRef(file=str(path)), "w") == [
        f"w: secret file {path}: No such file or directory"
    ]


@as_root
def test_an_empty_secret_file_is_refused(tmp_path):
    path = secret_file(tmp_path / "psk", "  ")
    assert check_secret(SecretRef(file=str(path)), "w") == [
        f"w: secret file {path} is empty; write the secret"
    ]


# -- the shipped example ------------------------------------------------------


def test_the_shipped_example_profile_validates():
    assert EXAMPLE.is_file(), (
        f"{EXAMPLE} is missing; docs/vpnjail.md says it ships with vpnjail"
    )
    example = load_file(EXAMPLE).profile
    # It is the FortiGate dial-up example the docs describe.
    assert (example.ike.mode, example.mode_config) == ("aggressive", "pull")
    assert example.auth.xauth is not None
