"""Running one cell: the steps every platform shares.

1. start the protected service, the jail's service and the wan capture;
2. start the responder and the client charon in their sandboxes;
3. load both over VICI and initiate the client's CHILD_SA;
4. when it is up, ping and talk TCP through it and try the host's port
   forward;
5. read both daemons' words and state, classify, keep the evidence.
"""

import logging
import os
import secrets
import time
from dataclasses import dataclass, field

from lab import client, responder, strongswan, topology, vici_client
from lab.classify import Evidence, classify
from lab.config import LabConfig
from lab.evidence import EvidenceDir
from lab.outcome import Outcome
from lab.platforms.base import Platform, Stack, World
from lab.redact import Redactor
from lab.wait import WaitTimeout, wait_until

log = logging.getLogger(__name__)

INITIATE_TIMEOUT_MS = 30000
RESPONDER_CHILD_TIMEOUT = 10.0


@dataclass
class CellReport:
    outcome: Outcome
    evidence: str
    client_state: dict = field(default_factory=dict)
    traffic: dict = field(default_factory=dict)


@dataclass
class Daemon:
    role: str  # "client" or "responder"
    stack: Stack
    config: responder.DaemonConfig
    backend: str
    charon: strongswan.Charon | None = None
    session: object = None
    started: bool = False


def redactor_for(config: LabConfig) -> Redactor:
    auth_secrets = []
    for overrides in config.matrix.auth.values():
        spec = client.with_overrides(config.client, overrides)
        auth_secrets += client.secret_values(spec)
    return Redactor(responder.secret_values(config.responder) + auth_secrets)


def run_cell(
    platform: Platform,
    world: World,
    config: LabConfig,
    capabilities: dict[str, bool],
    evidence: EvidenceDir,
) -> CellReport:
    daemons = {}
    try:
        daemons = prepare(platform, world, config, capabilities)
        gw, cl = daemons["responder"], daemons["client"]
        if not gw.started:
            return _responder_failed(gw, evidence)
        initiate_error = initiate(cl) if cl.started else None
        children = _children(cl)
        if children:
            wait_for_responder_children(gw)
        traffic = (
            check_traffic(platform, world, config.responder.name) if children else {}
        )
        outcome = classify(_evidence(cl, gw, initiate_error, children, traffic))
        return _finish(platform, daemons, outcome, traffic, evidence)
    finally:
        stop(daemons)


def harness_failure(exc: Exception, evidence: EvidenceDir) -> CellReport:
    """A cell whose harness raised: recorded as ERROR with what it said."""
    log.exception("the harness failed in this cell")
    detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return CellReport(Outcome("ERROR", "", f"harness failed: {detail}"), evidence.path)


def prepare(
    platform: Platform,
    world: World,
    config: LabConfig,
    capabilities: dict[str, bool],
) -> dict:
    """Services, capture, responder and client up; the client not initiated."""
    cell = world.cell
    overrides = config.matrix.auth[cell["auth"]]
    client_spec = client.with_overrides(config.client, overrides)
    gw = Daemon(
        "responder",
        world.responder,
        responder.build(config.responder, topology.GATEWAY_ADDRESS),
        platform.responder_backend(capabilities),
    )
    cl = Daemon(
        "client",
        world.client,
        client.build(client_spec, topology.GATEWAY_ADDRESS),
        cell["backend"],
    )
    daemons = {"responder": gw, "client": cl}
    start_services(platform, world, config.responder.name)
    daemons["capture"] = start_capture(world)
    start_daemon(platform, gw)
    if gw.started:
        start_daemon(platform, cl)
    return daemons


def stop(daemons: dict) -> None:
    for role in ("client", "responder"):
        daemon = daemons.get(role)
        if daemon is not None and daemon.charon is not None:
            daemon.charon.stop()


def start_services(platform: Platform, world: World, gateway_name: str) -> None:
    for service, name in (
        (topology.PROTECTED_SERVICE, f"{gateway_name}-lan"),
        (topology.JAIL_SERVICE, "jail"),
    ):
        start_service(platform, world, service, name)


