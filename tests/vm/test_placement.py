"""lab/vm/placement.py: spreading xdist workers over libvirt hosts."""

import pytest

from lab.vm.placement import host_for_worker

HOSTS = [
    "qemu+ssh://lab@192.0.2.10/system",
    "qemu+ssh://lab@192.0.2.11/system",
    "qemu+ssh://lab@192.0.2.12/system",
]


def test_workers_go_round_robin():
    placed = [host_for_worker(HOSTS, f"gw{n}") for n in range(6)]
    assert placed == HOSTS + HOSTS


def test_as_many_workers_as_hosts_use_every_host_once():
    assert {host_for_worker(HOSTS, f"gw{n}") for n in range(3)} == set(HOSTS)


def test_without_xdist_the_first_host_is_used():
    assert host_for_worker(HOSTS, "main") == HOSTS[0]


def test_any_other_name_is_placed_the_same_way_every_time():
    first = host_for_worker(HOSTS, "ci-runner-7")
    assert first in HOSTS
    assert all(host_for_worker(HOSTS, "ci-runner-7") == first for _ in range(5))


def test_one_host_takes_everything():
    assert host_for_worker(HOSTS[:1], "gw5") == HOSTS[0]


def test_no_hosts_is_an_error_naming_the_worker():
    with pytest.raises(ValueError, match="worker gw1: no libvirt hosts"):
        host_for_worker([], "gw1")
