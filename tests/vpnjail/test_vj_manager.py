"""vpnjail/manager.py with a fake driver: rollback, links, down, telling lines.

The fake driver records every action and runs nothing; VICI is replaced by
fakes of vpnjail.vici_control's functions.
"""

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vpnjail import vici_control
from vpnjail.drivers.base import Driver, Layout, LinkAddresses, Needs
from vpnjail.manager import Manager, Outcome, telling_line
from vpnjail.plan import Plan, Run, Spawn, WriteFile
from vpnjail.profile import LoadedProfile, Profile
from vpnjail.state import State

PSK = "manager-psk-Qe18"
VIP = "203.0.113.77"
LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"
CHARON_DIED = (
    "Dec  4 15:44:22 00[DMN] Starting IKE charon daemon (strongSwan 5.9.8)\n"
    "Dec  4 15:44:22 00[LIB] plugin 'cmac': failed to load - not found\n"
    "Dec  4 15:44:22 00[LIB] failed to open /dev/net/tun: No such file or "
    "directory\n"
    "Dec  4 15:44:22 00[DMN] initialization failed - aborting charon\n"
)


class FakeDriver(Driver):
    """A driver whose plans name their steps and whose actions only record."""

    system = "linux"

    def __init__(self, base: Path, fail: dict | None = None, charon_log=None):
        self.base = base
        self.fail = fail or {}  # argv -> (status, stderr)
        self.charon_log = charon_log  # written, then charon "dies"
        self.calls: list[tuple] = []
        self.lock = threading.Lock()

    def record(self, *call) -> None:
        with self.lock:
            self.calls.append(call)

    def layout(self, profile) -> Layout:
        name = profile if isinstance(profile, str) else profile.name
        run = self.base / name / "run"
        return Layout(name, f"fake-{name}", f"fk-{name}", "eth0", str(run),
                      str(run), str(run / "charon.vici"), str(run / "charon.log"),
                      f"fake_{name}")  # fmt: skip

    def needs(self, profile) -> Needs:
        return Needs(tun=False, kernel_ipsec=False)

    def plan_up(self, profile, link, charon_conf) -> Plan:
        n = profile.name
        plan = Plan(n)
        for step in ("stack", "link", "firewall"):
            plan.add(step, [Run(("make", step, n))], [Run(("remove", step, n))])
        conf = WriteFile(str(self.base / n / "run" / "strongswan.conf"), charon_conf)
        plan.add("charon", [conf, Spawn("charon", ("charon",))],
                 [Run(("remove", "charon", n))])  # fmt: skip
        self.record("plan_up", n, link)
        return plan

    def plan_down(self, name) -> Plan:
        plan = Plan(name)
        plan.add("down", [Run(("remove", "all", name), ok_codes=(0, 1))])
        return plan

    def run(self, action, layout):
        self.record("run", action.argv)
        status, stderr = self.fail.get(action.argv, (0, ""))
        return subprocess.CompletedProcess(action.argv, status, "", stderr)

    def spawn(self, action, layout) -> int:
        self.record("spawn", action.name, layout.name)
        time.sleep(0.01)  # lets parallel profiles interleave
        return 4242

    def wait_started(self, action, layout, pid, timeout) -> None:
        self.record("wait_started", action.name, layout.name)
        if self.charon_log is not None:
            Path(layout.log_file).write_text(self.charon_log)
            raise RuntimeError("charon exited during start")

    def stop(self, layout) -> None:
        self.record("stop", layout.name)

    def forget(self, layout) -> None:
        self.record("forget", layout.name)
        shutil.rmtree(self.base / layout.name, ignore_errors=True)


