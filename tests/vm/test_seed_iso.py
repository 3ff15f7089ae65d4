"""lab/vm/seed.py: the cidata seed, read back with pycdlib."""

import io

import pycdlib
import pytest
import yaml

from lab.vm import seed

KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7pLfDtLkvFWX7Gv7dx9dJOzXUg1b0ZrKVsIRiUXkUo"
    " vjlab-test"
)


@pytest.fixture
def iso(tmp_path):
    path = str(tmp_path / "seed.iso")
    seed.build_seed_iso(
        path,
        seed.cloud_config(KEY),
        seed.meta_data("vjlab-run", "vjlab-debian12"),
        network_config="version: 2\n",
    )
    return path


def test_volume_id_is_cidata(iso):
    volume, _ = seed.read_seed_iso(iso)
    assert volume == "cidata"


def test_rock_ridge_names_are_the_nocloud_names(iso):
    _, files = seed.read_seed_iso(iso)
    assert set(files) == {"user-data", "meta-data", "network-config"}


def test_joliet_names_are_the_nocloud_names_too(iso):
    reader = pycdlib.PyCdlib()
    reader.open(iso)
    try:
        names = {
            child.file_identifier().decode("utf-16_be")
            for child in reader.list_children(joliet_path="/")
            if not (child.is_dot() or child.is_dotdot())
        }
        out = io.BytesIO()
        reader.get_file_from_iso_fp(out, joliet_path="/user-data")
    finally:
        reader.close()
    assert names == {"user-data", "meta-data", "network-config"}
    assert out.getvalue().startswith(b"#cloud-config\n")


def test_user_data_first_line_is_exactly_cloud_config(iso):
    _, files = seed.read_seed_iso(iso)
    assert files["user-data"].split("\n", 1)[0] == "#cloud-config"


def test_user_data_installs_the_key_and_nothing_else(iso):
    _, files = seed.read_seed_iso(iso)
    config = yaml.safe_load(files["user-data"])
    assert config == {
        "users": [{"name": "root", "ssh_authorized_keys": [KEY]}],
        "disable_root": False,
    }


def test_the_key_stays_on_one_line(iso):
    _, files = seed.read_seed_iso(iso)
    assert f"  - {KEY}\n" in files["user-data"]


def test_a_non_root_user_gets_no_disable_root():
    config = yaml.safe_load(seed.cloud_config(KEY, user="freebsd"))
    assert config == {"users": [{"name": "freebsd", "ssh_authorized_keys": [KEY]}]}


def test_meta_data_names_the_instance_and_host(iso):
    _, files = seed.read_seed_iso(iso)
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "vjlab-run",
        "local-hostname": "vjlab-debian12",
    }


def test_network_config_is_optional(tmp_path):
    path = str(tmp_path / "seed.iso")
    seed.build_seed_iso(path, seed.cloud_config(KEY), seed.meta_data("i", "h"))
    _, files = seed.read_seed_iso(path)
    assert set(files) == {"user-data", "meta-data"}


@pytest.mark.parametrize("key", ["", "not a key", KEY + "\n" + KEY])
def test_anything_but_one_public_key_is_refused(key):
    with pytest.raises(ValueError, match="not one OpenSSH public key"):
        seed.cloud_config(key)


def test_user_data_that_is_not_cloud_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="#cloud-config"):
        seed.build_seed_iso(str(tmp_path / "s.iso"), "#!/bin/sh\n", "{}")
