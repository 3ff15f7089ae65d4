"""Per-cell evidence, written with every secret redacted.

Layout of a cell's directory::

    classification.json   outcome, expectation, deciding log lines
    client/  responder/   strongswan.conf, swanctl.conf, charon.log,
                          vici.json, sandbox.sh
    client/kernel/        the client stack's SAs, policies and routes
    wan.pcap              the wan link next to the gateway
    cell.log              the harness's own DEBUG transcript
"""

import json
import logging
import os
import shutil

from lab.redact import Redactor

log = logging.getLogger(__name__)


class EvidenceDir:
    def __init__(self, path: str, redactor: Redactor):
        self.path = path
        self.redactor = redactor
        os.makedirs(path, exist_ok=True)

    def write_text(self, name: str, text: str) -> str:
        target = os.path.join(self.path, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as out:
            out.write(self.redactor.text(text))
        return target

    def write_json(self, name: str, data) -> str:
        return self.write_text(name, json.dumps(self.redactor.data(data), indent=2))

    def copy_text(self, name: str, source: str) -> None:
        try:
            with open(source, errors="replace") as src:
                self.write_text(name, src.read())
        except FileNotFoundError:
            log.debug("evidence: %s does not exist, not copied", source)

    def copy_binary(self, name: str, source: str) -> None:
        # Captures are ciphertext and public headers; leaks() checks them.
        try:
            shutil.copyfile(source, os.path.join(self.path, name))
        except FileNotFoundError:
            log.debug("evidence: %s does not exist, not copied", source)

    def files(self) -> list[str]:
        found = []
        for folder, _, names in os.walk(self.path):
            for name in names:
                found.append(os.path.relpath(os.path.join(folder, name), self.path))
        return sorted(found)
