"""What a profile becomes in strongSwan: charon settings and VICI payloads."""

from dataclasses import dataclass

from vpnjail import strongswan
from vpnjail.profile import Profile, read_secret

CONNECTION = "vpn"
SECRET_PLACEHOLDER = strongswan.REDACTED


@dataclass(frozen=True)
class Rendered:
    charon_conf: str  # strongswan.conf text
    conns: dict
    secrets: list[dict]  # values are placeholders unless resolved
    child: str

    def swanctl_text(self) -> str:
        return strongswan.render_swanctl(self.conns, self.secrets, {})


def backend(system: str, profile: Profile) -> str:
    if profile.backend == "libipsec":
        return "libipsec"
    return strongswan.KERNEL_BACKEND[system]


def charon_settings(system: str, profile: Profile) -> dict:
    extra = {
        "cisco_unity": "yes" if profile.remote_networks == "pushed" else "no",
        "retransmit_tries": "5",
        "retransmit_timeout": "2.0",
    }
    if profile.ike.mode == "aggressive":
        extra["i_dont_care_about_security_and_use_aggressive_mode_psk"] = "yes"
    return strongswan.charon_settings(system, backend(system, profile), "/run", extra)


def connection(profile: Profile) -> dict:
    remote = strongswan.identity(
        profile.remote_id.type, profile.remote_id.value, profile.gateway
    )
    conn = {
        "version": "1",
        "aggressive": "yes" if profile.ike.mode == "aggressive" else "no",
        "remote_addrs": [profile.gateway],
        "proposals": list(profile.ike.proposals),
        "rekey_time": f"{profile.ike.lifetime}s",
        "dpd_delay": f"{profile.ike.dpd.delay}s",
        "dpd_timeout": f"{profile.ike.dpd.timeout}s",
        "local-1": {"auth": "psk", "id": _local_id(profile)},
        "remote-1": {"auth": "psk", "id": remote},
        "children": {CONNECTION: _child(profile)},
    }
    if profile.auth.xauth is not None:
        conn["local-2"] = {"auth": "xauth", "xauth_id": profile.auth.xauth.user}
    if profile.mode_config != "off":
        conn["vips"] = ["0.0.0.0"]
        conn["pull"] = "yes" if profile.mode_config == "pull" else "no"
    return {CONNECTION: conn}


def _local_id(profile: Profile) -> str:
    ident = profile.local_id
    return strongswan.identity(ident.type, ident.value, "%any")


def _child(profile: Profile) -> dict:
    pushed = profile.remote_networks == "pushed"
    lifetime = profile.ike.child_lifetime
    return {
        "remote_ts": ["0.0.0.0/0"] if pushed else list(profile.remote_networks),
        "esp_proposals": list(profile.ike.esp_proposals),
        "life_time": f"{lifetime}s",
        "rekey_time": f"{lifetime * 9 // 10}s",
        # charon itself re-establishes a CHILD_SA lost to DPD.
        "dpd_action": "restart",
        "close_action": "restart",
    }


def secrets(profile: Profile, resolve: bool, where: str) -> list[dict]:
    """VICI shared secrets; real values only when *resolve* is true."""

    def value(ref, field: str) -> str:
        return read_secret(ref, f"{where}: {field}") if resolve else SECRET_PLACEHOLDER

    local = _local_id(profile)
    remote = strongswan.identity(
        profile.remote_id.type, profile.remote_id.value, profile.gateway
    )
    owners = [o for o in (local, remote) if o != "%any"]
    items = [{"type": "IKE", "data": value(profile.auth.psk, "auth.psk"),
              "owners": owners}]  # fmt: skip
    if profile.auth.xauth is not None:
        items.append(
            {
                "type": "XAUTH",
                "data": value(profile.auth.xauth.password, "auth.xauth.password"),
                "owners": [profile.auth.xauth.user],
            }
        )
    return items


def render(system: str, profile: Profile, where: str, resolve: bool) -> Rendered:
    return Rendered(
        charon_conf=strongswan.render_strongswan_conf(charon_settings(system, profile)),
        conns=connection(profile),
        secrets=secrets(profile, resolve, where),
        child=CONNECTION,
    )
