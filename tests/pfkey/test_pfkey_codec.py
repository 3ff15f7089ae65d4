"""Byte-level tests of the PF_KEY v2 codec.

Expected bytes are written out by hand from the struct definitions in
FreeBSD ``sys/net/pfkeyv2.h`` (and RFC 2367), little-endian as on amd64
unless a test says otherwise; the comment above each vector names the
fields in order.
"""

import random
import re
from ipaddress import IPv4Address, IPv6Address

import pytest

from lab.pfkey import pfkeyv2 as pk

BSD = pk.freebsd_layout("<")
BSD_BE = pk.freebsd_layout(">")
LINUX = pk.linux_layout("<")

AES_KEY = bytes(range(0x40, 0x50))
SHA1_KEY = bytes(range(0x80, 0x94))


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_sadb_msg_header_little_endian():
    message = pk.Message(pk.MsgType.ADD, pk.SaType.ESP, seq=7, pid=0x1234)
    # version, type, errno, satype | len=2 units | reserved | seq | pid
    expected = hx("02 03 00 03  0200  0000  07000000  34120000")

    assert pk.encode_message(message, BSD) == expected


def test_sadb_msg_header_big_endian():
    message = pk.Message(pk.MsgType.ADD, pk.SaType.ESP, seq=7, pid=0x1234)
    expected = hx("02 03 00 03  0002  0000  00000007  00001234")

    assert pk.encode_message(message, BSD_BE) == expected


def test_sadb_msg_header_carries_errno():
    message = pk.Message(pk.MsgType.DELETE, pk.SaType.ESP, errno=22)

    data = pk.encode_message(message, BSD)

    assert data[1] == 4
    assert data[2] == 22
    assert pk.decode_message(data, BSD).errno == 22


def test_sadb_sa_spi_is_network_order_rest_host_order():
    ext = pk.SaExt(0x12345678, replay=4, state=1, auth=3, encrypt=12, flags=0x400)
    # len=2 | exttype=1 | spi (network order) | replay state auth encrypt | flags
    expected = hx("0200 0100  12345678  04 01 03 0c  00040000")

    assert pk.encode_extension(ext, BSD) == expected


def test_sadb_address_with_bsd_sockaddr_in():
    ext = pk.AddressExt(pk.ExtType.ADDRESS_SRC, IPv4Address("192.0.2.1"))
    # len=3 | exttype=5 | proto prefixlen | reserved
    # sin_len=16 sin_family=2 | port | addr | sin_zero[8]
    expected = hx("0300 0500 00 00 000010 02 0000 c0000201 0000000000000000")

    assert pk.encode_extension(ext, BSD) == expected


def test_sadb_address_port_proto_and_prefixlen():
    ext = pk.AddressExt(
        pk.ExtType.ADDRESS_DST,
        IPv4Address("203.0.113.9"),
        prefixlen=32,
        proto=17,
        port=4500,
    )
    expected = hx("0300 0600 11 20 000010 02 1194 cb007109 0000000000000000")

    assert pk.encode_extension(ext, BSD) == expected


def test_sadb_address_with_bsd_sockaddr_in6_padded_to_64_bits():
    ext = pk.AddressExt(pk.ExtType.ADDRESS_DST, IPv6Address("2001:db8::1"))
    # len=5 (8 + 28 rounded up to 32) | exttype=6 | proto prefixlen reserved
    # sin6_len=28 family=28 | port | flowinfo | addr[16] | scope_id | pad[4]
    expected = hx(
        "0500 0600 00 00 0000"
        "1c 1c 0000 00000000 20010db8000000000000000000000001 00000000"
        "00000000"
    )

    assert pk.encode_extension(ext, BSD) == expected


def test_sadb_address_with_linux_sockaddr_in():
    ext = pk.AddressExt(pk.ExtType.ADDRESS_SRC, IPv4Address("192.0.2.1"))
    # Linux has no sa_len: a 16-bit family (2) in host order instead.
    expected = hx("0300 0500 00 00 00000200 0000 c0000201 0000000000000000")

    assert pk.encode_extension(ext, LINUX) == expected


def test_sadb_address_with_linux_sockaddr_in6():
    ext = pk.AddressExt(pk.ExtType.ADDRESS_SRC, IPv6Address("2001:db8::2"))
    expected = hx(
        "0500 0500 00 00 0000"
        "0a00 0000 00000000 20010db8000000000000000000000002 00000000"
        "00000000"
    )

    assert pk.encode_extension(ext, LINUX) == expected


def test_sadb_key_aligned_key_needs_no_padding():
    ext = pk.KeyExt(pk.ExtType.KEY_ENCRYPT, AES_KEY)
    # len=3 | exttype=9 | bits=128 | reserved | 16 key bytes
    expected = hx("0300 0900 8000 0000") + AES_KEY

    assert pk.encode_extension(ext, BSD) == expected


