"""The NoCloud seed: an ISO labelled ``cidata`` that installs an SSH key.

cloud-init (Linux), nuageinit (FreeBSD) and the lab's own Debian seed
reader all look for a filesystem labelled ``cidata`` holding ``user-data``
and ``meta-data``. The user-data installs the run's public key for one
user and nothing else: everything a guest needs beyond a login is done
over SSH, where each step is logged and checked.
"""

import io
import logging

import pycdlib
import yaml

log = logging.getLogger(__name__)

VOLUME_ID = "cidata"
CLOUD_CONFIG_HEADER = "#cloud-config"
# ISO 9660 level-3 names (the Rock Ridge and Joliet names are the real ones).
FILES = {
    "user-data": "/USER_DATA.;1",
    "meta-data": "/META_DATA.;1",
    "network-config": "/NETWORK_CONFIG.;1",
}


def cloud_config(public_key: str, user: str = "root") -> str:
    """user-data giving *user* the login *public_key*, and nothing else.

    nuageinit compares the first line with ``==``, so it must be exactly
    ``#cloud-config``. ``disable_root: false`` keeps cloud-init from
    replacing root's key with a "please log in as ..." command.
    """
    key = public_key.strip()
    if not key.startswith(("ssh-", "ecdsa-")) or "\n" in key:
        raise ValueError(f"not one OpenSSH public key: {key[:40]!r}")
    body = {"users": [{"name": user, "ssh_authorized_keys": [key]}]}
    if user == "root":
        body["disable_root"] = False
    # One line per key: nuageinit's YAML reader is not PyYAML's.
    text = yaml.safe_dump(
        body, sort_keys=False, default_flow_style=False, width=float("inf")
    )
    return f"{CLOUD_CONFIG_HEADER}\n{text}"


def meta_data(instance_id: str, hostname: str) -> str:
    return yaml.safe_dump(
        {"instance-id": instance_id, "local-hostname": hostname}, sort_keys=False
    )


def build_seed_iso(
    path: str,
    user_data: str,
    meta_data: str,
    network_config: str | None = None,
) -> None:
    """Write the seed ISO: volume id ``cidata``, Rock Ridge and Joliet names."""
    if not user_data.startswith(CLOUD_CONFIG_HEADER + "\n"):
        raise ValueError(f"{path}: user-data must start with '#cloud-config'")
    contents = {"user-data": user_data, "meta-data": meta_data}
    if network_config is not None:
        contents["network-config"] = network_config
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
    try:
        for name, text in contents.items():
            data = text.encode()
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                FILES[name],
                rr_name=name,
                joliet_path=f"/{name}",
            )
        iso.write(path)
    finally:
        iso.close()
    log.debug("seed %s: %s", path, ", ".join(contents))


def read_seed_iso(path: str) -> tuple[str, dict[str, str]]:
    """The volume id and the files (by Rock Ridge name) of a seed ISO."""
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        volume = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue().decode()
        return volume, files
    finally:
        iso.close()
