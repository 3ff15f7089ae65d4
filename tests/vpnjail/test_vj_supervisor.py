"""vpnjail/supervisor.py: exponential backoff per profile, on a fake clock."""

import types
from pathlib import Path

import pytest

import vpnjail.supervisor as supervisor
from vpnjail.manager import Outcome
from vpnjail.profile import LoadedProfile, Profile
from vpnjail.supervisor import Backoff, Supervisor


def item(name: str, enabled: bool = True) -> LoadedProfile:
    profile = Profile.model_validate(
        {
            "name": name,
            "gateway": "198.51.100.10",
            "ike": {"proposals": ["x"], "esp_proposals": ["y"]},
            "local_id": {"type": "any"},
            "auth": {"psk": {"env": "VJ_SUPERVISOR_PSK"}},
            "enabled": enabled,
        }
    )
    return LoadedProfile(Path(f"/p/{name}.yaml"), profile)


class FakeManager:
    """up_one answers from a script of results per profile."""

    def __init__(self, script: dict[str, list[bool]]):
        self.script = script
        self.calls: list[tuple[str, list[str]]] = []

    def up_one(self, loaded, everyone) -> Outcome:
        name = loaded.profile.name
        self.calls.append((name, [e.profile.name for e in everyone]))
        ok = self.script[name].pop(0)
        return Outcome(name, ok, "up" if ok else "gateway not answering")


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(
        supervisor, "time", types.SimpleNamespace(monotonic=lambda: now[0])
    )
    return now


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 32.0), (7, 60.0), (12, 60.0)],
)
def test_backoff_doubles_up_to_its_ceiling(failures, delay):
    backoff = Backoff()
    for _ in range(failures):
        backoff.failed(100.0, 1.0, 60.0)
    assert (backoff.failures, backoff.next_try) == (failures, 100.0 + delay)


def test_backoff_success_resets_it():
    backoff = Backoff()
    backoff.failed(100.0, 1.0, 60.0)
    backoff.failed(100.0, 1.0, 60.0)
    backoff.succeeded()
    assert backoff == Backoff(failures=0, next_try=0.0)


def test_tick_skips_a_profile_inside_its_backoff(clock):
    manager = FakeManager({"office": [False, False], "home": [True] * 4})
    watch = Supervisor(manager, [item("office"), item("home")], backoff_base=1.0)
    watch.tick()  # t=1000: office fails, next try at 1001
    clock[0] = 1000.5
    watch.tick()  # office waits
    assert [c[0] for c in manager.calls] == ["office", "home", "home"]
    clock[0] = 1001.0
    watch.tick()  # office fails again, next try at 1003
    assert watch.backoff["office"] == Backoff(failures=2, next_try=1003.0)
    clock[0] = 1002.9
    watch.tick()
    assert [c[0] for c in manager.calls].count("office") == 2


def test_tick_resets_the_backoff_on_success(clock):
    manager = FakeManager({"office": [False, True, True]})
    watch = Supervisor(manager, [item("office")], backoff_base=4.0)
    watch.tick()
    assert watch.backoff["office"] == Backoff(failures=1, next_try=1004.0)
    clock[0] = 1004.0
    watch.tick()
    assert watch.backoff["office"] == Backoff()
    clock[0] = 1004.1  # after a success the next tick tries at once
    watch.tick()
    assert len(manager.calls) == 3


def test_the_ceiling_bounds_the_wait(clock):
    manager = FakeManager({"office": [False] * 10})
    watch = Supervisor(manager, [item("office")], backoff_base=1.0, backoff_ceiling=5.0)
    for _ in range(10):
        clock[0] = watch.backoff["office"].next_try or clock[0]
        watch.tick()
    assert watch.backoff["office"].next_try == clock[0] + 5.0


def test_only_enabled_profiles_are_kept_up(clock):
    manager = FakeManager({"office": [True]})
    watch = Supervisor(manager, [item("office"), item("home", enabled=False)])
    watch.tick()
    assert manager.calls == [("office", ["office"])]
    assert list(watch.backoff) == ["office"]


def test_run_stops_when_asked(clock):
    manager = FakeManager({"office": [True, True]})
    watch = Supervisor(manager, [item("office")], interval=0.0)

    def up_then_stop(loaded, everyone):
        watch.stopping.set()
        return Outcome("office", True, "up")

    manager.up_one = up_then_stop
    watch.run()
    assert watch.stopping.is_set()
