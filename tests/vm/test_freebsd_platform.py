"""lab/platforms/freebsd.py: the pieces that need no guest to be checked.

No guest boots and no namespace is made: commands are compared as lists,
and the layer cache runs in tmp_path.
"""

import io

import pytest

from lab import client, config, topology
from lab.netns import NetnsNode
from lab.outcome import Outcome
from lab.platforms import freebsd
from lab.vm import freebsd_provision as fp
from lab.vm import images
from lab.vm.guest_charon import GuestCharon
from lab.vm.spec import Nic
from lab.vm.ssh import SSHNode
from vpnjail.profile import Profile

RUN = "20260501-120000-abcd"
REPORTED = "freebsd/15.0/pkg/charon/vnet/pfkey/rs5/ipsec-unloaded/pf/good"


@pytest.fixture
def guest_node():
    return SSHNode("host", RUN, "127.0.0.1", 2222, "root", "/k/lab_ed25519")


@pytest.fixture
def jail_node(guest_node):
    return freebsd.JailNode(guest_node, "lab", "/var/db/vjlab/jails/lab")


@pytest.fixture
def platform(tmp_path):
    image_path = tmp_path / "FreeBSD-15.0-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2"
    image_path.write_bytes(b"QFI\xfb")
    image = images.Image(image_path, "15.0", "basic-cloudinit", "qcow2", "user")
    return freebsd.FreeBSDPlatform(
        freebsd.Settings(images={"15.0": image}, cache=tmp_path / "cache")
    )


def test_jail_node_maps_paths_below_its_root(jail_node):
    assert jail_node.guest_path("/run/charon.vici") == (
        "/var/db/vjlab/jails/lab/run/charon.vici"
    )
    assert jail_node.prefix()[-2:] == ["root@127.0.0.1", "--"]


def test_charon_factory_picks_by_node(platform, jail_node, tmp_path):
    from lab.platforms.base import Stack
    from lab.strongswan import Charon

    guest = platform.charon(Stack(jail_node, str(tmp_path), "rs5"))
    linux = platform.charon(Stack(NetnsNode("gw", RUN, netns="n"), str(tmp_path), "x"))

    assert isinstance(guest, GuestCharon)
    assert guest.vici_socket == str(tmp_path / "charon.vici")
    assert isinstance(linux, Charon)


def test_guest_config_is_rendered_locally_for_evidence(jail_node, tmp_path):
    charon = GuestCharon(jail_node, str(tmp_path / "jail"), RUN)

    path = charon.write_config({"load_modular": "no", "plugins": {"vici": {}}})

    assert open(path).read().startswith("charon {\n  load_modular = no\n")


def test_command_hooks_differ_between_guest_and_linux_nodes(platform, jail_node):
    linux = NetnsNode("lan", RUN, netns="n")

    assert platform.python_argv(jail_node, "lab.service", "serve") == [
        "env", "PYTHONPATH=/var/db/vjlab/py", "python3", "-m", "lab.service", "serve",
    ]  # fmt: skip
    assert platform.python_argv(linux, "lab.service")[2:] == [
        __import__("sys").executable, "-m", "lab.service",
    ]  # fmt: skip
    assert platform.listening_argv(jail_node, 8022) == [
        "sockstat", "-4", "-l", "-q", "-P", "tcp", "-p", "8022",
    ]  # fmt: skip
    assert platform.listening_argv(linux, 8080) == ["ss", "-Hltn", "sport = :8080"]
    assert platform.ping_argv(jail_node, "203.0.113.10")[5:7] == ["-W", "2000"]
    assert platform.ping_argv(linux, "203.0.113.10")[5:7] == ["-W", "2"]


def step(variant: str, errno: int, name: str) -> dict:
    return {"variant": variant, "errno": errno, "errno_name": name}


def test_probe_outcomes():
    missing = {
        "steps": [step("baseline", 22, "EINVAL")],
        "verdict": {"code": "ipsec-transform-missing", "summary": "no ESP",
                    "reasons": ["every ADD refused"]},
    }  # fmt: skip
    healthy = {
        "steps": [step("baseline", 0, "0")],
        "verdict": {"code": "algorithm", "summary": "fine", "reasons": []},
    }

    assert str(freebsd.probe_outcome(0, missing, "")) == "SAD_INSTALL_FAILED(EINVAL)"
    assert freebsd.probe_outcome(0, missing, "").deciding == (
        ("client", "every ADD refused"),
    )
    assert str(freebsd.probe_outcome(0, healthy, "")) == "UP(algorithm)"
    assert freebsd.probe_outcome(3, None, "no PF_KEY") == Outcome(
        "KERNEL_IPSEC_UNAVAILABLE", "socket"
    )
    assert (
        str(freebsd.probe_outcome(4, None, ""))
        == "KERNEL_IPSEC_UNAVAILABLE(capability)"
    )
    assert freebsd.probe_outcome(1, None, "boom").kind == "ERROR"