@pytest.fixture
def vici(monkeypatch) -> list:
    """vici_control's functions as fakes; returns what was loaded."""
    loaded = []
    monkeypatch.setattr(vici_control, "connect", lambda path, timeout: path)
    monkeypatch.setattr(
        vici_control, "load", lambda s, conns, secrets: loaded.append(secrets)
    )
    monkeypatch.setattr(vici_control, "initiate", lambda s, child, timeout: None)
    monkeypatch.setattr(vici_control, "virtual_ip", lambda s: VIP)
    monkeypatch.setattr(vici_control, "reachable", lambda path: True)
    monkeypatch.setattr(vici_control, "established", lambda s: True)
    monkeypatch.setenv("VJ_MANAGER_PSK", PSK)
    return loaded


def item(name: str = "office", **changes) -> LoadedProfile:
    data = {
        "name": name,
        "gateway": "198.51.100.10",
        "ike": {"proposals": ["aes256-sha256-modp2048"],
                "esp_proposals": ["aes256-sha256"]},
        "local_id": {"type": "keyid", "value": "labgroup"},
        "auth": {"psk": {"env": "VJ_MANAGER_PSK"}},
    }  # fmt: skip
    data.update(changes)
    return LoadedProfile(Path(f"/p/{name}.yaml"), Profile.model_validate(data))


def manager_for(tmp_path, link_pool="192.0.2.0/24", **driver_options):
    driver = FakeDriver(tmp_path / "stacks", **driver_options)
    return Manager(driver, State(str(tmp_path / "state")), link_pool, timeout=1.0)


def runs(manager) -> list[tuple]:
    return [call[1] for call in manager.driver.calls if call[0] == "run"]


# -- up -----------------------------------------------------------------------


def test_up_one_carries_out_the_plan_and_records_the_profile(tmp_path, vici):
    manager = manager_for(tmp_path)
    office = item()
    assert manager.up_one(office, [office]) == Outcome(
        "office", True, f"up, virtual IP {VIP}"
    )
    assert runs(manager) == [("make", s, "office") for s in ("stack", "link",
                                                             "firewall")]  # fmt: skip
    record = manager.state.load("office")
    assert (record["phase"], record["link"], record["virtual_ip"]) == (
        "up",
        {"host": "192.0.2.1/30", "jail": "192.0.2.2/30"},
        VIP,
    )
    # The real secret goes to charon over VICI, nowhere else.
    assert vici[0][0]["data"] == PSK


def test_a_profile_with_a_link_keeps_it(tmp_path, vici):
    manager = manager_for(tmp_path)
    office = item(link={"host": "198.51.100.129/30", "jail": "198.51.100.130/30"})
    assert manager.up_one(office, [office]).ok
    assert manager.driver.calls[0] == (
        "plan_up",
        "office",
        LinkAddresses("198.51.100.129/30", "198.51.100.130/30"),
    )


def test_an_unset_secret_fails_before_anything_is_created(tmp_path, vici, monkeypatch):
    monkeypatch.delenv("VJ_MANAGER_PSK")
    manager = manager_for(tmp_path)
    outcome = manager.up_one(item(), [item()])
    assert outcome == Outcome(
        "office",
        False,
        "/p/office.yaml: auth.psk: environment variable VJ_MANAGER_PSK is not "
        "set; export it",
    )
    assert manager.driver.calls == []
    assert manager.state.names() == []


def test_a_running_profile_with_its_tunnel_up_is_left_alone(tmp_path, vici):
    manager = manager_for(tmp_path)
    office = item()
    manager.state.save("office", {"name": "office"})
    socket_path = Path(manager.driver.layout("office").vici_socket)
    socket_path.parent.mkdir(parents=True)
    socket_path.touch()  # stands for charon's VICI socket
    assert manager.up_one(office, [office]) == Outcome(
        "office", True, "already running"
    )
    assert manager.driver.calls == []


# -- rollback -----------------------------------------------------------------


