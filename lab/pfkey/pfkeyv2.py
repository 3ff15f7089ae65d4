"""PF_KEY v2 message codec: RFC 2367 plus the KAME/FreeBSD extensions.

Standard library only, so that this file and ``probe.py`` can be copied into a
FreeBSD jail and run there with a bare ``python3``.

Every number and structure layout in this module was checked against:

* FreeBSD ``sys/net/pfkeyv2.h``: the 15-era copy in the ``kenrap/freebsd-src``
  mirror (extension types up to 31, ``sadb_x_if_hw_offl``) and the 14-era
  copies in ``fel1x-developer/freebsd-src`` and ``sobomax/freebsd14_vendor``;
* FreeBSD ``sys/netipsec/key.c`` (15-era, ``ihoro/freebsd-src``): the
  ``minsize``/``maxsize`` tables, ``key_parse``, ``key_align`` and
  ``key_validate_ext`` for lengths; ``key_getspi``, ``key_add``,
  ``key_setsaval``, ``key_setnatt``, ``key_delete`` and the
  ``key_setsadb*`` reply builders for byte order and field use;
* FreeBSD ``sys/netipsec/ipsec.h`` (``IPSEC_MODE_*``),
  ``sys/netinet/udp.h`` (``UDP_ENCAP_ESPINUDP``) and ``sys/sys/socket.h``
  (``pseudo_AF_KEY``);
* Linux ``include/uapi/linux/pfkeyv2.h`` (``torvalds/linux``) for the
  extension numbers Linux assigns differently;
* RFC 2367 for the base header and the standard extensions.

Byte order, as the kernel uses it: every integer is in host order except the
SPI in ``sadb_sa``, the NAT-T ports and the contents of socket addresses,
which travel in network order. All lengths in headers count 64-bit words.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

logger = logging.getLogger(__name__)

PF_KEY_V2 = 2
UNIT = 8
HEADER_SIZE = 16
MAX_UNITS = 0xFFFF
AF_KEY_FREEBSD = 27
AF_KEY_LINUX = 15
UDP_ENCAP_ESPINUDP = 2
SAFLAGS_ESN = 0x400
KEY_FLAGS_MAX = 0x0FFF
REPLAY_EXT_MAX = 0xFFFFFFFF - 32
NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"

_HEADER = "BBBBHHII"
_SOCKADDR_IN_SIZE = 16
_SOCKADDR_IN6_SIZE = 28


class MsgType(enum.IntEnum):
    """``sadb_msg_type`` values (``SADB_*``)."""

    RESERVED = 0
    GETSPI = 1
    UPDATE = 2
    ADD = 3
    DELETE = 4
    GET = 5
    ACQUIRE = 6
    REGISTER = 7
    EXPIRE = 8
    FLUSH = 9
    DUMP = 10
    X_PROMISC = 11
    X_PCHANGE = 12
    X_SPDUPDATE = 13
    X_SPDADD = 14
    X_SPDDELETE = 15
    X_SPDGET = 16
    X_SPDACQUIRE = 17
    X_SPDDUMP = 18
    X_SPDFLUSH = 19
    X_SPDSETIDX = 20
    X_SPDEXPIRE = 21
    X_SPDDELETE2 = 22


class ExtType(enum.IntEnum):
    """Extension types as FreeBSD numbers them (``SADB_EXT_*``)."""

    RESERVED = 0
    SA = 1
    LIFETIME_CURRENT = 2
    LIFETIME_HARD = 3
    LIFETIME_SOFT = 4
    ADDRESS_SRC = 5
    ADDRESS_DST = 6
    ADDRESS_PROXY = 7
    KEY_AUTH = 8
    KEY_ENCRYPT = 9
    IDENTITY_SRC = 10
    IDENTITY_DST = 11
    SENSITIVITY = 12
    PROPOSAL = 13
    SUPPORTED_AUTH = 14
    SUPPORTED_ENCRYPT = 15
    SPIRANGE = 16
    X_KMPRIVATE = 17
    X_POLICY = 18
    X_SA2 = 19
    X_NAT_T_TYPE = 20
    X_NAT_T_SPORT = 21
    X_NAT_T_DPORT = 22
    X_NAT_T_OAI = 23
    X_NAT_T_OAR = 24
    X_NAT_T_FRAG = 25
    X_SA_REPLAY = 26
    X_NEW_ADDRESS_SRC = 27
    X_NEW_ADDRESS_DST = 28
    X_LFT_CUR_SW_OFFL = 29
    X_LFT_CUR_HW_OFFL = 30
    X_IF_HW_OFFL = 31


class SaType(enum.IntEnum):
    """``sadb_msg_satype`` values (``SADB_SATYPE_*``)."""

    UNSPEC = 0
    AH = 2
    ESP = 3
    RSVP = 5
    OSPFV2 = 6
    RIPV2 = 7
    MIP = 8
    X_IPCOMP = 9
    X_TCPSIGNATURE = 11


class SaState(enum.IntEnum):
    """``sadb_sa_state`` values (``SADB_SASTATE_*``)."""

    LARVAL = 0
    MATURE = 1
    DYING = 2
    DEAD = 3


class AuthAlg(enum.IntEnum):
    """``sadb_sa_auth`` values (``SADB_AALG_*`` / ``SADB_X_AALG_*``)."""

    NONE = 0
    MD5HMAC = 2
    SHA1HMAC = 3
    X_SHA2_256 = 5
    X_SHA2_384 = 6
    X_SHA2_512 = 7
    X_RIPEMD160HMAC = 8
    X_AES_XCBC_MAC = 9
    X_AES128GMAC = 11
    X_AES192GMAC = 12
    X_AES256GMAC = 13
    X_CHACHA20POLY1305 = 14
    X_MD5 = 249
    X_SHA = 250
    X_NULL = 251
    X_TCP_MD5 = 252


class EncAlg(enum.IntEnum):
    """``sadb_sa_encrypt`` values; the header spells 3DES ``SADB_EALG_3DESCBC``."""

    NONE = 0
    DESCBC = 2
    DES3CBC = 3
    X_CAST128CBC = 6
    X_BLOWFISHCBC = 7
    NULL = 11
    X_AESCBC = 12
    X_AESCTR = 13
    X_CHACHA20POLY1305 = 15
    X_AESGCM8 = 18
    X_AESGCM12 = 19
    X_AESGCM16 = 20
    X_CAMELLIACBC = 22
    X_AESGMAC = 23


class IpsecMode(enum.IntEnum):
    """``sadb_x_sa2_mode`` values (``IPSEC_MODE_*`` in netipsec/ipsec.h)."""

    ANY = 0
    TRANSPORT = 1
    TUNNEL = 2
    TCPMD5 = 3


LIFETIME_TYPES = frozenset(
    {ExtType.LIFETIME_CURRENT, ExtType.LIFETIME_HARD, ExtType.LIFETIME_SOFT}
)
ADDRESS_TYPES = frozenset(
    {
        ExtType.ADDRESS_SRC,
        ExtType.ADDRESS_DST,
        ExtType.ADDRESS_PROXY,
        ExtType.X_NAT_T_OAI,
        ExtType.X_NAT_T_OAR,
        ExtType.X_NEW_ADDRESS_SRC,
        ExtType.X_NEW_ADDRESS_DST,
    }
)
KEY_TYPES = frozenset({ExtType.KEY_AUTH, ExtType.KEY_ENCRYPT})
NAT_T_PORT_TYPES = frozenset({ExtType.X_NAT_T_SPORT, ExtType.X_NAT_T_DPORT})
# Linux reuses 24..26 for SEC_CTX, KMADDRESS and FILTER and stops at 26.
FREEBSD_ONLY_TYPES = frozenset(range(ExtType.X_NAT_T_OAR, ExtType.X_IF_HW_OFFL + 1))


class PfkeyError(Exception):
    """Base class for errors raised by this codec."""


class PfkeyDecodeError(PfkeyError):
    """Raised for any byte string that is not a well-formed PF_KEY message."""

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(f"malformed PF_KEY message at offset {offset}: {problem}")
        self.offset = offset
        self.problem = problem


class PfkeyEncodeError(PfkeyError):
    """Raised when a message cannot be expressed in the chosen layout."""


@dataclass(frozen=True)
class Layout:
    """How one kernel lays PF_KEY messages out.

    ``byteorder`` is a :mod:`struct` prefix (``"<"`` or ``">"``). BSD socket
    addresses start with ``sa_len``; Linux ones start with a 16-bit family.
    """

    name: str
    byteorder: str
    sockaddr_has_len: bool
    af_key: int
    af_inet: int
    af_inet6: int
    freebsd_extensions: bool

    def pack(self, spec: str, *values: int) -> bytes:
        try:
            return struct.pack(self.byteorder + spec, *values)
        except struct.error as exc:
            raise PfkeyEncodeError(f"value out of range for {spec!r}: {exc}") from None

    def unpack(self, spec: str, data: bytes, offset: int = 0) -> tuple[int, ...]:
        return struct.unpack_from(self.byteorder + spec, data, offset)


def freebsd_layout(byteorder: str = NATIVE_ORDER) -> Layout:
    """FreeBSD: ``pseudo_AF_KEY`` 27, ``AF_INET6`` 28, ``sa_len`` present."""
    return Layout(
        "freebsd", _checked_order(byteorder), True, AF_KEY_FREEBSD, 2, 28, True
    )


def linux_layout(byteorder: str = NATIVE_ORDER) -> Layout:
    """Linux: ``AF_KEY`` 15, ``AF_INET6`` 10, no ``sa_len``."""
    return Layout("linux", _checked_order(byteorder), False, AF_KEY_LINUX, 2, 10, False)


def layout_for_platform(platform: str = sys.platform) -> Layout:
    """Pick the layout of the running (or named) platform."""
    if platform.startswith("freebsd"):
        return freebsd_layout()
    if platform.startswith("linux"):
        return linux_layout()
    raise PfkeyError(f"no PF_KEY layout is known for platform {platform!r}")


def _checked_order(byteorder: str) -> str:
    if byteorder not in ("<", ">"):
        raise ValueError(f"byteorder must be '<' or '>', not {byteorder!r}")
    return byteorder


@dataclass(frozen=True)
class SaExt:
    """``sadb_sa``; ``replay`` is the window in bytes on FreeBSD."""

    exttype: ClassVar[int] = ExtType.SA
    spi: int
    replay: int = 0
    state: int = SaState.MATURE
    auth: int = AuthAlg.NONE
    encrypt: int = EncAlg.NONE
    flags: int = 0


@dataclass(frozen=True)
class LifetimeExt:
    """``sadb_lifetime`` (current, hard or soft)."""

    exttype: int
    allocations: int = 0
    nbytes: int = 0
    addtime: int = 0
    usetime: int = 0


@dataclass(frozen=True)
class AddressExt:
    """``sadb_address`` followed by a ``sockaddr_in`` or ``sockaddr_in6``."""

    exttype: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    prefixlen: int = 0
    proto: int = 0
    port: int = 0
    flowinfo: int = 0
    scope_id: int = 0


@dataclass(frozen=True)
class KeyExt:
    """``sadb_key``; the key bytes are zero-padded to 64 bits on the wire."""

    exttype: int
    key: bytes
    bits: int | None = None

    def __post_init__(self) -> None:
        # Default to the whole key, as strongSwan does; frozen, hence setattr.
        if self.bits is None:
            object.__setattr__(self, "bits", len(self.key) * 8)


@dataclass(frozen=True)
class Sa2Ext:
    """``sadb_x_sa2``: mode and reqid of the SA."""

    exttype: ClassVar[int] = ExtType.X_SA2
    mode: int = IpsecMode.TUNNEL
    reqid: int = 0
    sequence: int = 0


@dataclass(frozen=True)
class NatTTypeExt:
    """``sadb_x_nat_t_type``."""

    exttype: ClassVar[int] = ExtType.X_NAT_T_TYPE
    encap_type: int = UDP_ENCAP_ESPINUDP


@dataclass(frozen=True)
class NatTPortExt:
    """``sadb_x_nat_t_port`` (source or destination)."""

    exttype: int
    port: int


@dataclass(frozen=True)
class SaReplayExt:
    """``sadb_x_sa_replay``: replay window in packets (FreeBSD only)."""

    exttype: ClassVar[int] = ExtType.X_SA_REPLAY
    replay: int


@dataclass(frozen=True)
class SpiRangeExt:
    """``sadb_spirange``; bounds are host-order numbers."""

    exttype: ClassVar[int] = ExtType.SPIRANGE
    min_spi: int
    max_spi: int


@dataclass(frozen=True)
class UnknownExt:
    """Any extension this codec does not model; ``payload`` follows its header."""

    exttype: int
    payload: bytes


Extension = (
    SaExt
    | LifetimeExt
    | AddressExt
    | KeyExt
    | Sa2Ext
    | NatTTypeExt
    | NatTPortExt
    | SaReplayExt
    | SpiRangeExt
    | UnknownExt
)


Decoder = Callable[[int, bytes, int, "Layout"], Extension]


@dataclass(frozen=True)
class Message:
    """One PF_KEY message: the ``sadb_msg`` header and its extensions."""

    msg_type: int
    satype: int
    seq: int = 0
    pid: int = 0
    errno: int = 0
    extensions: tuple[Extension, ...] = ()
    version: int = PF_KEY_V2
    reserved: int = 0

    def get(self, exttype: int) -> Extension | None:
        """Return the extension of the given type, or None."""
        for ext in self.extensions:
            if ext.exttype == exttype:
                return ext
        return None


def type_name(msg_type: int) -> str:
    """``SADB_ADD`` style name of a message type."""
    try:
        return "SADB_" + MsgType(msg_type).name
    except ValueError:
        return f"SADB_type_{msg_type}"


def ext_name(exttype: int) -> str:
    """``SADB_EXT_SA`` style name of a FreeBSD extension type."""
    try:
        name = ExtType(exttype).name
    except ValueError:
        return f"extension type {exttype}"
    prefix = "SADB_X_EXT_" if name.startswith("X_") else "SADB_EXT_"
    return prefix + name.removeprefix("X_")


# Encoding


def encode_message(message: Message, layout: Layout) -> bytes:
    """Serialise a message, filling in ``sadb_msg_len``."""
    body = b"".join(encode_extension(ext, layout) for ext in message.extensions)
    units = (HEADER_SIZE + len(body)) // UNIT
    if units > MAX_UNITS:
        raise PfkeyEncodeError(f"message of {units} units exceeds {MAX_UNITS}")
    header = layout.pack(
        _HEADER,
        message.version,
        message.msg_type,
        message.errno,
        message.satype,
        units,
        message.reserved,
        message.seq,
        message.pid,
    )
    return header + body


def encode_extension(ext: Extension, layout: Layout) -> bytes:
    """Serialise one extension including its 4-byte header and padding."""
    if _foreign_to(layout, ext):
        raise PfkeyEncodeError(
            f"{ext_name(ext.exttype)} has no {layout.name} counterpart "
            f"(number {ext.exttype} means something else there)"
        )
    encoder = _ENCODERS.get(type(ext))
    if encoder is None:
        raise PfkeyEncodeError(f"not a PF_KEY extension: {ext!r}")
    payload = encoder(ext, layout)
    padded = payload + bytes(-(4 + len(payload)) % UNIT)
    return layout.pack("HH", (4 + len(padded)) // UNIT, ext.exttype) + padded


def _foreign_to(layout: Layout, ext: Extension) -> bool:
    # Raw extensions are passed through: they came from this layout's kernel.
    return (
        not layout.freebsd_extensions
        and ext.exttype in FREEBSD_ONLY_TYPES
        and not isinstance(ext, UnknownExt)
    )


def _encode_sa(ext: SaExt, layout: Layout) -> bytes:
    return (
        _be(ext.spi, 4, "SPI")
        + layout.pack("BBBB", ext.replay, ext.state, ext.auth, ext.encrypt)
        + layout.pack("I", ext.flags)
    )


def _encode_lifetime(ext: LifetimeExt, layout: Layout) -> bytes:
    _require_type(ext.exttype, LIFETIME_TYPES, "lifetime")
    return layout.pack("IQQQ", ext.allocations, ext.nbytes, ext.addtime, ext.usetime)


def _encode_address(ext: AddressExt, layout: Layout) -> bytes:
    _require_type(ext.exttype, ADDRESS_TYPES, "address")
    head = layout.pack("BBH", ext.proto, ext.prefixlen, 0)
    return head + encode_sockaddr(ext, layout)


def encode_sockaddr(ext: AddressExt, layout: Layout) -> bytes:
    """``sockaddr_in``/``sockaddr_in6`` for the address in ``ext``."""
    port = _be(ext.port, 2, "port")
    if ext.address.version == 4:
        family, size = layout.af_inet, _SOCKADDR_IN_SIZE
        rest = port + ext.address.packed + bytes(8)
    else:
        family, size = layout.af_inet6, _SOCKADDR_IN6_SIZE
        flow = _be(ext.flowinfo, 4, "flowinfo")
        rest = port + flow + ext.address.packed + layout.pack("I", ext.scope_id)
    if layout.sockaddr_has_len:
        return bytes((size, family)) + rest
    return layout.pack("H", family) + rest


def _encode_key(ext: KeyExt, layout: Layout) -> bytes:
    _require_type(ext.exttype, KEY_TYPES, "key")
    if ext.bits > len(ext.key) * 8:
        raise PfkeyEncodeError(f"{ext.bits} key bits but {len(ext.key)} bytes")
    return layout.pack("HH", ext.bits, 0) + bytes(ext.key)


def _encode_sa2(ext: Sa2Ext, layout: Layout) -> bytes:
    return layout.pack("BBHII", ext.mode, 0, 0, ext.sequence, ext.reqid)


def _encode_nat_t_type(ext: NatTTypeExt, layout: Layout) -> bytes:
    return layout.pack("B3x", ext.encap_type)


def _encode_nat_t_port(ext: NatTPortExt, layout: Layout) -> bytes:
    _require_type(ext.exttype, NAT_T_PORT_TYPES, "NAT-T port")
    return _be(ext.port, 2, "NAT-T port") + layout.pack("H", 0)


def _encode_sa_replay(ext: SaReplayExt, layout: Layout) -> bytes:
    return layout.pack("I", ext.replay)


def _encode_spirange(ext: SpiRangeExt, layout: Layout) -> bytes:
    return layout.pack("III", ext.min_spi, ext.max_spi, 0)


def _encode_unknown(ext: UnknownExt, layout: Layout) -> bytes:
    return bytes(ext.payload)


_ENCODERS = {
    SaExt: _encode_sa,
    LifetimeExt: _encode_lifetime,
    AddressExt: _encode_address,
    KeyExt: _encode_key,
    Sa2Ext: _encode_sa2,
    NatTTypeExt: _encode_nat_t_type,
    NatTPortExt: _encode_nat_t_port,
    SaReplayExt: _encode_sa_replay,
    SpiRangeExt: _encode_spirange,
    UnknownExt: _encode_unknown,
}


def _be(value: int, size: int, what: str) -> bytes:
    try:
        return value.to_bytes(size, "big")
    except OverflowError:
        raise PfkeyEncodeError(f"{what} {value} does not fit in {size} bytes") from None


def _require_type(exttype: int, allowed: frozenset[int], kind: str) -> None:
    if exttype not in allowed:
        raise PfkeyEncodeError(f"{ext_name(exttype)} is not a {kind} extension")


# Decoding


def peek_header(data: bytes, layout: Layout) -> Message:
    """Decode only the ``sadb_msg`` header, without checking anything else.

    Lets a caller recognise its own reply (pid, seq, errno) even when the
    rest of the message is malformed.
    """
    if len(data) < HEADER_SIZE:
        raise PfkeyDecodeError(
            0, f"truncated: {len(data)} bytes, the sadb_msg header needs {HEADER_SIZE}"
        )
    version, msg_type, errno, satype, _, reserved, seq, pid = layout.unpack(
        _HEADER, data
    )
    return Message(msg_type, satype, seq, pid, errno, (), version, reserved)


def decode_message(data: bytes, layout: Layout) -> Message:
    """Parse one complete PF_KEY message; raise PfkeyDecodeError if malformed."""
    header = peek_header(data, layout)
    if header.version != PF_KEY_V2:
        raise PfkeyDecodeError(0, f"unknown PF_KEY version {header.version}")
    end = _declared_length(data, layout)
    extensions = tuple(_decode_extensions(data, end, layout))
    return replace(header, extensions=extensions)


def _declared_length(data: bytes, layout: Layout) -> int:
    (units,) = layout.unpack("H", data, 4)
    declared = units * UNIT
    if declared < HEADER_SIZE:
        raise PfkeyDecodeError(4, f"sadb_msg_len {units} is shorter than the header")
    if declared > len(data):
        raise PfkeyDecodeError(
            4, f"truncated: sadb_msg_len says {declared} bytes, got {len(data)}"
        )
    if declared < len(data):
        raise PfkeyDecodeError(
            4,
            f"lengths disagree: sadb_msg_len says {declared} bytes, "
            f"{len(data)} were given",
        )
    return declared


def _decode_extensions(data: bytes, end: int, layout: Layout) -> list[Extension]:
    extensions: list[Extension] = []
    seen: set[int] = set()
    offset = HEADER_SIZE
    # The message length is a multiple of 8, so a whole ext header always fits.
    while offset < end:
        units, exttype = layout.unpack("HH", data, offset)
        size = units * UNIT
        _check_ext_header(exttype, size, offset, end, seen)
        seen.add(exttype)
        body = data[offset : offset + size]
        extensions.append(_decode_extension(exttype, body, offset, layout))
        offset += size
    return extensions


def _check_ext_header(
    exttype: int, size: int, offset: int, end: int, seen: set[int]
) -> None:
    if size == 0:
        raise PfkeyDecodeError(offset, f"{ext_name(exttype)} has length 0")
    if offset + size > end:
        raise PfkeyDecodeError(
            offset,
            f"{ext_name(exttype)} claims {size} bytes, "
            f"only {end - offset} remain in the message",
        )
    if exttype == ExtType.RESERVED:
        raise PfkeyDecodeError(offset + 2, "extension type 0 (SADB_EXT_RESERVED)")
    if exttype in seen:
        raise PfkeyDecodeError(offset + 2, f"duplicate {ext_name(exttype)}")


def _decode_extension(
    exttype: int, body: bytes, offset: int, layout: Layout
) -> Extension:
    if not layout.freebsd_extensions and exttype in FREEBSD_ONLY_TYPES:
        return UnknownExt(exttype, body[4:])
    decoder = _decoder_for(exttype)
    if decoder is None:
        return UnknownExt(exttype, body[4:])
    return decoder(exttype, body, offset, layout)


def _decoder_for(exttype: int) -> Decoder | None:
    for members, decoder in _SHARED_DECODERS:
        if exttype in members:
            return decoder
    return _SINGLE_DECODERS.get(exttype)


def _expect_size(body: bytes, size: int, exttype: int, offset: int) -> None:
    if len(body) != size:
        raise PfkeyDecodeError(
            offset, f"{ext_name(exttype)} is {len(body)} bytes, must be {size}"
        )


def _decode_sa(exttype: int, body: bytes, offset: int, layout: Layout) -> SaExt:
    _expect_size(body, 16, exttype, offset)
    replay, state, auth, encrypt = body[8:12]
    (flags,) = layout.unpack("I", body, 12)
    spi = int.from_bytes(body[4:8], "big")
    return SaExt(spi, replay, state, auth, encrypt, flags)


def _decode_lifetime(
    exttype: int, body: bytes, offset: int, layout: Layout
) -> LifetimeExt:
    _expect_size(body, 32, exttype, offset)
    return LifetimeExt(exttype, *layout.unpack("IQQQ", body, 4))


def _decode_address(
    exttype: int, body: bytes, offset: int, layout: Layout
) -> AddressExt:
    if len(body) < 8 + 8:
        raise PfkeyDecodeError(
            offset,
            f"{ext_name(exttype)} is {len(body)} bytes, too short for a sockaddr",
        )
    proto, prefixlen = body[4], body[5]
    fields = decode_sockaddr(body[8:], offset + 8, layout)
    return AddressExt(exttype, prefixlen=prefixlen, proto=proto, **fields)


def decode_sockaddr(raw: bytes, offset: int, layout: Layout) -> dict[str, object]:
    """Fields of an ``AddressExt`` from the padded sockaddr bytes in ``raw``."""
    family, size = _sockaddr_family_and_size(raw, offset, layout)
    if -(-size // UNIT) * UNIT != len(raw):
        raise PfkeyDecodeError(
            offset,
            f"sockaddr of {size} bytes needs {-(-size // UNIT) * UNIT} padded bytes, "
            f"the extension holds {len(raw)}",
        )
    port = int.from_bytes(raw[2:4], "big")
    if family == layout.af_inet:
        return {"address": ipaddress.IPv4Address(raw[4:8]), "port": port}
    (scope_id,) = layout.unpack("I", raw, 24)
    return {
        "address": ipaddress.IPv6Address(raw[8:24]),
        "port": port,
        "flowinfo": int.from_bytes(raw[4:8], "big"),
        "scope_id": scope_id,
    }


def _sockaddr_family_and_size(
    raw: bytes, offset: int, layout: Layout
) -> tuple[int, int]:
    if layout.sockaddr_has_len:
        sa_len, family = raw[0], raw[1]
    else:
        (family,) = layout.unpack("H", raw)
        sa_len = None
    sizes = {layout.af_inet: _SOCKADDR_IN_SIZE, layout.af_inet6: _SOCKADDR_IN6_SIZE}
    if family not in sizes:
        raise PfkeyDecodeError(offset, f"unknown address family {family}")
    if sa_len is not None and sa_len != sizes[family]:
        raise PfkeyDecodeError(
            offset, f"sa_len {sa_len} does not match family {family} ({sizes[family]})"
        )
    return family, sizes[family]


def _decode_key(exttype: int, body: bytes, offset: int, layout: Layout) -> KeyExt:
    if len(body) < 8:
        raise PfkeyDecodeError(offset, f"{ext_name(exttype)} is shorter than 8 bytes")
    (bits,) = layout.unpack("H", body, 4)
    needed = -(-bits // 8)
    if needed > len(body) - 8:
        raise PfkeyDecodeError(
            offset + 4,
            f"{ext_name(exttype)} declares {bits} bits, holds {len(body) - 8} bytes",
        )
    return KeyExt(exttype, body[8 : 8 + needed], bits)


def _decode_sa2(exttype: int, body: bytes, offset: int, layout: Layout) -> Sa2Ext:
    _expect_size(body, 16, exttype, offset)
    mode, _, _, sequence, reqid = layout.unpack("BBHII", body, 4)
    return Sa2Ext(mode, reqid, sequence)


def _decode_nat_t_type(
    exttype: int, body: bytes, offset: int, layout: Layout
) -> NatTTypeExt:
    _expect_size(body, 8, exttype, offset)
    return NatTTypeExt(body[4])


def _decode_nat_t_port(
    exttype: int, body: bytes, offset: int, layout: Layout
) -> NatTPortExt:
    _expect_size(body, 8, exttype, offset)
    return NatTPortExt(exttype, int.from_bytes(body[4:6], "big"))


def _decode_sa_replay(
    exttype: int, body: bytes, offset: int, layout: Layout
) -> SaReplayExt:
    _expect_size(body, 8, exttype, offset)
    return SaReplayExt(*layout.unpack("I", body, 4))


def _decode_spirange(
    exttype: int, body: bytes, offset: int, layout: Layout
) -> SpiRangeExt:
    _expect_size(body, 16, exttype, offset)
    min_spi, max_spi, _ = layout.unpack("III", body, 4)
    return SpiRangeExt(min_spi, max_spi)


# Several extension types share one layout (e.g. hard and soft lifetimes).
_SHARED_DECODERS = (
    (LIFETIME_TYPES, _decode_lifetime),
    (ADDRESS_TYPES, _decode_address),
    (KEY_TYPES, _decode_key),
    (NAT_T_PORT_TYPES, _decode_nat_t_port),
)
_SINGLE_DECODERS = {
    ExtType.SA: _decode_sa,
    ExtType.X_SA2: _decode_sa2,
    ExtType.X_NAT_T_TYPE: _decode_nat_t_type,
    ExtType.X_SA_REPLAY: _decode_sa_replay,
    ExtType.SPIRANGE: _decode_spirange,
}