def test_guest_files_carry_the_probe_the_service_and_vpnjail():
    remote = {guest for _, guest in freebsd.guest_files()}

    assert "/var/db/vjlab/py/lab/service.py" in remote
    assert "/var/db/vjlab/py/lab/__init__.py" in remote
    assert "/var/db/vjlab/py/pfkey/probe.py" in remote
    assert "/var/db/vjlab/py/pfkey/pfkeyv2.py" in remote
    assert "/var/db/vjlab/py/vpnjail/drivers/freebsd.py" in remote
    assert not [path for path in remote if "__pycache__" in path]


def cell(**axes):
    base = dict(
        freebsd="15.0", strongswan="pkg", client="charon", isolation="vnet",
        backend="pfkey", devfs="rs5", ipsec="ipsec-unloaded", nat="pf", auth="good",
    )  # fmt: skip
    base.update(axes)
    from lab.matrix import Cell

    return Cell("freebsd", tuple(base.items()))


def test_which_jail_a_cell_gets():
    assert freebsd.jail_kind(cell()) == "vnet"
    assert freebsd.jail_kind(cell(isolation="jail", devfs="rs4")) == "jail"
    # A host-stack client still needs the jail that serves the port forward.
    assert freebsd.jail_kind(cell(isolation="host", devfs="hostdev")) == "vnet"
    assert freebsd.jail_devfs(cell(isolation="host", devfs="hostdev")) == "rs5"
    assert freebsd.jail_kind(cell(client="probe", isolation="host")) == "none"
    assert freebsd.jail_kind(cell(client="probe")) == "vnet"
    assert freebsd.jail_kind(cell(client="vpnjail", devfs="rs5tun")) == "none"


def test_reported_cell():
    assert freebsd.reported_cell(["14.3", "15.0"]).id == REPORTED


def test_vpnjail_profile_is_a_valid_vpnjail_profile():
    lab = config.load("freebsd")
    spec = client.with_overrides(lab.client, lab.matrix.auth["good"])

    for backend, expected in (("pfkey", "kernel"), ("libipsec", "libipsec")):
        profile = Profile.model_validate(freebsd.vpnjail_profile(spec, backend))
        assert profile.backend == expected
        assert str(profile.gateway) == topology.GATEWAY_ADDRESS
        assert profile.auth.xauth.user == spec.xauth.user


def test_vpnjail_runs_with_documentation_links_and_the_wan_as_egress():
    argv = freebsd.vpnjail_argv("up", "cell")

    assert argv[:4] == ["env", "PYTHONPATH=/var/db/vjlab/py", "python3", "-m"]
    assert argv[-6:] == ["--link-pool", "192.0.2.0/26", "--egress", "vtnet1", "up",
                         "cell"]  # fmt: skip


def test_installed_children_from_vpnjail_status():
    status = (
        '[{"name": "cell", "state": "up", "children": [{"name": "lab", '
        '"state": "INSTALLED"}, {"name": "old", "state": "REKEYED"}]}]'
    )
    assert freebsd._installed_children(status) == ["lab"]
    assert freebsd._installed_children("not json") == []


def test_guest_nics_are_a_local_forward_and_the_relay_socket():
    mgmt = freebsd._mgmt_nic(2222)
    wan = freebsd._wan_nic(40001, 40002)

    assert mgmt == Nic(kind="user", forwards=((2222, 22),), net="198.51.100.192/26")
    assert wan.kind == "socket"
    assert wan.name == "udp=127.0.0.1:40001,localaddr=127.0.0.1:40002"


