"""lab/firewall.py: the host namespace's NAT and port forward."""

import pytest

from lab import firewall

RUN = "20261204-154353-a1a0"
DNAT = '    iifname "wan0" ip daddr 198.51.100.66 tcp dport 8022 dnat to 192.0.2.2:8022'
MASQUERADE = '    oifname "wan0" ip saddr 192.0.2.0/30 masquerade'


def test_table_name_carries_the_run_id():
    # nft identifiers take no "-": the run id's dashes become "_".
    assert firewall.table_name(RUN) == "vjlab_20261204_154353_a1a0"
    assert firewall.render_nft(RUN, "nat").startswith(
        "table ip vjlab_20261204_154353_a1a0 {\n"
    )


@pytest.mark.parametrize("nat", ["nat", "direct"])
def test_port_8022_is_forwarded_to_the_jail_in_both_modes(nat):
    lines = firewall.render_nft(RUN, nat).splitlines()
    assert lines.count(DNAT) == 1
    assert "    type nat hook prerouting priority dstnat; policy accept;" in lines


@pytest.mark.parametrize(("nat", "count"), [("nat", 1), ("direct", 0)])
def test_masquerade_only_when_natting(nat, count):
    text = firewall.render_nft(RUN, nat)
    assert text.splitlines().count(MASQUERADE) == count
    assert text.count("masquerade") == count


def test_ruleset_braces_balance():
    text = firewall.render_nft(RUN, "nat")
    assert text.count("{") == text.count("}") == 3
    assert text.endswith("}\n")