def test_sadb_key_padded_to_64_bits():
    ext = pk.KeyExt(pk.ExtType.KEY_AUTH, SHA1_KEY)
    # len=4 | exttype=8 | bits=160 | reserved | 20 key bytes | 4 zero bytes
    expected = hx("0400 0800 a000 0000") + SHA1_KEY + bytes(4)

    assert pk.encode_extension(ext, BSD) == expected


def test_sadb_key_explicit_bits_and_empty_key():
    assert pk.KeyExt(pk.ExtType.KEY_AUTH, SHA1_KEY).bits == 160
    assert pk.encode_extension(pk.KeyExt(pk.ExtType.KEY_AUTH, b""), BSD) == hx(
        "0100 0800 0000 0000"
    )


def test_sadb_x_sa2():
    ext = pk.Sa2Ext(mode=pk.IpsecMode.TUNNEL, reqid=0x5EC0)
    # len=2 | exttype=19 | mode=2 reserved1 | reserved2 | sequence | reqid
    expected = hx("0200 1300 02 00 0000 00000000 c05e0000")

    assert pk.encode_extension(ext, BSD) == expected


def test_nat_t_type_and_ports():
    natt = pk.NatTTypeExt(pk.UDP_ENCAP_ESPINUDP)
    sport = pk.NatTPortExt(pk.ExtType.X_NAT_T_SPORT, 4500)
    dport = pk.NatTPortExt(pk.ExtType.X_NAT_T_DPORT, 4501)

    # len=1 | exttype=20 | type=2 | reserved[3]
    assert pk.encode_extension(natt, BSD) == hx("0100 1400 02 000000")
    # len=1 | exttype=21/22 | port (network order) | reserved
    assert pk.encode_extension(sport, BSD) == hx("0100 1500 1194 0000")
    assert pk.encode_extension(dport, BSD) == hx("0100 1600 1195 0000")


def test_nat_t_oai_is_an_address_extension():
    ext = pk.AddressExt(pk.ExtType.X_NAT_T_OAI, IPv4Address("198.51.100.7"))

    data = pk.encode_extension(ext, BSD)

    assert data[:4] == hx("0300 1700")
    assert data[12:16] == hx("c6336407")


def test_sadb_x_sa_replay():
    # len=1 | exttype=26 | replay window in packets
    assert pk.encode_extension(pk.SaReplayExt(32), BSD) == hx("0100 1a00 20000000")


def test_sadb_lifetime():
    ext = pk.LifetimeExt(pk.ExtType.LIFETIME_HARD, allocations=5, addtime=3600)
    # len=4 | exttype=3 | allocations | bytes | addtime | usetime
    expected = hx(
        "0400 0300 050000000000000000000000 100e000000000000 0000000000000000"
    )

    assert pk.encode_extension(ext, BSD) == expected


def test_sadb_spirange_in_host_order():
    ext = pk.SpiRangeExt(0x100, 0x0FFFFFFF)
    # len=2 | exttype=16 | min | max | reserved
    expected = hx("0200 1000 00010000 ffffff0f 00000000")

    assert pk.encode_extension(ext, BSD) == expected


def sample_add() -> pk.Message:
    return pk.Message(
        pk.MsgType.ADD,
        pk.SaType.ESP,
        seq=3,
        pid=4242,
        extensions=(
            pk.SaExt(0x7E001201, replay=4, auth=3, encrypt=12),
            pk.SaReplayExt(32),
            pk.Sa2Ext(reqid=0x5EC0),
            pk.AddressExt(pk.ExtType.ADDRESS_SRC, IPv4Address("198.51.100.1")),
            pk.AddressExt(pk.ExtType.ADDRESS_DST, IPv4Address("192.0.2.1")),
            pk.LifetimeExt(pk.ExtType.LIFETIME_SOFT, addtime=2700),
            pk.LifetimeExt(pk.ExtType.LIFETIME_HARD, addtime=3600),
            pk.KeyExt(pk.ExtType.KEY_ENCRYPT, AES_KEY),
            pk.KeyExt(pk.ExtType.KEY_AUTH, SHA1_KEY),
            pk.NatTTypeExt(),
            pk.NatTPortExt(pk.ExtType.X_NAT_T_SPORT, 4500),
            pk.NatTPortExt(pk.ExtType.X_NAT_T_DPORT, 4500),
        ),
    )


