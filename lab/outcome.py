"""The outcome vocabulary shared by every platform.

An outcome is a kind with an optional qualifier, written ``KIND(qualifier)``:
``SAD_INSTALL_FAILED(EINVAL)``, ``AUTH_FAILED(xauth)``, ``UP``.
"""

import errno
import re
from dataclasses import dataclass, field

KINDS = {
    "UP": "IKE and CHILD SA up; traffic and the port forward pass",
    "DEGRADED": "tunnel up, but a traffic check failed or the wrong backend ran",
    "SAD_INSTALL_FAILED": "the kernel refused the IPsec SA (qualifier: errno)",
    "KERNEL_IPSEC_UNAVAILABLE": "no kernel IPsec backend could load",
    "AUTH_FAILED": "authentication failed (qualifier: psk, xauth or id)",
    "NO_PROPOSAL": "no common proposal (qualifier: phase1 or phase2)",
    "TIMEOUT": "the peer never answered",
    "DAEMON_CRASH": "charon died on a signal",
    "ERROR": "the harness itself failed",
    "NEW": "no recorded expectation for this cell",
}

# The qualifiers a kind can carry; None: any (or none).
QUALIFIERS = {
    "AUTH_FAILED": {"psk", "xauth", "id"},
    "NO_PROPOSAL": {"phase1", "phase2"},
    "KERNEL_IPSEC_UNAVAILABLE": {"tun", "capability", "socket", "plugin"},
    "SAD_INSTALL_FAILED": set(errno.errorcode.values()) | {"unknown"},
    "UP": {""},
    "TIMEOUT": {""},
    "NEW": {""},
}


def qualifier_problem(kind: str, qualifier: str) -> str | None:
    """Why *qualifier* can never follow *kind*, or None if it can."""
    allowed = QUALIFIERS.get(kind)
    if allowed is None or qualifier in allowed:
        return None
    if allowed == {""}:
        return f"{kind} takes no qualifier"
    shown = sorted(allowed) if len(allowed) < 10 else ["an errno name, e.g. EINVAL"]
    return f"{kind}({qualifier}) cannot happen; allowed: {', '.join(shown)}"


_PATTERN = re.compile(r"^(?P<kind>[A-Z_]+)(?:\((?P<qualifier>[^()]*)\))?$")


@dataclass(frozen=True)
class Outcome:
    kind: str
    qualifier: str = ""
    detail: str = field(default="", compare=False)
    deciding: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"unknown outcome kind {self.kind!r}; allowed: {', '.join(KINDS)}"
            )

    def __str__(self) -> str:
        return f"{self.kind}({self.qualifier})" if self.qualifier else self.kind

    @classmethod
    def parse(cls, text: str) -> "Outcome":
        match = _PATTERN.match(text.strip())
        if not match:
            raise ValueError(f"not an outcome: {text!r}; write KIND or KIND(detail)")
        return cls(match["kind"], match["qualifier"] or "")
