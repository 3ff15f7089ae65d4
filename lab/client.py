"""The client side of a cell: fixtures/client.yaml plus the cell's overrides."""

from collections.abc import Mapping

from lab.responder import CONNECTION, DaemonConfig, identity
from lab.schema import Client
from vpnjail.strongswan import merge


def with_overrides(spec: Client, overrides: Mapping) -> Client:
    data = merge(spec.model_dump(), overrides)
    return Client.model_validate(data)


def build(spec: Client, gateway_address: str) -> DaemonConfig:
    local = identity(spec.local_id, gateway_address)
    remote = identity(spec.remote_id, gateway_address)
    conn = {
        "version": "1",
        "aggressive": "yes",
        "remote_addrs": [gateway_address],
        "vips": ["0.0.0.0"],
        "proposals": list(spec.ike_proposals),
        "local-1": {"auth": "psk", "id": local},
        "local-2": {"auth": "xauth", "xauth_id": spec.xauth.user},
        "remote-1": {"auth": "psk", "id": remote},
        "children": {
            CONNECTION: {
                "remote_ts": list(spec.remote_ts),
                "esp_proposals": list(spec.esp_proposals),
            }
        },
    }
    secrets = [
        {"type": "IKE", "data": spec.psk, "owners": [local, remote]},
        {"type": "XAUTH", "data": spec.xauth.password, "owners": [spec.xauth.user]},
    ]
    charon = {
        "cisco_unity": "yes",
        "i_dont_care_about_security_and_use_aggressive_mode_psk": "yes",
        "retransmit_tries": str(spec.retransmit.tries),
        "retransmit_timeout": str(spec.retransmit.timeout),
        "retransmit_base": str(spec.retransmit.base),
    }
    return DaemonConfig(charon, {CONNECTION: conn}, secrets, {}, CONNECTION)


def secret_values(spec: Client) -> list[str]:
    return [spec.psk, spec.xauth.password]