def test_the_layer_is_keyed_and_reused(platform, monkeypatch):
    made = []

    def provision(image, build, branch, layer):
        made.append((build, branch))
        layer.parent.mkdir(parents=True, exist_ok=True)
        layer.write_bytes(b"layer")

    monkeypatch.setattr(platform, "_provision", provision)

    first = platform.provisioned_layer("15.0", "pkg")
    again = platform.provisioned_layer("15.0", "pkg")
    ports = platform.provisioned_layer("15.0", "ports")

    assert first == again and first.name.startswith("15.0-pkg-")
    assert ports != first and ports.name.startswith("15.0-ports-")
    assert made == [("pkg", ""), ("ports", fp.ports_branch(platform.settings.today))]
    assert platform.public_key().startswith("ssh-ed25519 ")


def test_bhyve_hosts_need_a_zfs_dataset_before_anything_is_built(tmp_path):
    settings = freebsd.Settings(images={}, hypervisor="bhyve", cache=tmp_path)

    with pytest.raises(ValueError, match="--zfs-dataset"):
        freebsd.FreeBSDPlatform(settings)


def test_under_qemu_the_world_is_namespaces_and_a_relayed_guest(platform, tmp_path):
    world = platform._world(RUN, str(tmp_path / "rt"), "x")

    assert {role: type(node) for role, node in world.nodes.items()} == {
        role: NetnsNode for role in ("lan", "gw", "wan")
    }
    assert platform._mgmt_nic(2222) == freebsd._mgmt_nic(2222)
    assert platform._mgmt_nic(2222).net == "198.51.100.192/26"


def test_availability_skips_with_the_command_and_never_downloads_by_default(tmp_path):
    manifest = images.load_manifest()

    class NoNetwork:
        def get(self, url, offset=0):
            raise AssertionError(f"tried to fetch {url}")

    reason = images.availability(
        "15.0", manifest, [], False, "CMD", tmp_path, NoNetwork()
    )

    assert reason.startswith("FreeBSD 15.0 image needed: run `CMD --image ")


def test_availability_reports_a_failed_download(tmp_path):
    class Refusing:
        def get(self, url, offset=0):
            return images.Response(503, {}, io.BytesIO(b""))

    reason = images.availability(
        "14.3", images.load_manifest(), [], True, "CMD", tmp_path, Refusing()
    )

    assert "the download failed" in reason and "HTTP 503" in reason


def test_each_stack_runs_charon_on_its_own_system(platform, jail_node, tmp_path):
    from lab.platforms.base import Stack

    linux = NetnsNode("gw", RUN, netns="n")

    assert platform.system_of(Stack(jail_node, str(tmp_path), "rs5")) == "freebsd"
    assert platform.system_of(Stack(linux, str(tmp_path), "tun-visible")) == "linux"


def test_teardown_of_a_world_that_never_got_built_reports_nothing(platform, tmp_path):
    world = platform._world(RUN, str(tmp_path / "rt"), "never-built")

    assert platform.teardown(world) == []
    assert not (tmp_path / "rt").joinpath(world.runtime_dir).exists()


def test_only_the_provisioning_boot_may_reach_out(platform, monkeypatch, tmp_path):
    from lab.vm import qemu

    started = []

    class Stop(Exception):
        pass

    def start(spec):
        started.append(spec)
        raise Stop

    monkeypatch.setattr(platform._hypervisor, "start", start)
    monkeypatch.setattr(platform, "_seed", lambda *a: None)
    world = platform._world(RUN, str(tmp_path), "prov")
    with pytest.raises(Stop):
        platform._provision_guest(
            platform.settings.images["15.0"], "pkg", "", f"vjlab-{RUN}-prov",
            str(tmp_path / "d.qcow2"), "qcow2", world,
        )  # fmt: skip

    nic = started[0].nics[0]
    assert nic.outbound
    assert "restrict=off" in qemu._netdev(nic, "net0")
    assert "restrict=on" in qemu._netdev(freebsd._mgmt_nic(2222), "net0")


@pytest.mark.parametrize(
    "uri",
    [None, "qemu", "libvirt:qemu:///system", "libvirt:qemu:///system?socket=/s"],
)
def test_local_hypervisors_are_accepted(uri):
    freebsd.check_local_libvirt(uri)


def test_a_remote_libvirt_host_is_refused_in_one_line():
    with pytest.raises(ValueError) as caught:
        freebsd.check_local_libvirt("libvirt:qemu+ssh://lab@192.0.2.10/system")

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("--hypervisor/--vm-hosts libvirt:qemu+ssh://lab@")
    assert "local libvirt URI" in message