def start_service(
    platform: Platform, world: World, service: topology.Service, name: str
) -> None:
    node = world.node(service.node)
    node.spawn(
        platform.python_argv(
            node, "lab.service", "serve", "--address", service.address,
            "--port", str(service.port), "--name", name,
        ),
        log_path=os.path.join(world.runtime_dir, f"service-{service.node}.log"),
    )  # fmt: skip
    wait_until(
        lambda: _listening(platform, node, service.port),
        10,
        f"{node.label}: service on port {service.port}",
    )


def _listening(platform: Platform, node, port: int) -> str | None:
    result = node.run(platform.listening_argv(node, port), check=False)
    return None if result.stdout.strip() else f"nothing listens on {port}"


def start_capture(world: World):
    node_role, interface = topology.CAPTURE
    node = world.node(node_role)
    path = os.path.join(world.runtime_dir, "wan.pcap")
    process = node.spawn(
        # Without --immediate-mode tcpdump buffers in the kernel and a capture
        # stopped a second later holds nothing.
        [
            "tcpdump",
            "-i",
            interface,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            path,
        ],
        log_path=os.path.join(world.runtime_dir, "tcpdump.log"),
    )

    def listening() -> str | None:
        with open(process.log_path, errors="replace") as out:
            if "listening on" in out.read():
                return None
        if process.exited() is not None:
            raise RuntimeError(f"{node.label}: tcpdump exited; see {process.log_path}")
        return "tcpdump not listening yet"

    wait_until(listening, 10, f"{node.label}: capture on {interface}")
    return process, path


def start_daemon(platform: Platform, daemon: Daemon) -> None:
    system = platform.system_of(daemon.stack)
    daemon.charon = platform.charon(daemon.stack)
    settings = strongswan.charon_settings(system, daemon.backend, daemon.config.charon)
    daemon.charon.write_config(settings)
    daemon.charon.start(system)
    if not daemon.charon.running():
        log.debug("%s: charon exited during start", daemon.role)
        return
    daemon.session = vici_client.connect(daemon.charon.vici_socket)
    vici_client.load(
        daemon.session, daemon.config.conns, daemon.config.secrets, daemon.config.pools
    )
    daemon.started = True


def initiate(daemon: Daemon) -> str | None:
    started = time.monotonic()
    error = vici_client.initiate(
        daemon.session, daemon.config.child, INITIATE_TIMEOUT_MS
    )
    log.debug(
        "client: initiate %s -> %s after %.2fs",
        daemon.config.child,
        error or "ok",
        time.monotonic() - started,
    )
    return error


def _children(daemon: Daemon) -> list[str]:
    if not daemon.started or not daemon.charon.running():
        return []
    sas = [vici_client.plain(sa) for sa in daemon.session.list_sas()]
    return vici_client.established_children(sas)


def wait_for_responder_children(gw: Daemon) -> None:
    """Until the responder has installed its CHILD_SA too, or a timeout.

    In IKEv1 the initiator may send ESP as soon as it has sent Quick Mode's
    last message; the responder installs its SAs only on receiving it. A
    slow responder (a guest under TCG) would otherwise lose the first
    packets of the traffic checks. A responder that never installs it is
    left for the checks and the evidence to show.
    """
    try:
        wait_until(
            lambda: None if _children(gw) else "no CHILD_SA installed yet",
            RESPONDER_CHILD_TIMEOUT,
            "responder: CHILD_SA installed",
            interval=0.1,
        )
    except WaitTimeout:
        log.debug("responder: no CHILD_SA after %ss", RESPONDER_CHILD_TIMEOUT)


def check_traffic(
    platform: Platform, world: World, gateway_name: str
) -> dict[str, str | None]:
    """Each check's None on success, else what went wrong."""
    client_node = world.client.node
    target = topology.PROTECTED_SERVICE
    forward = topology.Service(
        "host", topology.HOST_WAN_ADDRESS, topology.FORWARDED_PORT
    )
    return {
        "ping": _ping(platform, client_node, target.address),
        "tcp": _ask(platform, client_node, target, f"{gateway_name}-lan"),
        "forward": _ask(platform, world.node("wan"), forward, "jail"),
    }


