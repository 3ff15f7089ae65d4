"""vpnjail/pool.py and vpnjail/state.py: link addresses, records and locks.

Locks are exercised with threads: each State.lock() opens its own file
description, so flock excludes threads as it excludes processes. Every wait
is bounded, so a broken lock fails the test instead of hanging it.
"""

import fcntl
import json
import os
import threading

import pytest

import vpnjail.state
from vpnjail import pool
from vpnjail.drivers.base import LinkAddresses
from vpnjail.state import State

WAIT = 5.0  # seconds; the ceiling of every wait below


# -- pool ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("taken", "link"),
    [
        (set(), ("192.0.2.1/30", "192.0.2.2/30")),
        ({"192.0.2.1"}, ("192.0.2.5/30", "192.0.2.6/30")),
        ({"192.0.2.2"}, ("192.0.2.5/30", "192.0.2.6/30")),
        ({"192.0.2.2", "192.0.2.6"}, ("192.0.2.9/30", "192.0.2.10/30")),
        ({"192.0.2.5"}, ("192.0.2.1/30", "192.0.2.2/30")),
        ({"198.51.100.1"}, ("192.0.2.1/30", "192.0.2.2/30")),
    ],
)
def test_allocate_gives_the_first_free_slash_30(taken, link):
    assert pool.allocate("192.0.2.0/24", taken) == LinkAddresses(*link)


def test_an_exhausted_pool_names_link_pool():
    with pytest.raises(RuntimeError) as caught:
        pool.allocate("192.0.2.0/29", {"192.0.2.1", "192.0.2.6"})
    assert str(caught.value) == (
        "link pool 192.0.2.0/29 is exhausted; give a larger --link-pool"
    )


def test_addresses_of_a_link_are_its_two_ips():
    link = LinkAddresses("192.0.2.1/30", "192.0.2.2/30")
    assert pool.addresses(link) == {"192.0.2.1", "192.0.2.2"}


# -- records ------------------------------------------------------------------


@pytest.fixture
def state(tmp_path) -> State:
    return State(str(tmp_path / "state"))


def test_save_load_remove_names(state):
    assert (state.names(), state.load("office")) == ([], None)
    state.save("office", {"name": "office", "phase": "up"})
    state.save("home", {"name": "home"})
    assert state.load("office") == {"name": "office", "phase": "up"}
    assert state.names() == ["home", "office"]
    state.remove("office")
    state.remove("office")  # removing what is gone is no error
    assert (state.names(), state.load("office")) == (["home"], None)


def test_records_and_locks_are_private_to_root(state):
    state.save("office", {})
    for folder in (state.records_dir, state.locks_dir):
        assert os.stat(folder).st_mode & 0o777 == 0o700


def test_save_leaves_no_temporary_file(state):
    state.save("office", {"a": 1})
    assert os.listdir(state.records_dir) == ["office.json"]


def test_a_reader_never_sees_a_partial_record(state):
    big = {"name": "office", "padding": "x" * 200_000}
    state.save("office", big)
    stop = threading.Event()
    errors = []

    def read_in_a_loop():
        while not stop.is_set():
            try:
                assert state.load("office") in (big, dict(big, n=1))
            except (AssertionError, json.JSONDecodeError) as exc:
                errors.append(repr(exc)[:200])
                return

    reader = threading.Thread(target=read_in_a_loop)
    reader.start()
    for n in range(40):
        state.save("office", dict(big, n=1) if n % 2 else big)
    stop.set()
    reader.join(WAIT)
    assert errors == []


def test_concurrent_saves_of_different_names_keep_every_record(state):
    names = [f"p{n}" for n in range(16)]
    barrier = threading.Barrier(len(names))

    def save(name):
        barrier.wait(WAIT)
        for round_ in range(20):
            state.save(name, {"name": name, "round": round_})

    threads = [threading.Thread(target=save, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert state.names() == sorted(names)
    assert all(state.load(n) == {"name": n, "round": 19} for n in names)


# -- locks --------------------------------------------------------------------


class Holder:
    """Holds one of *state*'s locks in a thread until released."""

    def __init__(self, state: State, name: str, thread_name: str | None = None):
        self.acquired = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(
            target=self._hold, args=(state, name), name=thread_name
        )
        self.thread.start()

    def _hold(self, state, name):
        with state.lock(name):
            self.acquired.set()
            self.release.wait(WAIT)

    def done(self):
        self.release.set()
        self.thread.join(WAIT)


def test_a_lock_excludes_a_second_holder_until_released(state):
    first = Holder(state, "office")
    assert first.acquired.wait(WAIT)
    second = Holder(state, "office")
    try:
        assert not second.acquired.wait(0.2)
        first.done()
        assert second.acquired.wait(WAIT)
    finally:
        first.done()
        second.done()


def test_locks_of_different_profiles_do_not_wait_for_each_other(state):
    first = Holder(state, "office")
    second = Holder(state, "pool")
    try:
        assert first.acquired.wait(WAIT) and second.acquired.wait(WAIT)
    finally:
        first.done()
        second.done()


def test_prune_between_open_and_flock_cannot_let_two_hold_one_lock(state, monkeypatch):
    with state.lock("office"):
        pass  # the lock file exists and is free, as after any command
    opened, resume = threading.Event(), threading.Event()

    class PausingFcntl:
        """fcntl, pausing the thread named "first" just before it locks."""

        LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

        @staticmethod
        def flock(handle, operation):
            if threading.current_thread().name == "first" and not opened.is_set():
                opened.set()
                resume.wait(WAIT)
            return fcntl.flock(handle, operation)

    monkeypatch.setattr(vpnjail.state, "fcntl", PausingFcntl)
    first = Holder(state, "office", thread_name="first")
    assert opened.wait(WAIT)
    state.prune()  # e.g. `vpnjail gc` at that moment
    resume.set()
    assert first.acquired.wait(WAIT)
    second = Holder(state, "office")
    try:
        assert not second.acquired.wait(0.3), "two holders of one lock"
    finally:
        first.done()
        second.done()


# -- prune --------------------------------------------------------------------


def touch(path: str) -> str:
    with open(path, "w") as out:
        out.write("x\n")
    return path


def test_prune_removes_free_locks_and_failed_logs_of_stopped_profiles(state):
    state.save("office", {"name": "office"})  # running
    for name in ("office", "home", "pool"):
        with state.lock(name):
            pass
    office_log = touch(os.path.join(state.directory, "office.failed.log"))
    home_log = touch(os.path.join(state.directory, "home.failed.log"))
    busy = Holder(state, "busy")
    try:
        assert busy.acquired.wait(WAIT)
        removed = state.prune()
    finally:
        busy.done()
    assert removed == [
        os.path.join(state.locks_dir, "home.lock"),
        os.path.join(state.locks_dir, "pool.lock"),
        home_log,
    ]
    assert sorted(os.listdir(state.locks_dir)) == ["busy.lock", "office.lock"]
    assert os.path.exists(office_log)
    assert state.names() == ["office"]


def test_prune_removes_the_state_directory_once_empty(state):
    state.save("office", {"name": "office"})
    with state.lock("office"):
        pass
    touch(os.path.join(state.directory, "office.failed.log"))
    state.remove("office")
    assert len(state.prune()) == 2
    assert not os.path.exists(state.directory)


def test_prune_of_no_state_directory_removes_nothing(state):
    assert state.prune() == []
    assert not os.path.exists(state.directory)
