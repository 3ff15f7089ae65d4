"""strongSwan settings shared by vpnjail and its lab.

Configuration is held as nested dicts: the same dict is loaded into charon
over VICI and rendered as swanctl.conf text for people to read, so what was
loaded and what is shown cannot drift apart.
"""

from collections.abc import Mapping

REDACTED = "<redacted>"

# Plugins every charon vpnjail starts loads, besides the kernel backend's.
BASE_PLUGINS = [
    "random", "nonce", "openssl", "aes", "sha1", "sha2", "md5", "hmac", "gmp",
    "pem", "pkcs1", "x509", "pubkey", "kdf", "xcbc", "gcm", "socket-default",
    "vici", "attr", "xauth-generic", "unity",
]  # fmt: skip

# kernel-libipsec is critical ("!") where another plugin could also provide
# kernel IPsec: a stack that cannot open a tun then refuses to start instead
# of silently falling back to the kernel's IPsec.
BACKEND_PLUGINS = {
    ("linux", "netlink"): ["kernel-netlink"],
    ("linux", "libipsec"): ["kernel-libipsec!", "kernel-netlink"],
    ("freebsd", "pfkey"): ["kernel-pfkey", "kernel-pfroute"],
    ("freebsd", "libipsec"): ["kernel-libipsec", "kernel-pfroute"],
}

# The kernel's own IPsec backend on each system.
KERNEL_BACKEND = {"linux": "netlink", "freebsd": "pfkey"}

CHARON_PATHS = {
    "linux": "/usr/lib/ipsec/charon",
    "freebsd": "/usr/local/libexec/ipsec/charon",
}

DH_GROUPS = {
    1: "modp768", 2: "modp1024", 5: "modp1536", 14: "modp2048",
    15: "modp3072", 16: "modp4096", 19: "ecp256", 20: "ecp384", 21: "ecp521",
}  # fmt: skip


def plugin_list(system: str, backend: str) -> list[str]:
    try:
        kernel = BACKEND_PLUGINS[(system, backend)]
    except KeyError:
        raise ValueError(f"no kernel backend {backend!r} on {system}") from None
    return BASE_PLUGINS + kernel


def charon_settings(
    system: str,
    backend: str,
    run_dir: str = "/run",
    extra: Mapping | None = None,
) -> dict:
    """The ``charon`` section of strongswan.conf for one isolated stack.

    *run_dir* is the stack's private run directory as charon sees it.
    """
    settings = {
        "load_modular": "no",
        "load": " ".join(plugin_list(system, backend)),
        "install_virtual_ip": "yes",
        "plugins": {
            "vici": {"socket": f"unix://{run_dir}/charon.vici"},
            # Pushed DNS servers must never reach the machine's resolv.conf.
            "resolve": {"load": "no"},
        },
        "filelog": {
            "stack": {
                "path": f"{run_dir}/charon.log",
                "time_format": "%b %e %T",
                "ike_name": "yes",
                "flush_line": "yes",
                "default": "1",
                "ike": "2",
                "knl": "2",
                "cfg": "2",
            }
        },
    }
    return merge(settings, extra or {})


def merge(base: Mapping, extra: Mapping) -> dict:
    """*base* with *extra* laid over it, nested sections merged."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render_sections(data: Mapping, indent: int = 0) -> str:
    """Render nested dicts in strongSwan's settings syntax."""
    pad = "  " * indent
    lines = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            lines.append(render_sections(value, indent + 1).rstrip("\n"))
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{key} = {_scalar(value)}")
    return "\n".join(line for line in lines if line) + "\n"


def _scalar(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def render_strongswan_conf(charon: Mapping) -> str:
    return render_sections({"charon": charon})


def render_swanctl(conns: Mapping, secrets: list[dict], pools: Mapping) -> str:
    """swanctl.conf text for what is loaded over VICI, secrets redacted."""
    document = {
        "connections": conns,
        "secrets": {
            f"{s['type'].lower()}-{n}": {"id": s["owners"], "secret": REDACTED}
            for n, s in enumerate(secrets, 1)
        },
        "pools": pools,
    }
    return render_sections(document)


def identity(kind: str, value: str | None, default_address: str) -> str:
    """A swanctl identity string from a type and value."""
    if kind == "any":
        return "%any"
    value = value or default_address
    prefixes = {"address": "", "fqdn": "fqdn:", "userfqdn": "userfqdn:"}
    return prefixes.get(kind, "keyid:") + value
