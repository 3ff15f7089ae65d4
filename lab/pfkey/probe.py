"""Ask the kernel which strongSwan-shaped SADB_ADD requests it accepts.

The probe opens a PF_KEY v2 socket, sends one SADB_GETSPI and a series of
SADB_ADD variants shaped like the requests of strongSwan's kernel-pfkey
plugin for an IKEv1 Quick Mode SA, records the errno the kernel answers for
each, deletes every SA it created, and says which candidate cause of
``unable to add SAD entry ...: Invalid argument (22)`` the pattern points to.

It needs only python3 and the standard library. Copy the ``pfkey`` directory
into the jail and run either of::

    python3 -m pfkey.probe [--json]     # from the directory holding pfkey/
    python3 probe.py [--json]           # from inside pfkey/

Message shapes follow ``add_sa()``, ``get_spi_internal()``, ``del_sa()``,
``add_addr_ext()`` and ``add_encap_ext()`` in strongSwan's
``src/libcharon/plugins/kernel_pfkey/kernel_pfkey_ipsec.c`` (read in the
``rleon/strongswan`` copy; ``strongswan/strongswan`` tag 6.0.6 is the version
under study). Kernel behaviour referred to in the explanations is that of
FreeBSD ``sys/netipsec/key.c`` and ``sys/netipsec/xform_esp.c``
(``ihoro/freebsd-src``, ``fel1x-developer/freebsd-src``). Numbers come from
``pfkeyv2.py``, which cites the headers.

Safety: the probe uses RFC 5737 documentation addresses, SPIs it picks
itself and a reqid of its own. It deletes only SAs whose creation the kernel
confirmed (or, after a lost answer, whose SPI, addresses and reqid prove
they are its own), and it never sends SADB_DELETE without an SA extension,
which on FreeBSD would delete every SA between the two addresses.
"""

from __future__ import annotations

import argparse
import enum
import errno as errno_codes
import json
import logging
import os
import platform
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Protocol

# The repository targets 3.11, but this file also runs alone on a jail's own
# python3, where an older version would otherwise end in a traceback.
if sys.version_info < (3, 11):  # noqa: UP036
    sys.exit("pfkey-probe: python 3.11 or later is needed (pkg install python311)")

if __package__:
    from . import pfkeyv2 as pk
else:  # run as ``python3 probe.py`` from inside the copied directory
    import pfkeyv2 as pk

logger = logging.getLogger(__name__)

PROG = "pfkey-probe"
SCHEMA = "vpnjail/pfkey-probe/1"

# RFC 5737 documentation addresses: the SAs can never match real traffic.
PEER = IPv4Address("198.51.100.1")
LOCAL = IPv4Address("192.0.2.1")
PROBE_REQID = 0x5EC0
NAT_T_PORT = 4500
REPLAY_WINDOW = 32
SOFT_ADDTIME = 2700
HARD_ADDTIME = 3600
DEFAULT_TIMEOUT = 2.0
SPI_MIN = 0x100
SPI_SPAN = 0x40

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_PFKEY = 3
EXIT_NO_PRIVILEGE = 4

_UNAVAILABLE_ERRNOS = frozenset(
    getattr(errno_codes, name)
    for name in ("EAFNOSUPPORT", "EPROTONOSUPPORT", "ESOCKTNOSUPPORT", "EPFNOSUPPORT")
    if hasattr(errno_codes, name)
)
_PRIVILEGE_ERRNOS = frozenset({errno_codes.EPERM, errno_codes.EACCES})
EINVAL = errno_codes.EINVAL


class Category(enum.StrEnum):
    """What a step tests; the verdict reasons over categories."""

    GETSPI = "getspi"
    BASELINE = "baseline"
    NAT_T = "nat-t"
    REPLAY = "replay"
    NAT_T_REPLAY = "nat-t+replay"
    REMOVED_ALGORITHM = "removed-algorithm"
    AEAD = "aead"
    CONTROL = "control"
    CONTROL_DUPLICATE = "control-duplicate"


CONTROLS = frozenset({Category.CONTROL, Category.CONTROL_DUPLICATE})


class Stage(enum.StrEnum):
    """How far an exchange with the kernel got."""

    REPLY = "reply"
    BAD_REPLY = "bad-reply"
    SEND = "send"
    RECEIVE = "receive"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


class VerdictCode(enum.StrEnum):
    """Which candidate cause the pattern of answers points to."""

    TRANSFORM_MISSING = "ipsec-transform-missing"
    ALGORITHM = "algorithm"
    NAT_T = "nat-t"
    REPLAY = "replay"
    ACCEPTS_ALL = "accepts-strongswan-shapes"
    UNRELIABLE = "unreliable"
    INCONCLUSIVE = "inconclusive"
    MIXED = "mixed"


class ProbeError(Exception):
    """The probe cannot do what was asked; ``exit_code`` says how to exit."""

    exit_code = EXIT_FAILURE


class PfkeyUnavailableError(ProbeError):
    """This system has no PF_KEY v2 socket."""

    exit_code = EXIT_NO_PFKEY


class PfkeyPermissionError(ProbeError):
    """Opening a PF_KEY socket needs privilege we do not have."""

    exit_code = EXIT_NO_PRIVILEGE


