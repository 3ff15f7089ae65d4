"""lab/redact.py: secrets and kernel key material out of evidence."""

import json

from lab.redact import MARK, Redactor

# `ip xfrm state` of an SA pair as iproute2 prints it; the keys are made up.
XFRM_TEMPLATE = """\
src 192.0.2.2 dst 198.51.100.10
\tproto esp spi 0x42ac4c18 reqid 1 mode tunnel
\treplay-window 0 flag af-unspec
\tauth-trunc hmac(sha256) 0x{auth} 128
\tenc cbc(aes) 0x{enc}
\tanti-replay context: seq 0x0, oseq 0x0, bitmap 0x00000000
src 198.51.100.10 dst 192.0.2.2
\tproto esp spi 0xc968ed64 reqid 1 mode tunnel
\treplay-window 32 flag af-unspec
\taead rfc4106(gcm(aes)) 0x{aead} 128
\tanti-replay context: seq 0x0, oseq 0x0, bitmap 0x00000000
"""
XFRM_STATE = XFRM_TEMPLATE.format(
    auth="8c1f0e3b5a79d2c4" * 4,  # 256-bit HMAC key
    enc="00112233445566778899AABBCCDDEEFF",
    aead="deadbeefcafef00d" * 2 + "01020304",  # key and salt
)
XFRM_REDACTED = XFRM_TEMPLATE.format(auth=MARK, enc=MARK, aead=MARK)


def test_known_secret_is_replaced_everywhere():
    redactor = Redactor(["lab-psk-5f0c1e"])
    text = "psk lab-psk-5f0c1e and again lab-psk-5f0c1e."
    assert redactor.text(text) == f"psk {MARK} and again {MARK}."


def test_longer_secret_is_replaced_whole_before_a_shorter_one_inside_it():
    # Given shortest first on purpose: the redactor must reorder.
    redactor = Redactor(["lab-psk", "lab-psk-5f0c1e"])
    assert redactor.text("a lab-psk-5f0c1e b lab-psk") == f"a {MARK} b {MARK}"


def test_empty_and_duplicate_secrets_are_dropped():
    assert Redactor(["", "abcdef", "abcdef"]).secrets == ["abcdef"]


def test_xfrm_key_material_is_blanked_spis_kept():
    assert Redactor([]).text(XFRM_STATE) == XFRM_REDACTED


def test_data_redacts_nested_strings_only():
    redactor = Redactor(["lab-xauth-9d2e47"])
    data = {
        "sas": [{"fgt": {"secret": "lab-xauth-9d2e47", "bytes": 12}}],
        "note": "enc cbc(aes) 0xabcdef",
        "ok": True,
        "none": None,
    }
    assert redactor.data(data) == {
        "sas": [{"fgt": {"secret": MARK, "bytes": 12}}],
        "note": f"enc cbc(aes) 0x{MARK}",
        "ok": True,
        "none": None,
    }


def test_leaks_names_each_secret_found_in_bytes():
    redactor = Redactor(["lab-psk-5f0c1e", "lab-xauth-9d2e47", "lab-psk-wrong0"])
    blob = b"\x00pcap lab-xauth-9d2e47 ... lab-psk-5f0c1e\xff"
    assert sorted(redactor.leaks(blob)) == ["lab-psk-5f0c1e", "lab-xauth-9d2e47"]
    assert redactor.leaks(redactor.text(blob.decode("latin-1")).encode()) == []


def test_data_redacts_strings_inside_tuples():
    redactor = Redactor(["lab-psk-5f0c1e"])
    written = json.dumps(redactor.data({"deciding": (("client", "lab-psk-5f0c1e"),)}))
    assert "lab-psk-5f0c1e" not in written