def test_whole_message_length_counts_every_extension():
    data = pk.encode_message(sample_add(), BSD)

    # 16 header + 16 SA + 8 replay + 16 SA2 + 2*24 addresses + 2*32 lifetimes
    # + 24 + 32 keys + 3*8 NAT-T = 248 bytes = 31 units
    assert len(data) == 248
    assert data[4:6] == hx("1f00")
    assert data[16:20] == hx("0200 0100")
    assert data[32:36] == hx("0100 1a00")


@pytest.mark.parametrize("layout", [BSD, BSD_BE], ids=["le", "be"])
def test_round_trip_freebsd(layout):
    message = sample_add()

    assert pk.decode_message(pk.encode_message(message, layout), layout) == message


def test_round_trip_ipv6_and_unknown_extension():
    message = pk.Message(
        pk.MsgType.REGISTER,
        pk.SaType.ESP,
        errno=0,
        extensions=(
            pk.AddressExt(
                pk.ExtType.ADDRESS_SRC,
                IPv6Address("2001:db8::5"),
                prefixlen=64,
                port=500,
                flowinfo=0x12345,
                scope_id=3,
            ),
            pk.UnknownExt(pk.ExtType.SUPPORTED_ENCRYPT, bytes(range(12))),
        ),
    )

    for layout in (BSD, LINUX):
        data = pk.encode_message(message, layout)
        assert pk.decode_message(data, layout) == message


def test_round_trip_linux_without_freebsd_only_extensions():
    message = pk.Message(
        pk.MsgType.ADD,
        pk.SaType.ESP,
        extensions=tuple(
            ext
            for ext in sample_add().extensions
            if not isinstance(ext, pk.SaReplayExt)
        ),
    )

    data = pk.encode_message(message, LINUX)

    assert pk.decode_message(data, LINUX) == message


def test_linux_layout_refuses_sa_replay():
    message = pk.Message(pk.MsgType.ADD, 3, extensions=(pk.SaReplayExt(32),))

    with pytest.raises(pk.PfkeyEncodeError, match="SADB_X_EXT_SA_REPLAY"):
        pk.encode_message(message, LINUX)


def test_linux_number_26_decodes_as_raw_extension():
    # On Linux 26 is SADB_X_EXT_FILTER, not the FreeBSD replay extension.
    data = header(3) + hx("0100 1a00 00000000")

    decoded = pk.decode_message(data, LINUX)

    assert decoded.extensions == (pk.UnknownExt(26, bytes(4)),)


@pytest.mark.parametrize(
    ("ext", "match"),
    [
        (pk.SaExt(1 << 32), "SPI"),
        (pk.NatTPortExt(pk.ExtType.X_NAT_T_SPORT, 70000), "NAT-T port"),
        (pk.KeyExt(pk.ExtType.KEY_AUTH, b"ab", bits=17), "key bits"),
        (pk.LifetimeExt(pk.ExtType.SA), "not a lifetime"),
        (pk.AddressExt(pk.ExtType.SA, IPv4Address("192.0.2.1")), "not an? address"),
        (pk.SaExt(1, replay=256), "out of range"),
    ],
)
def test_encode_rejects_impossible_values(ext, match):
    with pytest.raises(pk.PfkeyEncodeError, match=match):
        pk.encode_extension(ext, BSD)


def header(units: int, version: int = 2) -> bytes:
    return bytes((version, 3, 0, 3)) + units.to_bytes(2, "little") + bytes(10)


SA_EXT = hx("0200 0100 12345678 00 01 03 0c 00000000")
ADDR_V4 = hx("0300 0500 00 00 0000 10 02 0000 c0000201 0000000000000000")


@pytest.mark.parametrize(
    ("data", "offset", "match"),
    [
        (b"", 0, "truncated: 0 bytes"),
        (header(2)[:15], 0, "truncated: 15 bytes"),
        (header(2, version=1), 0, "unknown PF_KEY version 1"),
        (header(3), 4, "truncated: sadb_msg_len says 24 bytes, got 16"),
        (header(2) + bytes(8), 4, "lengths disagree"),
        (header(1) + bytes(8), 4, "shorter than the header"),
        (header(3) + hx("0000 0100 00000000"), 16, "length 0"),
        (header(3) + hx("0500 0100 00000000"), 16, "claims 40 bytes, only 8"),
        (header(3) + hx("0100 0000 00000000"), 18, "type 0"),
        (header(6) + SA_EXT + SA_EXT, 34, "duplicate SADB_EXT_SA"),
        (header(5) + hx("0300") + SA_EXT[2:] + bytes(8), 16, "is 24 bytes, must be 16"),
        (header(5) + ADDR_V4[:8] + hx("11") + ADDR_V4[9:], 24, "sa_len 17"),
        (header(5) + ADDR_V4[:9] + hx("63") + ADDR_V4[10:], 24, "family 99"),
        (header(6) + hx("0400") + ADDR_V4[2:] + bytes(8), 24, "padded"),
        (header(3) + hx("0100 0500 0000 0000"), 16, "too short"),
        (header(4) + hx("0200 0900 0101 0000") + bytes(8), 20, "declares 257"),
        (header(3) + hx("0100 1400 02"), 4, "truncated"),
    ],
    ids=[
        "empty",
        "short-header",
        "version",
        "msg-len-too-long",
        "msg-len-too-short",
        "msg-len-below-header",
        "ext-len-zero",
        "ext-past-end",
        "ext-type-zero",
        "duplicate",
        "sa-wrong-size",
        "sa-len-mismatch",
        "unknown-family",
        "address-too-long",
        "address-too-short",
        "key-bits",
        "truncated-ext",
    ],
)
def test_malformed_input_raises_clear_error(data, offset, match):
    with pytest.raises(pk.PfkeyDecodeError) as caught:
        pk.decode_message(data, BSD)

    assert caught.value.offset == offset
    assert f"at offset {offset}:" in str(caught.value)
    assert re.search(match, caught.value.problem), caught.value.problem