@dataclass(frozen=True)
class Variant:
    """One SADB_ADD shape: algorithms, key sizes and optional extensions."""

    name: str
    category: Category
    encrypt: int
    encrypt_key_len: int
    auth: int = pk.AuthAlg.NONE
    auth_key_len: int = 0
    nat_t_ports: tuple[int, int] | None = None
    replay_window: int | None = None
    reuse_getspi_spi: bool = False


AES_SHA1 = {
    "encrypt": pk.EncAlg.X_AESCBC,
    "encrypt_key_len": 16,
    "auth": pk.AuthAlg.SHA1HMAC,
    "auth_key_len": 20,
}


def build_variants() -> tuple[Variant, ...]:
    """All SADB_ADD variants, in the order the probe sends them."""
    return (
        *_shape_variants(),
        *_removed_algorithm_variants(),
        *_gcm_variants(),
        *_control_variants(),
    )


def _shape_variants() -> tuple[Variant, ...]:
    ports = (NAT_T_PORT, NAT_T_PORT)
    return (
        Variant("baseline", Category.BASELINE, **AES_SHA1),
        Variant("nat-t", Category.NAT_T, nat_t_ports=ports, **AES_SHA1),
        Variant("replay", Category.REPLAY, replay_window=REPLAY_WINDOW, **AES_SHA1),
        Variant(
            "nat-t+replay",
            Category.NAT_T_REPLAY,
            nat_t_ports=ports,
            replay_window=REPLAY_WINDOW,
            **AES_SHA1,
        ),
    )


def _removed_algorithm_variants() -> tuple[Variant, ...]:
    removed = Category.REMOVED_ALGORITHM
    sha1 = {"auth": pk.AuthAlg.SHA1HMAC, "auth_key_len": 20}
    aes = {"encrypt": pk.EncAlg.X_AESCBC, "encrypt_key_len": 16}
    return (
        Variant("3des-cbc", removed, pk.EncAlg.DES3CBC, 24, **sha1),
        Variant("des-cbc", removed, pk.EncAlg.DESCBC, 8, **sha1),
        Variant("blowfish-cbc", removed, pk.EncAlg.X_BLOWFISHCBC, 16, **sha1),
        Variant("cast128-cbc", removed, pk.EncAlg.X_CAST128CBC, 16, **sha1),
        Variant("camellia-cbc", removed, pk.EncAlg.X_CAMELLIACBC, 16, **sha1),
        Variant("hmac-md5", removed, auth=pk.AuthAlg.MD5HMAC, auth_key_len=16, **aes),
        Variant(
            "aes-xcbc", removed, auth=pk.AuthAlg.X_AES_XCBC_MAC, auth_key_len=16, **aes
        ),
    )


def _gcm_variants() -> tuple[Variant, ...]:
    # AES-128 key plus the 4-byte salt of RFC 4106; AEAD has no auth key.
    removed = Category.REMOVED_ALGORITHM
    return (
        Variant("aes-gcm-8", removed, pk.EncAlg.X_AESGCM8, 20),
        Variant("aes-gcm-12", removed, pk.EncAlg.X_AESGCM12, 20),
        Variant("aes-gcm-16", Category.AEAD, pk.EncAlg.X_AESGCM16, 20),
    )


def _control_variants() -> tuple[Variant, ...]:
    return (
        Variant(
            "control-nat-t-port-0",
            Category.CONTROL,
            nat_t_ports=(NAT_T_PORT, 0),
            **AES_SHA1,
        ),
        Variant(
            "control-duplicate-spi",
            Category.CONTROL_DUPLICATE,
            reuse_getspi_spi=True,
            **AES_SHA1,
        ),
    )


# Messages shaped like strongSwan's kernel-pfkey requests


def _address_pair() -> tuple[pk.AddressExt, pk.AddressExt]:
    # Inbound direction (peer to us), as for the SA that GETSPI reserved.
    return (
        pk.AddressExt(pk.ExtType.ADDRESS_SRC, PEER),
        pk.AddressExt(pk.ExtType.ADDRESS_DST, LOCAL),
    )


def _key_bytes(length: int, seed: int) -> bytes:
    # Throw-away key material; the SA is deleted again within seconds.
    return bytes((seed + index) & 0xFF for index in range(length))


