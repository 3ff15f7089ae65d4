"""Which libvirt host a pytest-xdist worker puts its guests on.

Workers are named ``gw0``, ``gw1``, ... (``main`` without xdist); worker
*n* goes to host *n* modulo the number of hosts, so N workers over N
hosts give each host one worker, and a rerun puts each worker on the
same host as before.
"""

import re
import zlib

WORKER_PATTERN = re.compile(r"^gw(\d+)$")


def host_for_worker(uris: list[str], worker: str) -> str:
    """The URI from *uris* that *worker* should use."""
    if not uris:
        raise ValueError(f"worker {worker}: no libvirt hosts to place it on")
    match = WORKER_PATTERN.match(worker)
    if match:
        return uris[int(match.group(1)) % len(uris)]
    if worker == "main":
        return uris[0]
    # Any other name still lands on the same host every time.
    return uris[zlib.crc32(worker.encode()) % len(uris)]
