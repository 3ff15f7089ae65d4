"""Talking to charon over VICI with strongSwan's own Python client."""

import logging
from collections.abc import Mapping

import vici

from vpnjail import vici_control
from vpnjail.vici_control import plain  # noqa: F401 (part of this API)

log = logging.getLogger(__name__)


def connect(path: str, timeout: float = 30.0) -> vici.Session:
    return vici_control.connect(path, timeout)


def load(
    session: vici.Session, conns: Mapping, secrets: list[dict], pools: Mapping
) -> None:
    session.load_conn(dict(conns))
    for secret in secrets:
        session.load_shared(dict(secret))
    if pools:
        session.load_pool(dict(pools))


def initiate(session: vici.Session, child: str, timeout_ms: int) -> str | None:
    """Initiate *child*; None when charon reports success, else its error."""
    request = {"child": child, "timeout": timeout_ms, "init-limits": "no"}
    try:
        for _ in session.initiate(request):
            pass
    except vici.exception.CommandException as exc:
        return str(exc)
    except OSError as exc:
        return f"VICI connection failed: {exc}"
    return None


def state(session: vici.Session) -> dict:
    """Everything the lab records about a daemon: SAs, conns, stats."""
    return {
        "version": plain(session.version()),
        "stats": plain(session.stats()),
        "sas": [plain(sa) for sa in session.list_sas()],
        "conns": [plain(conn) for conn in session.list_conns()],
    }


def established_children(sas: list[dict]) -> list[str]:
    """Names of CHILD_SAs that are INSTALLED under an ESTABLISHED IKE_SA."""
    names = []
    for entry in sas:
        for ike in entry.values():
            if ike.get("state") != "ESTABLISHED":
                continue
            for child in ike.get("child-sas", {}).values():
                if child.get("state") == "INSTALLED":
                    names.append(child.get("name", "?"))
    return names
