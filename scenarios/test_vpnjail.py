"""vpnjail in the lab: the tunnel manager makes the client side itself.

Every test builds a world with two FortiGate-like gateways (same protected
network, same virtual-IP pool) and a bare host namespace in which vpnjail
works (``--host-netns``). vpnjail creates the profiles' stacks, links, NAT
and port forwards there, exactly as it would on a real host.
"""

import hashlib
import json
import os
import secrets
import signal
import sys
import time

import pytest

from lab import classify, gateways, results, schema, topology
from lab.capabilities import values
from lab.expectations import expected
from lab.matrix import Cell, select
from lab.pytest_plugin import axis_selection
from lab.redact import Redactor
from lab.vpnjail_runner import VpnjailRunner
from lab.wait import wait_until

GW = topology.GATEWAY_ADDRESSES
PROTECTED = ("203.0.113.10", 8080)
JAIL_PORT = 8022


def _label(request, kind: str) -> str:
    return f"{kind}{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]}"


@pytest.fixture
def gws(lab_run, request):
    platform = lab_run["platform"]
    if getattr(platform, "responder", "namespaces") == "vm":
        pytest.skip(
            "--responder vm has one responder; vpnjail's scenarios need two "
            "gateways: run them with --responder namespaces (the default)"
        )
    lab = lab_run["config"]
    world = platform.build_gateways(
        lab_run["id"], lab_run["runtime"], _label(request, "vjw")
    )
    spec = schema.Responder.model_validate(
        {
            **lab.responder.model_dump(),
            # The client fixture's password, for as many users as profiles.
            "xauth_users": gateways.dialup_users(60, lab.client.xauth.password),
            "mode_config": {
                **lab.responder.mode_config.model_dump(),
                "pool": "203.0.113.128/25",
            },
        }
    )
    backend = platform.responder_backend(values(lab_run["capabilities"]))
    started = None
    try:
        started = gateways.start(platform, world, spec, backend)
        yield started
    finally:
        if started is not None:
            started.stop()
        platform.teardown(world)


@pytest.fixture
def vpnjail(gws, lab_run, tmp_path, request):
    lab = lab_run["config"]
    runner = VpnjailRunner(
        gws.world, lab_run["id"], tmp_path, _label(request, "vjp"),
        lab.client.psk, lab.client.xauth.password,
    )  # fmt: skip
    yield runner
    runner.cli("down", "--all")
    runner.cli("gc")


def _status(vpnjail) -> dict[str, dict]:
    result = vpnjail.cli("status", "--json")
    return {entry["name"]: entry for entry in json.loads(result.stdout or "[]")}