def _ping(platform: Platform, node, address: str) -> str | None:
    result = node.run(platform.ping_argv(node, address), check=False, timeout=15)
    if result.ok:
        return None
    return f"{node.label}: `{result.command}` expected replies, got none"


def _ask(
    platform: Platform, node, service: topology.Service, expect: str
) -> str | None:
    token = secrets.token_hex(4)
    result = node.run(
        platform.python_argv(
            node, "lab.service", "ask", "--address", service.address,
            "--port", str(service.port), "--token", token, "--expect-name", expect,
        ),
        check=False,
        timeout=15,
    )  # fmt: skip
    if result.ok:
        return None
    answer = (result.stdout or result.stderr).strip() or "no answer"
    return (
        f"{node.label}: TCP to {service.address}:{service.port} expected "
        f"'{expect} {token}', got '{answer}'"
    )


def _evidence(cl: Daemon, gw: Daemon, initiate_error, children, traffic) -> Evidence:
    client_log = cl.charon.read_log()
    return Evidence(
        client_log=client_log,
        responder_log=gw.charon.read_log(),
        client_started=cl.started,
        client_alive=cl.charon.running(),
        initiate_error=initiate_error,
        children=children,
        traffic=traffic,
        backend=cl.backend,
        loaded_plugins=_loaded_plugins(client_log),
    )


def _loaded_plugins(log_text: str) -> str:
    for line in log_text.splitlines():
        if "loaded plugins:" in line:
            return line.split("loaded plugins:", 1)[1]
    return ""


def _responder_failed(gw: Daemon, evidence: EvidenceDir) -> CellReport:
    tail = gw.charon.read_log().strip().splitlines()[-3:]
    outcome = Outcome(
        "ERROR",
        "",
        "the responder charon did not start; the lab cannot judge the client",
        tuple(("responder", line) for line in tail),
    )
    _keep_daemon(evidence, gw)
    return CellReport(outcome, evidence.path)


def _finish(platform, daemons, outcome, traffic, evidence) -> CellReport:
    gw, cl = daemons["responder"], daemons["client"]
    client_state = _vici_state(cl)
    _keep_daemon(evidence, cl, client_state)
    _keep_daemon(evidence, gw, _vici_state(gw))
    for name, text in platform.kernel_state(cl.stack).items():
        evidence.write_text(f"client/kernel/{name}", text)
    for name, text in platform.responder_kernel_state(gw.stack).items():
        evidence.write_text(f"responder/kernel/{name}", text)
    process, path = daemons["capture"]
    process.stop()
    evidence.copy_binary("wan.pcap", path)
    return CellReport(outcome, evidence.path, client_state, traffic)


def _vici_state(daemon: Daemon) -> dict:
    if not daemon.started or not daemon.charon.running():
        return {}
    try:
        return vici_client.state(daemon.session)
    except OSError as exc:
        return {"error": f"VICI state unavailable: {exc}"}


def _keep_daemon(
    evidence: EvidenceDir, daemon: Daemon, state: dict | None = None
) -> None:
    role = daemon.role
    cfg = daemon.config
    evidence.copy_text(
        f"{role}/strongswan.conf", f"{daemon.stack.run_dir}/strongswan.conf"
    )
    evidence.write_text(
        f"{role}/swanctl.conf",
        strongswan.render_swanctl(cfg.conns, cfg.secrets, cfg.pools),
    )
    evidence.copy_text(f"{role}/charon.log", daemon.charon.log_path)
    evidence.copy_text(f"{role}/charon.out", f"{daemon.stack.run_dir}/charon.out")
    evidence.copy_text(f"{role}/sandbox.sh", f"{daemon.stack.run_dir}/sandbox.sh")
    if state is not None:
        evidence.write_json(f"{role}/vici.json", state)


__all__ = ["run_cell", "CellReport", "redactor_for", "WaitTimeout"]