def test_well_formed_neighbour_of_malformed_cases_decodes():
    data = header(5) + SA_EXT + hx("0100 1400 02 000000")

    message = pk.decode_message(data, BSD)

    assert message.extensions == (
        pk.SaExt(0x12345678, state=1, auth=3, encrypt=12),
        pk.NatTTypeExt(2),
    )


def test_linux_rejects_bsd_inet6_family():
    address = hx("0500 0500 00 00 0000") + hx("1c00") + bytes(30)
    data = header(7) + address

    with pytest.raises(pk.PfkeyDecodeError, match="unknown address family 28"):
        pk.decode_message(data, LINUX)


def test_peek_header_reads_own_reply_even_if_body_is_broken():
    data = header(3) + hx("0000 0100 00000000")

    head = pk.peek_header(data, BSD)

    assert (head.version, head.msg_type, head.satype) == (2, 3, 3)
    with pytest.raises(pk.PfkeyDecodeError):
        pk.decode_message(data, BSD)


def test_mutated_messages_never_crash_or_hang():
    original = pk.encode_message(sample_add(), BSD)
    rng = random.Random(2367)
    outcomes = {"decoded": 0, "rejected": 0}

    for _ in range(3000):
        data = mutate(original, rng)
        try:
            pk.decode_message(data, BSD)
        except pk.PfkeyDecodeError:
            outcomes["rejected"] += 1
        else:
            outcomes["decoded"] += 1

    assert outcomes["rejected"] > 100
    assert outcomes["decoded"] > 10


def mutate(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    choice = rng.randrange(4)
    if choice == 0:
        return bytes(buffer[: rng.randrange(len(buffer))])
    if choice == 1:
        for _ in range(rng.randint(1, 4)):
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        return bytes(buffer)
    if choice == 2:
        position = rng.randrange(16, len(buffer), 8)
        buffer[position : position + 2] = rng.randrange(8).to_bytes(2, "little")
        return bytes(buffer)
    return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


def test_names():
    assert pk.type_name(3) == "SADB_ADD"
    assert pk.type_name(99) == "SADB_type_99"
    assert pk.ext_name(19) == "SADB_X_EXT_SA2"
    assert pk.ext_name(1) == "SADB_EXT_SA"
    assert pk.ext_name(77) == "extension type 77"


def test_constants_match_freebsd_header():
    assert (pk.PF_KEY_V2, pk.AF_KEY_FREEBSD, pk.AF_KEY_LINUX) == (2, 27, 15)
    assert (pk.ExtType.X_NAT_T_OAI, pk.ExtType.X_SA_REPLAY) == (23, 26)
    assert pk.ExtType.X_IF_HW_OFFL == 31
    assert (pk.EncAlg.DES3CBC, pk.EncAlg.X_AESGCM16) == (3, 20)
    assert (pk.EncAlg.X_CAMELLIACBC, pk.AuthAlg.X_AES_XCBC_MAC) == (22, 9)
    assert (pk.IpsecMode.TUNNEL, pk.UDP_ENCAP_ESPINUDP) == (2, 2)


@pytest.mark.parametrize(
    ("platform", "name"), [("freebsd15", "freebsd"), ("linux", "linux")]
)
def test_layout_for_platform(platform, name):
    layout = pk.layout_for_platform(platform)

    assert layout.name == name
    assert layout.af_key == {"freebsd": 27, "linux": 15}[name]


def test_layout_for_unknown_platform():
    with pytest.raises(pk.PfkeyError, match="darwin"):
        pk.layout_for_platform("darwin")