def _serve_in_stack(vpnjail, name: str) -> object:
    """The jail's own service, for forwards that end in the jail."""
    import subprocess

    process = subprocess.Popen(
        ["ip", "netns", "exec", vpnjail.stack(name), sys.executable, "-m",
         "lab.service", "serve", "--address", "0.0.0.0", "--port", str(JAIL_PORT),
         "--name", f"jail-{name}"],
        env=vpnjail.env(), cwd=os.path.dirname(os.path.dirname(__file__)),
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def listening():
        check = vpnjail.in_stack(name, ["ss", "-Hltn", f"sport = :{JAIL_PORT}"])
        return None if check.stdout.strip() else "jail service not listening"

    wait_until(listening, 10, f"{name}: jail service")
    return process


def _ask_from_wan(gws, vpnjail, port: int, expect: str) -> tuple[bool, str]:
    token = secrets.token_hex(4)
    result = gws.world.node("wan").run(
        ["env", f"PYTHONPATH={os.path.dirname(os.path.dirname(__file__))}",
         sys.executable, "-m", "lab.service", "ask", "--address",
         topology.HOST_WAN_ADDRESS, "--port", str(port), "--token", token,
         "--expect-name", expect],
        check=False,
    )  # fmt: skip
    return result.ok, (result.stdout or result.stderr).strip()


CELLS = [
    ("libipsec", "tun-visible", "auto"),
    ("libipsec", "tun-hidden", "hidden"),
    ("kernel", "tun-visible", "exposed"),
    ("kernel", "tun-hidden", "auto"),
]


def _cell(backend: str, devices: str) -> Cell:
    axis = "netlink" if backend == "kernel" else backend
    axes = (
        ("isolation", "jail"),
        ("backend", axis),
        ("devices", devices),
        ("nat", "nat"),
        ("auth", "good"),
    )
    return Cell("vpnjail", axes)


def pytest_generate_tests(metafunc):
    if "tun" in metafunc.fixturenames:
        chosen = select(
            [_cell(b, d) for b, d, _ in CELLS], axis_selection(metafunc.config)
        )
        wanted = {c.id for c in chosen}
        params = [c for c in CELLS if _cell(c[0], c[1]).id in wanted]
        metafunc.parametrize(
            ("backend", "devices", "tun"),
            params,
            ids=[f"{b}/{d}" for b, d, _ in params],
        )


def test_profile_cell_matches_the_lab(lab_run, gws, vpnjail, backend, devices, tun):
    """One profile per backend and device policy: same outcome as lab cells."""
    lab = lab_run["config"]
    axes = (
        ("isolation", "jail"),
        ("backend", "netlink" if backend == "kernel" else "libipsec"),
        ("devices", devices),
        ("nat", "nat"),
        ("auth", "good"),
    )
    cell = Cell("vpnjail", axes)  # fmt: skip
    expectation = expected(lab.expectations, cell, values(lab_run["capabilities"]))
    vpnjail.write_profile(
        "cell", GW["gw-a"], "user01", backend=backend, tun=tun,
        forwards=[{"host_port": 9022, "to": "jail", "port": JAIL_PORT},
                  {"host_port": 9080, "to": PROTECTED[0], "port": PROTECTED[1]}],
    )  # fmt: skip
    started = time.monotonic()

    up = vpnjail.cli("up", "--skip-check", "cell")
    outcome = _classify(gws, vpnjail, up.returncode == 0)

    _record(lab_run, cell, expectation, outcome, time.monotonic() - started, vpnjail)
    assert str(outcome) == str(expectation.outcome), (
        f"vpnjail cell {cell.id}: expected {expectation.outcome}, got {outcome} "
        f"({outcome.detail}); `vpnjail up cell` said: {up.stdout}{up.stderr}"
        f"\ndeciding: {outcome.deciding}"
    )


def _classify(gws, vpnjail, up_ok: bool) -> classify.Outcome:
    log = vpnjail.charon_log("cell")
    children, traffic = [], {}
    if up_ok:
        status = _status(vpnjail).get("cell", {})
        children = [c["name"] for c in status.get("children", [])
                    if c["state"] == "INSTALLED"]  # fmt: skip
        traffic = _traffic(gws, vpnjail)
    evidence = classify.Evidence(
        client_log=log,
        responder_log=gws.daemons["gw-a"].charon.read_log(),
        client_started="initialization failed" not in log,
        client_alive=up_ok,
        initiate_error=None,
        children=children,
        traffic=traffic,
        backend="libipsec" if "kernel-libipsec!" in log or "kernel-libipsec" in
        _loaded(log) else "netlink",
        loaded_plugins=_loaded(log),
    )  # fmt: skip
    return classify.classify(evidence)


def _loaded(log: str) -> str:
    for line in log.splitlines():
        if "loaded plugins:" in line:
            return line.split("loaded plugins:", 1)[1]
    return ""


def _traffic(gws, vpnjail) -> dict[str, str | None]:
    server = _serve_in_stack(vpnjail, "cell")
    try:
        ping = vpnjail.in_stack("cell", ["ping", "-c", "2", "-i", "0.2", "-W", "2",
                                         PROTECTED[0]])  # fmt: skip
        ok, tcp = vpnjail.ask(
            "cell", *PROTECTED, secrets.token_hex(4), gws.names["gw-a"]
        )
        into_jail = _ask_from_wan(gws, vpnjail, 9022, "jail-cell")
        through = _ask_from_wan(gws, vpnjail, 9080, gws.names["gw-a"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    return {
        "ping": None if ping.returncode == 0 else "no ping replies through the tunnel",
        "tcp": None if ok else f"TCP to the protected service: {tcp}",
        "forward": None if into_jail[0] else f"host:9022 -> jail: {into_jail[1]}",
        "forward-tunnel": None if through[0] else f"host:9080 -> tunnel: {through[1]}",
    }


def _record(lab_run, cell, expectation, outcome, seconds, vpnjail) -> None:
    folder = os.path.join(lab_run["dir"], "cells", cell.slug)
    os.makedirs(folder, exist_ok=True)
    redactor = Redactor([vpnjail.secrets.joinpath(n).read_text().strip()
                         for n in ("psk", "xauth")])  # fmt: skip
    with open(os.path.join(folder, "client-charon.log"), "w") as out:
        out.write(redactor.text(vpnjail.charon_log("cell")))
    record = results.CellRecord(
        id=cell.id, axes=cell.as_dict(), expected=str(expectation.outcome),
        outcome=str(outcome),
        verdict=results.verdict(str(expectation.outcome), str(outcome)),
        detail=outcome.detail, duration=round(seconds, 2),
        evidence=os.path.relpath(folder, lab_run["dir"]),
        why_expected=expectation.why,
        deciding=[list(pair) for pair in outcome.deciding],
    )  # fmt: skip
    results.write_record(lab_run["dir"], record)


def test_up_refuses_what_the_host_cannot_run(lab_run, gws, vpnjail):
    """Without --skip-check, a profile this host cannot serve is refused by
    the preflight, naming the fix, before anything is created."""
    if values(lab_run["capabilities"])["esp"]:
        pytest.skip("this kernel has ESP: a kernel-backend profile is fine here")
    vpnjail.write_profile("nokernel", GW["gw-a"], "user13", backend="kernel")

    up = vpnjail.cli("up", "nokernel")

    assert up.returncode == 2, up.stdout + up.stderr
    assert "the kernel refuses ESP SAs" in up.stderr and "modprobe" in up.stderr
    assert not [n for n in _netns() if n.startswith(vpnjail.prefix)]


def test_ten_profiles_two_gateways_overlapping(gws, vpnjail):
    """Ten profiles at once, five per gateway; both gateways share a remote
    network and a pool, so virtual IPs overlap, and each profile still
    reaches its own gateway's service."""
    homes = {}
    for n in range(1, 11):
        role = "gw-a" if n <= 5 else "gw-b"
        name = f"p{n:02d}"
        homes[name] = role
        vpnjail.write_profile(name, GW[role], f"user{n:02d}")

    up = vpnjail.cli("up", "--all")

    assert up.returncode == 0, f"vpnjail up --all: {up.stdout}{up.stderr}"
    status = _status(vpnjail)
    assert sorted(status) == sorted(homes), status
    for name, role in homes.items():
        assert status[name]["state"] == "up", f"{name}: {status[name]}"
        ok, answer = vpnjail.ask(
            name, *PROTECTED, secrets.token_hex(4), gws.names[role]
        )
        assert ok, f"{name} ({role}): expected {gws.names[role]}, got {answer!r}"
    vips = {role: {status[n]["virtual_ip"] for n, r in homes.items() if r == role}
            for role in ("gw-a", "gw-b")}  # fmt: skip
    assert len(vips["gw-a"]) == 5 and len(vips["gw-b"]) == 5, vips
    assert vips["gw-a"] & vips["gw-b"], f"pools should hand out the same IPs: {vips}"


def test_port_forward_through_the_jail_into_the_tunnel(gws, vpnjail):
    vpnjail.write_profile(
        "fwd", GW["gw-b"], "user11",
        forwards=[{"host_port": 9080, "to": PROTECTED[0], "port": PROTECTED[1]},
                  {"host_port": 9022, "to": "jail", "port": JAIL_PORT}],
    )  # fmt: skip

    up = vpnjail.cli("up", "fwd")

    assert up.returncode == 0, f"vpnjail up fwd: {up.stdout}{up.stderr}"
    ok, answer = _ask_from_wan(gws, vpnjail, 9080, gws.names["gw-b"])
    assert ok, (
        f"wan -> host:9080 -> jail -> tunnel: expected {gws.names['gw-b']}, "
        f"got {answer!r}"
    )
    server = _serve_in_stack(vpnjail, "fwd")
    try:
        ok, answer = _ask_from_wan(gws, vpnjail, 9022, "jail-fwd")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert ok, f"wan -> host:9022 -> jail: expected jail-fwd, got {answer!r}"


def test_supervisor_recovers_within_the_dpd_window(lab_run, gws, vpnjail, tmp_path):
    delay, timeout = 2, 6
    vpnjail.write_profile("sup", GW["gw-a"], "user12", dpd=(delay, timeout))
    supervisor = vpnjail.supervise(str(tmp_path / "supervisor.log"))
    try:
        wait_until(lambda: _up_and_reaching(gws, vpnjail, "sup"), 30, "sup: first up")

        gateways.restart(lab_run["platform"], gws, "gw-a")
        restarted = time.monotonic()
        wait_until(lambda: _up_and_reaching(gws, vpnjail, "sup"), 60, "sup: back")
        recovered = time.monotonic() - restarted

        charon = int(open(os.path.join(vpnjail.state_dir, "sup", "charon.pid")).read())
        os.kill(charon, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: _up_and_reaching(gws, vpnjail, "sup"), 60, "sup: revived")
        revived = time.monotonic() - killed
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=20)
    window = delay + timeout
    assert recovered <= window + 4, (
        f"sup: back {recovered:.1f}s after the gateway restarted; DPD window "
        f"{window}s (+4s to re-initiate)"
    )
    assert revived <= 15, f"sup: charon killed, tunnel back only after {revived:.1f}s"


def _up_and_reaching(gws, vpnjail, name: str) -> str | None:
    status = _status(vpnjail).get(name, {})
    if status.get("state") != "up":
        return f"state {status.get('state')}"
    ok, answer = vpnjail.ask(name, *PROTECTED, secrets.token_hex(4), gws.names["gw-a"])
    return None if ok else f"no answer through the tunnel: {answer}"


def test_down_and_gc_leave_nothing_behind(gws, vpnjail):
    for n, name in enumerate(("d1", "d2", "d3"), start=20):
        vpnjail.write_profile(name, GW["gw-a"], f"user{n}")
    assert vpnjail.cli("up", "--all").returncode == 0
    crashed = int(open(os.path.join(vpnjail.state_dir, "d3", "charon.pid")).read())
    os.kill(crashed, signal.SIGKILL)

    down = vpnjail.cli("down", "d1", "d2")
    gc = vpnjail.cli("gc")

    assert down.returncode == 0, down.stdout + down.stderr
    assert gc.returncode == 0, gc.stdout + gc.stderr
    host = gws.world.node("host")
    leftovers = {
        "namespaces": [n for n in _netns() if n.startswith(vpnjail.prefix)],
        "links": [line for line in host.check_output(["ip", "-o", "link"]).splitlines()
                  if ": vj-" in line],
        "rules": host.check_output(["nft", "list", "tables"]).split(),
        "processes": _processes_using(vpnjail.state_dir),
        "files": os.listdir(vpnjail.state_dir) if os.path.exists(vpnjail.state_dir)
        else [],
    }  # fmt: skip
    assert all(not found for found in leftovers.values()), leftovers


def _netns() -> list[str]:
    import subprocess

    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _processes_using(path: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as src:
                cmdline = src.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmdline or (f"{path}/" in cmdline):
            found.append(f"{pid}: {cmdline}")
    return found


def test_objects_it_does_not_own_are_left_alone(gws, vpnjail):
    """A namespace that merely carries vpnjail's prefix and a profile's name
    is neither taken over by `up` nor removed by `up`'s rollback or `gc`."""
    import subprocess

    foreign = vpnjail.stack("foreign")
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        vpnjail.write_profile("foreign", GW["gw-a"], "user30")

        up = vpnjail.cli("up", "foreign")
        gc = vpnjail.cli("gc")

        assert up.returncode == 1, up.stdout + up.stderr
        assert "already exists and not managed" in up.stdout, up.stdout
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert foreign in _netns(), f"{foreign} was removed: {up.stdout}{gc.stdout}"
    finally:
        subprocess.run(["ip", "netns", "delete", foreign], check=False)