def test_a_failed_step_rolls_back_and_says_so(tmp_path, vici):
    fail = {("make", "firewall", "office"): (2, "Error: table exists\n")}
    manager = manager_for(tmp_path, fail=fail)
    outcome = manager.up_one(item(), [item()])
    assert outcome == Outcome(
        "office",
        False,
        "`[host] make firewall office` failed with status 2: Error: table "
        "exists; everything it created was removed",
    )
    assert manager.state.load("office") is None
    assert manager.state.names() == []


def test_rollback_stops_then_undoes_completed_steps_in_reverse(tmp_path, vici):
    fail = {("make", "firewall", "office"): (2, "Error: table exists\n")}
    manager = manager_for(tmp_path, fail=fail)
    manager.up_one(item(), [item()])
    calls = [c for c in manager.driver.calls if c[0] in ("run", "stop", "forget")]
    after = calls[calls.index(("run", ("make", "firewall", "office"))) + 1 :]
    assert after[0] == ("stop", "office")
    assert after[-1] == ("forget", "office")
    undone = [c[1] for c in after if c[0] == "run"]
    assert undone[-2:] == [("remove", "link", "office"), ("remove", "stack", "office")]


def test_rollback_skips_the_undo_of_steps_never_started(tmp_path, vici):
    fail = {("make", "firewall", "office"): (2, "Error: table exists\n")}
    manager = manager_for(tmp_path, fail=fail)
    manager.up_one(item(), [item()])
    assert ("run", ("remove", "charon", "office")) not in manager.driver.calls


def test_charon_dying_rolls_back_every_step_and_keeps_its_log(tmp_path, vici):
    manager = manager_for(tmp_path, charon_log=CHARON_DIED)
    outcome = manager.up_one(item(), [item()])
    assert outcome.message == (
        "charon exited during start; everything it created was removed; "
        "charon said: failed to open /dev/net/tun: No such file or directory"
    )
    # The first three runs made stack, link and firewall; the rest undo.
    undone = [c[1][:2] for c in manager.driver.calls if c[:1] == ("run",)][3:]
    assert undone == [("remove", "charon"), ("remove", "firewall"),
                      ("remove", "link"), ("remove", "stack")]  # fmt: skip
    assert Path(manager.failed_log("office")).read_text() == CHARON_DIED
    assert ("stop", "office") in manager.driver.calls
    assert manager.state.names() == []


def test_a_failure_before_charon_does_not_quote_an_older_log(tmp_path, vici):
    manager = manager_for(tmp_path, charon_log=CHARON_DIED)
    manager.up_one(item(), [item()])  # leaves office.failed.log
    manager.driver.charon_log = None
    manager.driver.fail = {("make", "stack", "office"): (2, "File exists\n")}
    outcome = manager.up_one(item(), [item()])
    assert "charon said" not in outcome.message


# -- links --------------------------------------------------------------------


def test_up_many_gives_parallel_profiles_distinct_links(tmp_path, vici):
    fixed = item("fixed", link={"host": "192.0.2.1/30", "jail": "192.0.2.2/30"})
    everyone = [item(f"p{n}") for n in range(8)] + [fixed]
    manager = manager_for(tmp_path)
    outcomes = manager.up_many(everyone)
    assert [o.ok for o in outcomes] == [True] * len(everyone)
    links = [manager.state.load(i.profile.name)["link"] for i in everyone]
    hosts = {link["host"] for link in links}
    assert len(hosts) == len(everyone)
    # The fixed profile's link, the pool's first /30, is nobody else's.
    assert sorted(hosts) == sorted(f"192.0.2.{4 * n + 1}/30" for n in range(9))


def test_a_new_profile_avoids_links_of_running_ones(tmp_path, vici):
    manager = manager_for(tmp_path)
    manager.state.save(
        "home",
        {"name": "home", "link": {"host": "192.0.2.1/30", "jail": "192.0.2.2/30"}},
    )
    assert manager.up_one(item(), [item()]).ok
    assert manager.state.load("office")["link"]["host"] == "192.0.2.5/30"


