"""Keeping secrets out of evidence and reports.

Known secret values (pre-shared keys, XAuth passwords) are replaced wherever
they appear, and key material printed by the kernel (``ip xfrm state``) is
blanked whatever its value.
"""

import re

MARK = "<redacted>"
_XFRM_KEY = re.compile(
    r"\b(enc|auth|auth-trunc|aead|comp)(\s+\S+\s+)0x[0-9a-fA-F]+", re.MULTILINE
)


class Redactor:
    def __init__(self, secrets: list[str]):
        # Longest first, so a secret containing another is removed whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MARK)
        return _XFRM_KEY.sub(rf"\1\g<2>0x{MARK}", text)

    def data(self, value):
        """Redact every string inside JSON-able data."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value

    def leaks(self, blob: bytes) -> list[str]:
        """Which secrets appear in *blob* (used to check finished reports)."""
        return [s for s in self.secrets if s.encode() in blob]
