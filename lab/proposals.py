"""FortiOS-style proposal lists turned into strongSwan proposal strings."""

import itertools

DH_GROUPS = {
    1: "modp768",
    2: "modp1024",
    5: "modp1536",
    14: "modp2048",
    15: "modp3072",
    16: "modp4096",
    19: "ecp256",
    20: "ecp384",
    21: "ecp521",
}


def ike(encryption: list[str], integrity: list[str], groups: list[int]) -> list[str]:
    """One proposal per suite and group, groups outermost as FortiOS lists."""
    return [
        f"{enc}-{integ}-{DH_GROUPS[group]}"
        for group, enc, integ in itertools.product(groups, encryption, integrity)
    ]


def esp(encryption: list[str], integrity: list[str], pfs: list[int]) -> list[str]:
    """ESP proposals; a DH group in them makes PFS mandatory."""
    if not pfs:
        return [f"{e}-{i}" for e, i in itertools.product(encryption, integrity)]
    return ike(encryption, integrity, pfs)