def _sadb_sa_replay(window: int | None, layout: pk.Layout) -> int:
    # strongSwan passes bytes on BSD and packets (capped at 32) on Linux.
    if window is None:
        return 0
    if layout.name == "linux":
        return min(window, 32)
    return min((window + 7) // 8, 0xFF)


def build_getspi(spi: int) -> pk.Message:
    """SADB_GETSPI for exactly ``spi`` (a one-value SPI range)."""
    extensions = (*_address_pair(), pk.SpiRangeExt(spi, spi))
    return pk.Message(pk.MsgType.GETSPI, pk.SaType.ESP, extensions=extensions)


def build_add(variant: Variant, spi: int, layout: pk.Layout) -> pk.Message:
    """SADB_ADD with strongSwan's extension order for an inbound tunnel SA."""
    sa = pk.SaExt(
        spi,
        replay=_sadb_sa_replay(variant.replay_window, layout),
        state=pk.SaState.MATURE,
        auth=variant.auth,
        encrypt=variant.encrypt,
    )
    extensions: list[pk.Extension] = [sa]
    if variant.replay_window is not None:
        extensions.append(pk.SaReplayExt(min(variant.replay_window, pk.REPLAY_EXT_MAX)))
    extensions.append(pk.Sa2Ext(mode=pk.IpsecMode.TUNNEL, reqid=PROBE_REQID))
    extensions.extend(_address_pair())
    extensions.extend(_lifetimes())
    extensions.extend(_keys(variant))
    if variant.nat_t_ports is not None:
        extensions.extend(_nat_t(*variant.nat_t_ports))
    return pk.Message(pk.MsgType.ADD, pk.SaType.ESP, extensions=tuple(extensions))


def _lifetimes() -> tuple[pk.LifetimeExt, pk.LifetimeExt]:
    return (
        pk.LifetimeExt(pk.ExtType.LIFETIME_SOFT, addtime=SOFT_ADDTIME),
        pk.LifetimeExt(pk.ExtType.LIFETIME_HARD, addtime=HARD_ADDTIME),
    )


def _keys(variant: Variant) -> list[pk.KeyExt]:
    keys = [
        pk.KeyExt(pk.ExtType.KEY_ENCRYPT, _key_bytes(variant.encrypt_key_len, 0x40))
    ]
    if variant.auth != pk.AuthAlg.NONE:
        keys.append(
            pk.KeyExt(pk.ExtType.KEY_AUTH, _key_bytes(variant.auth_key_len, 0x80))
        )
    return keys


def _nat_t(sport: int, dport: int) -> tuple[pk.Extension, ...]:
    return (
        pk.NatTTypeExt(pk.UDP_ENCAP_ESPINUDP),
        pk.NatTPortExt(pk.ExtType.X_NAT_T_SPORT, sport),
        pk.NatTPortExt(pk.ExtType.X_NAT_T_DPORT, dport),
    )


def build_delete(spi: int) -> pk.Message:
    """SADB_DELETE for one SPI; always carries the SA extension."""
    extensions = (pk.SaExt(spi, state=pk.SaState.LARVAL), *_address_pair())
    return pk.Message(pk.MsgType.DELETE, pk.SaType.ESP, extensions=extensions)


def build_get(spi: int) -> pk.Message:
    """SADB_GET for one SPI, used to recognise an SA whose ADD went unanswered."""
    extensions = (pk.SaExt(spi, state=pk.SaState.LARVAL), *_address_pair())
    return pk.Message(pk.MsgType.GET, pk.SaType.ESP, extensions=extensions)


# Talking to the kernel


class Transport(Protocol):
    """Carries raw PF_KEY messages; the socket in production, a fake in tests."""

    def send(self, data: bytes) -> None: ...

    def receive(self, timeout: float) -> bytes: ...

    def close(self) -> None: ...


class SocketTransport:
    """A PF_KEY v2 raw socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def open(cls, layout: pk.Layout) -> SocketTransport:
        """Open ``socket(PF_KEY, SOCK_RAW, PF_KEY_V2)`` or raise a ProbeError."""
        try:
            sock = socket.socket(layout.af_key, socket.SOCK_RAW, pk.PF_KEY_V2)
        except OSError as exc:
            raise _socket_error(exc, layout) from None
        logger.debug("opened PF_KEY socket (family %s)", layout.af_key)
        return cls(sock)

    def send(self, data: bytes) -> None:
        self._sock.send(data)

    def receive(self, timeout: float) -> bytes:
        self._sock.settimeout(timeout)
        return self._sock.recv(65536)

    def close(self) -> None:
        self._sock.close()


def _socket_error(exc: OSError, layout: pk.Layout) -> ProbeError:
    name = errno_label(exc.errno)
    if exc.errno in _UNAVAILABLE_ERRNOS:
        return PfkeyUnavailableError(_NO_PFKEY_TEXT[layout.name] + f" ({name})")
    if exc.errno in _PRIVILEGE_ERRNOS:
        return PfkeyPermissionError(
            f"opening a PF_KEY socket was refused ({name}): root is needed "
            "(FreeBSD: PRIV_NET_RAW, which a jail has only with its own vnet; "
            "Linux: CAP_NET_ADMIN)"
        )
    return ProbeError(f"cannot open a PF_KEY socket: {exc.strerror} ({name})")


_NO_PFKEY_TEXT = {
    "linux": (
        "this kernel has no AF_KEY (PF_KEY v2) socket support; load it with "
        "'modprobe af_key' (kernel option CONFIG_NET_KEY), or run the probe on "
        "the FreeBSD host or jail being diagnosed"
    ),
    "freebsd": (
        "this kernel has no PF_KEY (PF_KEY v2) socket support; it needs "
        "'options IPSEC_SUPPORT' (in GENERIC) or 'options IPSEC', and a jail "
        "needs its own vnet"
    ),
}


@dataclass(frozen=True)
class Exchange:
    """Outcome of one request: how far it got and the kernel's errno."""

    stage: Stage
    errno: int | None = None
    reply: pk.Message | None = None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.stage in (Stage.REPLY, Stage.BAD_REPLY) and self.errno == 0


class PfkeySession:
    """Numbers requests and pairs each with the kernel's answer to it."""

    def __init__(
        self,
        transport: Transport,
        layout: pk.Layout,
        timeout: float = DEFAULT_TIMEOUT,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.layout = layout
        self.timeout = timeout
        self.pid = os.getpid() if pid is None else pid
        self._clock = clock
        self._seq = 0

    def exchange(self, message: pk.Message) -> Exchange:
        """Send ``message`` and wait for the answer with our pid and seq."""
        _refuse_unsafe(message)
        self._seq += 1
        request = replace(message, seq=self._seq, pid=self.pid)
        logger.debug("sending %s seq %s", pk.type_name(request.msg_type), self._seq)
        try:
            self.transport.send(pk.encode_message(request, self.layout))
        except OSError as exc:
            return Exchange(Stage.SEND, exc.errno, detail=str(exc))
        return self._await_answer(request)

    def _await_answer(self, request: pk.Message) -> Exchange:
        deadline = self._clock() + self.timeout
        while (remaining := deadline - self._clock()) > 0:
            try:
                raw = self.transport.receive(remaining)
            except TimeoutError:
                break
            except OSError as exc:
                return Exchange(Stage.RECEIVE, exc.errno, detail=str(exc))
            answer = self._match(raw, request)
            if answer is not None:
                return answer
        return Exchange(Stage.TIMEOUT, detail=f"no answer within {self.timeout}s")

    def _match(self, raw: bytes, request: pk.Message) -> Exchange | None:
        # Other PF_KEY users' traffic is broadcast to us too; skip it.
        try:
            header = pk.peek_header(raw, self.layout)
        except pk.PfkeyDecodeError:
            logger.debug("ignoring a %s-byte fragment", len(raw))
            return None
        if (header.pid, header.seq, header.msg_type) != (
            request.pid,
            request.seq,
            request.msg_type,
        ):
            logger.debug(
                "ignoring %s for pid %s", pk.type_name(header.msg_type), header.pid
            )
            return None
        try:
            reply = pk.decode_message(raw, self.layout)
        except pk.PfkeyDecodeError as exc:
            return Exchange(Stage.BAD_REPLY, header.errno, detail=str(exc))
        return Exchange(Stage.REPLY, reply.errno, reply)


def _refuse_unsafe(message: pk.Message) -> None:
    if message.msg_type == pk.MsgType.DELETE and message.get(pk.ExtType.SA) is None:
        raise ProbeError(
            "refusing to send SADB_DELETE without an SA extension: the kernel "
            "would delete every SA between the two addresses"
        )


# Running the probe


@dataclass(frozen=True)
class StepResult:
    """One request of the probe and what the kernel made of it."""

    variant: str
    category: Category
    message: str
    spi: int | None
    stage: Stage
    errno: int | None = None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.stage in (Stage.REPLY, Stage.BAD_REPLY) and self.errno == 0

    @property
    def refused(self) -> bool:
        answered = self.stage in (Stage.REPLY, Stage.BAD_REPLY, Stage.SEND)
        return answered and self.errno not in (None, 0)

    @property
    def answered(self) -> bool:
        return self.accepted or self.refused


@dataclass(frozen=True)
class CleanupResult:
    """What happened to one SA the probe created (or may have created)."""

    spi: int
    outcome: str
    errno: int | None = None
    detail: str = ""


@dataclass
class SaLedger:
    """SPIs whose SA the kernel confirmed, and SPIs whose answer was lost."""

    created: dict[int, Category] = field(default_factory=dict)
    uncertain: dict[int, Category] = field(default_factory=dict)

    def before_send(self, spi: int, category: Category) -> None:
        if spi not in self.created:
            self.uncertain[spi] = category

    def settle(self, spi: int, category: Category, exchange: Exchange) -> None:
        if exchange.stage in (Stage.TIMEOUT, Stage.RECEIVE):
            return
        self.uncertain.pop(spi, None)
        if exchange.accepted and spi not in self.created:
            self.created[spi] = category


@dataclass(frozen=True)
class Verdict:
    """The candidate cause the answers point to, and why."""

    code: VerdictCode
    summary: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeReport:
    """Everything the probe found; ``to_dict`` is the JSON evidence."""

    host: dict[str, str]
    layout: str
    pid: int
    spi_base: int
    steps: tuple[StepResult, ...]
    cleanup: tuple[CleanupResult, ...]
    verdict: Verdict

    def to_dict(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "host": self.host,
            "layout": self.layout,
            "pid": self.pid,
            "spi_base": f"0x{self.spi_base:08x}",
            "addresses": {"src": str(PEER), "dst": str(LOCAL)},
            "reqid": PROBE_REQID,
            "steps": [_step_dict(step) for step in self.steps],
            "cleanup": [_cleanup_dict(item) for item in self.cleanup],
            "verdict": {
                "code": str(self.verdict.code),
                "summary": self.verdict.summary,
                "reasons": list(self.verdict.reasons),
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def render_text(self) -> str:
        return render_report(self)


def run_probe(
    transport: Transport,
    layout: pk.Layout,
    *,
    spi_base: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    variants: Sequence[Variant] | None = None,
    pid: int | None = None,
) -> ProbeReport:
    """Run GETSPI and every SADB_ADD variant, then delete what was created."""
    chosen = build_variants() if variants is None else tuple(variants)
    base = choose_spi_base() if spi_base is None else check_spi_base(spi_base)
    session = PfkeySession(transport, layout, timeout, pid)
    ledger = SaLedger()
    try:
        steps = _run_steps(session, ledger, chosen, base)
    finally:
        cleanup = clean_up(session, ledger)
    return ProbeReport(
        host=describe_host(),
        layout=layout.name,
        pid=session.pid,
        spi_base=base,
        steps=tuple(steps),
        cleanup=tuple(cleanup),
        verdict=decide_verdict(steps),
    )


def choose_spi_base() -> int:
    """A random SPI block above the range FreeBSD hands out itself."""
    return 0x7E000000 + secrets.randbelow(0x10000) * 0x100


def check_spi_base(spi_base: int) -> int:
    """Reject SPI bases the kernel refuses (<= 255) or that would overflow."""
    if not SPI_MIN <= spi_base <= 0xFFFFFFFF - SPI_SPAN:
        raise ValueError(
            f"SPI base 0x{spi_base:x} must lie in 0x{SPI_MIN:x}.."
            f"0x{0xFFFFFFFF - SPI_SPAN:x}"
        )
    return spi_base


def _run_steps(
    session: PfkeySession, ledger: SaLedger, variants: Sequence[Variant], base: int
) -> list[StepResult]:
    getspi = run_getspi(session, ledger, base)
    steps = [getspi]
    for index, variant in enumerate(variants, start=1):
        steps.append(run_variant(session, ledger, variant, base + index, getspi))
    return steps


def run_getspi(session: PfkeySession, ledger: SaLedger, spi: int) -> StepResult:
    """Reserve ``spi`` as strongSwan does before Quick Mode completes."""
    ledger.before_send(spi, Category.GETSPI)
    exchange = session.exchange(build_getspi(spi))
    ledger.settle(spi, Category.GETSPI, exchange)
    return _step("getspi", Category.GETSPI, "GETSPI", spi, exchange)


def run_variant(
    session: PfkeySession,
    ledger: SaLedger,
    variant: Variant,
    spi: int,
    getspi: StepResult,
) -> StepResult:
    """Send one SADB_ADD variant unless it cannot apply here."""
    skip = _skip_reason(variant, session.layout, getspi)
    if skip:
        return StepResult(
            variant.name, variant.category, "ADD", None, Stage.SKIPPED, detail=skip
        )
    if variant.reuse_getspi_spi:
        spi = getspi.spi
    ledger.before_send(spi, variant.category)
    exchange = session.exchange(build_add(variant, spi, session.layout))
    ledger.settle(spi, variant.category, exchange)
    return _step(variant.name, variant.category, "ADD", spi, exchange)


def _skip_reason(variant: Variant, layout: pk.Layout, getspi: StepResult) -> str:
    if variant.replay_window is not None and not layout.freebsd_extensions:
        return f"SADB_X_EXT_SA_REPLAY does not exist on {layout.name}"
    if variant.reuse_getspi_spi and not getspi.accepted:
        return "needs the SPI reserved by GETSPI, which failed"
    return ""


def _step(
    name: str, category: Category, message: str, spi: int, exchange: Exchange
) -> StepResult:
    result = StepResult(
        name, category, message, spi, exchange.stage, exchange.errno, exchange.detail
    )
    logger.info(
        "%s %s: %s %s", message, name, exchange.stage, errno_label(exchange.errno)
    )
    return result


def clean_up(session: PfkeySession, ledger: SaLedger) -> list[CleanupResult]:
    """Delete every SA the probe created; check lost answers before deleting."""
    results = [delete_sa(session, spi) for spi in reversed(list(ledger.created))]
    for spi, category in list(ledger.uncertain.items()):
        results.append(_delete_if_ours(session, spi, category))
    return results


def delete_sa(session: PfkeySession, spi: int) -> CleanupResult:
    """SADB_DELETE one SA the probe owns."""
    exchange = session.exchange(build_delete(spi))
    if exchange.accepted:
        return CleanupResult(spi, "deleted", 0)
    logger.warning("could not delete SA 0x%08x: %s", spi, exchange.detail)
    return CleanupResult(spi, "delete-failed", exchange.errno, _leftover_hint(spi))


def _delete_if_ours(
    session: PfkeySession, spi: int, category: Category
) -> CleanupResult:
    exchange = session.exchange(build_get(spi))
    if exchange.reply is not None and exchange.accepted:
        if is_own_sa(exchange.reply, category):
            return delete_sa(session, spi)
        return CleanupResult(spi, "not-ours", 0, "an SA with this SPI is not ours")
    if exchange.stage is Stage.REPLY:
        return CleanupResult(spi, "absent", exchange.errno)
    return CleanupResult(spi, "unknown", exchange.errno, _leftover_hint(spi))


def is_own_sa(reply: pk.Message, category: Category) -> bool:
    """True if a SADB_GET answer describes an SA this probe created."""
    src, dst = reply.get(pk.ExtType.ADDRESS_SRC), reply.get(pk.ExtType.ADDRESS_DST)
    if not (isinstance(src, pk.AddressExt) and isinstance(dst, pk.AddressExt)):
        return False
    if (src.address, dst.address) != (PEER, LOCAL):
        return False
    if category is Category.GETSPI:
        sa = reply.get(pk.ExtType.SA)
        return isinstance(sa, pk.SaExt) and sa.state == pk.SaState.LARVAL
    sa2 = reply.get(pk.ExtType.X_SA2)
    return isinstance(sa2, pk.Sa2Ext) and sa2.reqid == PROBE_REQID


def _leftover_hint(spi: int) -> str:
    command = f"delete {PEER} {LOCAL} esp 0x{spi:08x};"
    return f"check with: setkey -D; remove with: setkey -c <<< '{command}'"


def describe_host() -> dict[str, str]:
    """System, release and machine; no host name, evidence may be shared."""
    uname = platform.uname()
    return {
        "system": uname.system,
        "release": uname.release,
        "machine": uname.machine,
        "python": platform.python_version(),
    }


# Verdict


def decide_verdict(steps: Sequence[StepResult]) -> Verdict:
    """Map the kernel's answers to a candidate cause; pure, no I/O."""
    baseline = _first(steps, Category.BASELINE)
    control = _first(steps, Category.CONTROL)
    if baseline is None or control is None:
        return _verdict(VerdictCode.INCONCLUSIVE, "baseline or control missing")
    if not (baseline.answered and control.answered):
        return _inconclusive(baseline, control)
    if control.accepted:
        return _unreliable(control, steps)
    adds = [s for s in steps if s.message == "ADD" and s.category not in CONTROLS]
    if baseline.refused:
        return _baseline_refused(steps, adds)
    return _baseline_accepted(steps, adds)


def verdict_from_errnos(table: dict[str, int | None]) -> Verdict:
    """Verdict for a table ``variant name -> errno`` (None: no answer).

    The key ``"getspi"`` stands for the SADB_GETSPI step; names not listed
    are treated as not sent.
    """
    categories = {variant.name: variant.category for variant in build_variants()}
    categories["getspi"] = Category.GETSPI
    steps = []
    for name, number in table.items():
        if name not in categories:
            raise ValueError(f"unknown variant {name!r}")
        stage = Stage.TIMEOUT if number is None else Stage.REPLY
        message = "GETSPI" if name == "getspi" else "ADD"
        steps.append(StepResult(name, categories[name], message, None, stage, number))
    return decide_verdict(steps)


_SUMMARY = {
    VerdictCode.TRANSFORM_MISSING: (
        "every SADB_ADD fails with EINVAL, the AES-CBC/HMAC-SHA1 baseline "
        "included: the kernel has no ESP transform registered; load the ipsec "
        "module on the host (kldload ipsec; sysrc kld_list+=ipsec)"
    ),
    VerdictCode.ALGORITHM: (
        "the kernel accepts strongSwan's SA shapes and refuses only algorithms "
        "FreeBSD 13 and later do not implement: if the negotiated phase-2 "
        "proposal uses one of them, that is the cause (restrict esp= to e.g. "
        "aes128-sha1, aes256-sha256 or aes256gcm16)"
    ),
    VerdictCode.NAT_T: (
        "only the NAT-T variants fail: the kernel refuses strongSwan's NAT-T "
        "extensions (key_setnatt)"
    ),
    VerdictCode.REPLAY: (
        "only the replay-window variants fail: the kernel refuses strongSwan's "
        "replay settings (key_setsaval)"
    ),
    VerdictCode.ACCEPTS_ALL: (
        "the kernel accepts every strongSwan shape tried here; the SADB_ADD "
        "failure must come from something these shapes do not cover"
    ),
    VerdictCode.UNRELIABLE: (
        "the control (NAT-T with port 0) was accepted, so the probe's messages "
        "do not reach the kernel's checks; the other results are unreliable"
    ),
    VerdictCode.INCONCLUSIVE: (
        "the kernel did not answer the baseline or the control; no conclusion"
    ),
    VerdictCode.MIXED: (
        "the answers match none of the candidate causes; read the table"
    ),
}


def _first(steps: Iterable[StepResult], category: Category) -> StepResult | None:
    return next((step for step in steps if step.category is category), None)


def _verdict(code: VerdictCode, *reasons: str) -> Verdict:
    return Verdict(code, _SUMMARY[code], reasons)


def _inconclusive(baseline: StepResult, control: StepResult) -> Verdict:
    silent = [s for s in (baseline, control) if not s.answered]
    reasons = [f"{s.variant}: {s.stage} {s.detail}".rstrip() for s in silent]
    return _verdict(VerdictCode.INCONCLUSIVE, *reasons)


def _unreliable(control: StepResult, steps: Sequence[StepResult]) -> Verdict:
    return _verdict(
        VerdictCode.UNRELIABLE,
        f"{control.variant} was accepted although key_setnatt must refuse a "
        "zero NAT-T port",
        *_side_notes(steps),
    )


def _baseline_refused(
    steps: Sequence[StepResult], adds: Sequence[StepResult]
) -> Verdict:
    answered = [s for s in adds if s.answered]
    accepted = [s.variant for s in answered if s.accepted]
    if accepted:
        baseline = _errno_of(_first(steps, Category.BASELINE))
        reason = f"baseline refused ({baseline}) but accepted: {', '.join(accepted)}"
        return _verdict(VerdictCode.MIXED, reason, *_side_notes(steps))
    # Only an EINVAL answer fits a missing transform; send() errors do not.
    odd = [s for s in answered if (s.stage, s.errno) != (Stage.REPLY, EINVAL)]
    if odd:
        listed = ", ".join(f"{s.variant} {_errno_of(s)} ({s.stage})" for s in odd)
        reason = f"every SADB_ADD failed, but not all with an EINVAL answer: {listed}"
        return _verdict(VerdictCode.MIXED, reason, *_side_notes(steps))
    return _verdict(
        VerdictCode.TRANSFORM_MISSING,
        f"all {len(answered)} SADB_ADD variants were refused with EINVAL, "
        "including the baseline and AES-GCM-16, which FreeBSD 13+ supports",
        "SA initialisation (key_setsaval -> xform_init) fails for every "
        "algorithm; xform_init returns EINVAL when no ESP transform is "
        "registered, i.e. ipsec.ko is not loaded on the host",
        *_getspi_notes(steps),
        *_side_notes(steps),
    )


def _baseline_accepted(
    steps: Sequence[StepResult], adds: Sequence[StepResult]
) -> Verdict:
    nat_t = _refused(steps, Category.NAT_T)
    replay = _refused(steps, Category.REPLAY)
    both = _refused(steps, Category.NAT_T_REPLAY)
    notes = (*_algorithm_notes(adds), *_untested_notes(steps), *_side_notes(steps))
    if nat_t and not replay:
        return _verdict(VerdictCode.NAT_T, "baseline accepted, nat-t refused", *notes)
    if replay and not nat_t:
        return _verdict(VerdictCode.REPLAY, "baseline accepted, replay refused", *notes)
    if nat_t or both:
        reason = "NAT-T and replay variants fail in a combination no cause explains"
        return _verdict(VerdictCode.MIXED, reason, *notes)
    if any(s.category is Category.REMOVED_ALGORITHM and s.refused for s in adds):
        reason = "baseline, NAT-T and replay shapes accepted"
        return _verdict(VerdictCode.ALGORITHM, reason, *notes)
    if _refused(steps, Category.AEAD):
        reason = "only AES-GCM-16 refused, which FreeBSD 13+ implements"
        return _verdict(VerdictCode.MIXED, reason, *notes)
    reason = "baseline, NAT-T, replay and every algorithm variant accepted"
    return _verdict(VerdictCode.ACCEPTS_ALL, reason, *notes)


def _refused(steps: Sequence[StepResult], category: Category) -> bool:
    step = _first(steps, category)
    return step is not None and step.refused


def _algorithm_notes(adds: Sequence[StepResult]) -> tuple[str, ...]:
    refused = [
        s for s in adds if s.category is Category.REMOVED_ALGORITHM and s.refused
    ]
    notes = []
    if refused:
        listed = ", ".join(f"{s.variant} ({_errno_of(s)})" for s in refused)
        notes.append(f"refused algorithms: {listed}")
    aead = _first(adds, Category.AEAD)
    if aead is not None and aead.refused:
        notes.append(
            f"aes-gcm-16 refused ({_errno_of(aead)}) although FreeBSD 13+ "
            "implements it: check the crypto drivers (crypto_newsession)"
        )
    return tuple(notes)


def _untested_notes(steps: Sequence[StepResult]) -> tuple[str, ...]:
    return tuple(
        f"{s.variant} not tested: {s.detail or s.stage}"
        for s in steps
        if s.message == "ADD" and not s.answered
    )


def _getspi_notes(steps: Sequence[StepResult]) -> tuple[str, ...]:
    getspi = _first(steps, Category.GETSPI)
    if getspi is None or not getspi.answered:
        return ()
    if getspi.accepted:
        return (
            "GETSPI succeeded, so the PF_KEY socket and the SAD work; "
            "only SA initialisation fails",
        )
    return (f"GETSPI failed too ({_errno_of(getspi)}): PF_KEY itself is not working",)


def _side_notes(steps: Sequence[StepResult]) -> tuple[str, ...]:
    notes = []
    control = _first(steps, Category.CONTROL)
    baseline = _first(steps, Category.BASELINE)
    if control is not None and control.refused and baseline is not None:
        if baseline.accepted:
            notes.append("control refused as it must: the probe reaches key_setnatt")
        else:
            notes.append(
                "control refused, but as the baseline fails too it only shows "
                "the kernel answers; it cannot show that key_setnatt was reached"
            )
    duplicate = _first(steps, Category.CONTROL_DUPLICATE)
    if duplicate is not None and duplicate.answered:
        if duplicate.errno == errno_codes.EEXIST:
            notes.append("duplicate-SPI control answered EEXIST: key_add is reached")
        else:
            notes.append(
                f"duplicate-SPI control answered {_errno_of(duplicate)} instead "
                "of EEXIST"
            )
    return tuple(notes)


def _errno_of(step: StepResult | None) -> str:
    return "no step" if step is None else errno_label(step.errno)


# Presentation


def errno_label(number: int | None) -> str:
    """``EINVAL`` style name of an errno; ``0`` for success, ``-`` for none."""
    if number is None:
        return "-"
    if number == 0:
        return "0"
    return errno_codes.errorcode.get(number, f"errno {number}")


def explain_step(step: StepResult) -> str:
    """One-line meaning of a step's outcome."""
    if step.stage is Stage.SKIPPED:
        return f"not sent: {step.detail}"
    if step.stage is Stage.TIMEOUT:
        return "no answer from the kernel before the timeout"
    if step.stage is Stage.RECEIVE:
        return f"reading the answer failed: {step.detail}"
    prefix = "answer undecodable; " if step.stage is Stage.BAD_REPLY else ""
    if step.errno == 0:
        return prefix + _ACCEPTED[step.message]
    if step.stage is Stage.SEND:
        return (
            "send() refused the message: key_parse/key_align rejected its format "
            "before key_add ran (strongSwan would log 'error sending to PF_KEY')"
        )
    return prefix + _refusal(step)


_ACCEPTED = {
    "GETSPI": "SPI reserved (larval SA, deleted afterwards)",
    "ADD": "accepted: SA installed (deleted afterwards)",
}


def _refusal(step: StepResult) -> str:
    if step.errno == errno_codes.EINVAL:
        return _EINVAL_MEANING.get(
            step.category,
            "refused by key_add/key_setsaval; without an ESP transform "
            "(ipsec.ko) xform_init fails here for every algorithm",
        )
    if step.errno == errno_codes.EEXIST:
        if step.category is Category.CONTROL_DUPLICATE:
            return "refused as expected: the GETSPI SA holds this SPI, key_add ran"
        return "SPI already in use by an SA that is not ours (left alone)"
    if step.errno in _OTHER_MEANING:
        return _OTHER_MEANING[step.errno]
    return os.strerror(step.errno or 0)


_EINVAL_MEANING = {
    Category.CONTROL: (
        "refused as it must be: key_setnatt rejects port 0 (or an earlier "
        "check failed first)"
    ),
    Category.REMOVED_ALGORITHM: (
        "refused: algorithm not in the kernel's tables (esp_init/ah_init0), "
        "or no ESP transform loaded"
    ),
    Category.GETSPI: "SPI reservation refused (key_getspi)",
}

_OTHER_MEANING = {
    errno_codes.EOPNOTSUPP: "no crypto driver for this algorithm (crypto_newsession)",
    errno_codes.ENOBUFS: "the kernel ran out of memory or socket buffer space",
    errno_codes.ESRCH: "no such SA",
    errno_codes.EAFNOSUPPORT: "address family not supported by key_parse",
}


def render_report(report: ProbeReport) -> str:
    """The human-readable table, cleanup summary and verdict."""
    host = report.host
    lines = [
        f"PF_KEY probe on {host.get('system', '?')} {host.get('release', '?')}"
        f" (layout {report.layout}, pid {report.pid}, SPIs from "
        f"0x{report.spi_base:08x}, {PEER} -> {LOCAL}, reqid {PROBE_REQID})",
        "",
        *_table(report.steps),
        "",
        _cleanup_line(report.cleanup),
        "",
        f"verdict: {report.verdict.code}",
        f"  {report.verdict.summary}",
        *(f"  - {reason}" for reason in report.verdict.reasons),
    ]
    return "\n".join(lines)


def _table(steps: Sequence[StepResult]) -> list[str]:
    rows = [("variant", "message", "errno", "meaning")]
    rows += [(s.variant, s.message, _errno_cell(s), explain_step(s)) for s in steps]
    widths = [max(len(row[col]) for row in rows) for col in range(3)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths))
        + "  "
        + row[3]
        for row in rows
    ]


def _errno_cell(step: StepResult) -> str:
    if step.stage in (Stage.SKIPPED, Stage.TIMEOUT, Stage.RECEIVE):
        return str(step.stage)
    return errno_label(step.errno)


def _cleanup_line(cleanup: Sequence[CleanupResult]) -> str:
    if not cleanup:
        return "cleanup: the probe created no SA"
    parts = [f"0x{item.spi:08x} {item.outcome}" for item in cleanup]
    line = "cleanup: " + ", ".join(parts)
    hints = [
        item.detail for item in cleanup if item.outcome in ("delete-failed", "unknown")
    ]
    return line + "".join(f"\n  {hint}" for hint in hints)


def _step_dict(step: StepResult) -> dict[str, object]:
    return {
        "variant": step.variant,
        "category": str(step.category),
        "message": step.message,
        "spi": None if step.spi is None else f"0x{step.spi:08x}",
        "stage": str(step.stage),
        "errno": step.errno,
        "errno_name": errno_label(step.errno),
        "meaning": explain_step(step),
        "detail": step.detail,
    }


def _cleanup_dict(item: CleanupResult) -> dict[str, object]:
    return {
        "spi": f"0x{item.spi:08x}",
        "outcome": item.outcome,
        "errno": item.errno,
        "errno_name": errno_label(item.errno),
        "detail": item.detail,
    }


# Command line


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would print a usage block; we promise a single line.
        raise _UsageError(message)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"must be in (0, 60] seconds: {text}")
    return value


def _spi_base(text: str) -> int:
    try:
        return check_spi_base(int(text, 0))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = _Parser(
        prog=PROG,
        description=(
            "Send strongSwan-shaped SADB_GETSPI/SADB_ADD requests over PF_KEY, "
            "record the kernel's errno for each, delete what was created and "
            "name the likely cause of 'unable to add SAD entry'. Exit status: "
            "0 ran, 2 bad arguments, 3 no PF_KEY, 4 not privileged, 1 other."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON evidence")
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for each kernel answer (default %(default)s)",
    )
    parser.add_argument(
        "--spi-base", type=_spi_base, help="first SPI to use (default: random)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log")
    return parser


def detect_layout(platform_name: str | None = None) -> pk.Layout:
    """Layout of the running system (or of ``platform_name``).

    There is deliberately no override: PF_KEY's address family number differs
    between systems, and 27 is not PF_KEY on Linux.
    """
    name = sys.platform if platform_name is None else platform_name
    try:
        return pk.layout_for_platform(name)
    except pk.PfkeyError as exc:
        raise PfkeyUnavailableError(
            f"{exc}; the probe supports FreeBSD and Linux"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(EXIT_USAGE, f"bad arguments: {exc} (see --help)")
    _configure_logging(args.verbose)
    try:
        layout = detect_layout()
        transport = SocketTransport.open(layout)
    except ProbeError as exc:
        return _fail(exc.exit_code, str(exc))
    try:
        report = run_probe(
            transport, layout, spi_base=args.spi_base, timeout=args.timeout
        )
    except ProbeError as exc:
        return _fail(exc.exit_code, str(exc))
    finally:
        transport.close()
    print(report.to_json() if args.json else report.render_text())
    return EXIT_OK


def _fail(code: int, message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format=f"{PROG}: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
