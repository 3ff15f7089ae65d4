"""The FortiGate-like responder, built from fixtures/responder.yaml.

strongSwan plays a FortiGate dial-up IKEv1 gateway: Aggressive Mode with a
pre-shared key, XAuth through xauth-generic, mode-config pull handing out a
virtual IP and DNS from a pool, Cisco Unity split-include, DPD and NAT-T.
Where strongSwan cannot imitate FortiOS (its vendor ID, RESPONDER-LIFETIME,
a second XAuth round for tokens, type-agnostic peer-ID matching) the lab
says so in docs/responder.md rather than pretending.
"""

from dataclasses import dataclass

from lab import proposals
from lab.schema import Identity, Responder
from vpnjail import strongswan

CONNECTION = "fgt"


def identity(ident: Identity, default_address: str) -> str:
    return strongswan.identity(ident.type, ident.value, default_address)


@dataclass(frozen=True)
class DaemonConfig:
    """What one charon gets: strongswan.conf settings and VICI payloads."""

    charon: dict
    conns: dict
    secrets: list[dict]
    pools: dict
    child: str


def build(spec: Responder, gateway_address: str) -> DaemonConfig:
    peer = identity(spec.peer_id, gateway_address)
    conn = {
        "version": "1",
        "aggressive": "yes",
        "local_addrs": [gateway_address],
        "pools": ["dialup"],
        "proposals": proposals.ike(
            spec.phase1.encryption, spec.phase1.integrity, spec.phase1.dh_groups
        ),
        "rekey_time": f"{spec.phase1.lifetime}s",
        "dpd_delay": f"{spec.dpd.delay}s",
        "dpd_timeout": f"{spec.dpd.timeout}s",
        "encap": "yes" if spec.nat_traversal == "forced" else "no",
        # A dial-up gateway serves many clients under one peer ID; INITIAL
        # _CONTACT from one must not tear down the others.
        "unique": "never",
        "local-1": {"auth": "psk", "id": identity(spec.local_id, gateway_address)},
        "remote-1": {"auth": "psk", "id": peer},
        "remote-2": {"auth": "xauth-generic"},
        "children": {
            CONNECTION: {
                "local_ts": list(spec.mode_config.split_include),
                "esp_proposals": proposals.esp(
                    spec.phase2.encryption,
                    spec.phase2.integrity,
                    spec.phase2.pfs_groups,
                ),
                "life_time": f"{spec.phase2.lifetime}s",
                "rekey_time": f"{spec.phase2.lifetime * 9 // 10}s",
            }
        },
    }
    secrets = [{"type": "IKE", "data": spec.psk, "owners": [peer]}]
    secrets += [
        {"type": "XAUTH", "data": user.password, "owners": [user.name]}
        for user in spec.xauth_users
    ]
    pool = {
        "addrs": spec.mode_config.pool,
        "split_include": spec.mode_config.split_include,
    }
    if spec.mode_config.dns:
        pool["dns"] = list(spec.mode_config.dns)
    charon = {
        "i_dont_care_about_security_and_use_aggressive_mode_psk": "yes",
        "cisco_unity": "yes",
    }
    if spec.mode_config.banner:
        # VICI pools take no numeric attributes in 5.9; the attr plugin does.
        charon["plugins"] = {"attr": {"28672": spec.mode_config.banner}}
    return DaemonConfig(
        charon, {CONNECTION: conn}, secrets, {"dialup": pool}, CONNECTION
    )


def secret_values(spec: Responder) -> list[str]:
    return [spec.psk] + [user.password for user in spec.xauth_users]