def test_up_many_reports_an_exhausted_pool_as_an_outcome(tmp_path, vici):
    manager = manager_for(tmp_path, link_pool="192.0.2.0/30")
    outcomes = manager.up_many([item("office"), item("home")])
    assert sorted(o.ok for o in outcomes) == [False, True]
    assert "--link-pool" in [o for o in outcomes if not o.ok][0].message


# -- down ---------------------------------------------------------------------


def test_down_of_a_profile_not_running_says_so(tmp_path):
    manager = manager_for(tmp_path)
    assert manager.down(["office"]) == [Outcome("office", False, "not running")]
    assert manager.driver.calls == []


def test_down_stops_removes_and_forgets(tmp_path):
    manager = manager_for(tmp_path)
    manager.state.save("office", {"name": "office"})
    assert manager.down(["office"]) == [Outcome("office", True, "down")]
    assert manager.driver.calls == [
        ("stop", "office"),
        ("run", ("remove", "all", "office")),
        ("forget", "office"),
    ]
    assert manager.state.names() == []


def test_down_reports_a_command_that_failed(tmp_path):
    manager = manager_for(
        tmp_path, fail={("remove", "all", "office"): (2, "Device busy\n")}
    )
    manager.state.save("office", {"name": "office"})
    assert manager.down(["office"]) == [
        Outcome("office", False, "[host] remove all office: Device busy")
    ]
    assert manager.state.names() == []


# -- telling lines --------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "telling"),
    [
        (CHARON_DIED, "failed to open /dev/net/tun: No such file or directory"),
        (
            "Dec  4 15:46:24 11[IKE] <fgt|1> received NO_PROPOSAL_CHOSEN error "
            "notify\n",
            "<fgt|1> received NO_PROPOSAL_CHOSEN error notify",
        ),
        (
            "Dec  4 15:44:20 00[LIB] plugin 'curve25519': failed to load - x\n"
            "Dec  4 15:44:20 07[KNL] <fgt|1> unable to add SAD entry with SPI "
            "c968ed64 (FAILED)\n",
            "<fgt|1> unable to add SAD entry with SPI c968ed64 (FAILED)",
        ),
        ("Dec  4 15:44:20 00[DMN] Starting IKE charon daemon\n", None),
        ("", None),
    ],
    ids=["no-tun", "no-proposal", "skips-missing-c-plugins", "quiet", "empty"],
)
def test_telling_line_is_the_first_line_saying_what_went_wrong(
    tmp_path, lines, telling
):
    log = tmp_path / "charon.log"
    log.write_text(lines)
    assert telling_line(str(log)) == telling


def test_telling_line_of_no_log_is_none(tmp_path):
    assert telling_line(str(tmp_path / "missing.log")) is None


def sample(name: str) -> str:
    path = LOGS / name / "client.log"
    assert path.is_file(), f"sample log {path} is missing"
    return str(path)


@pytest.mark.parametrize(
    ("cell", "words"),
    [
        ("no-tun", "failed to open /dev/net/tun"),
        ("no-proposal-phase1", "NO_PROPOSAL_CHOSEN"),
        ("wrong-id", "AUTHENTICATION_FAILED"),
        ("wrong-xauth", "XAuth authentication of 'alice' (myself) failed"),
    ],
)
def test_telling_line_of_recorded_failures(cell, words):
    assert words in (telling_line(sample(cell)) or "")


@pytest.mark.parametrize(
    ("cell", "words"),
    [
        ("sad-netlink", "SAD entry"),
        ("no-proposal-phase2", "NO_PROPOSAL_CHOSEN"),
        ("timeout", "peer not responding"),
        # The client's own verdict on the gateway's HASH names the cause
        # better than the AUTH_FAILED notify that follows it.
        ("wrong-psk", "calculated HASH does not match"),
    ],
)
def test_telling_line_of_recorded_failures_skips_harmless_lines(cell, words):
    assert words in (telling_line(sample(cell)) or "")
