"""lab/sandbox.py: the script that builds a stack's private /run and /dev."""

import pytest

from lab import sandbox

RUN_DIR = "/run/vjlab/20261204-154353-a1a0/3f2a9c01/jail"
TUN_NODE = "mknod -m 0600 /dev/net/tun c 10 200"


@pytest.mark.parametrize(("policy", "count"), [("tun-visible", 1), ("tun-hidden", 0)])
def test_tun_node_only_for_tun_visible(policy, count):
    lines = sandbox.render_script(RUN_DIR, policy).splitlines()
    assert lines.count(TUN_NODE) == count
    assert sum("net/tun" in line for line in lines) == count


@pytest.mark.parametrize("policy", ["tun-visible", "tun-hidden"])
def test_base_devices_in_every_policy(policy):
    lines = sandbox.render_script(RUN_DIR, policy).splitlines()
    for node in ("null", "zero", "full", "random", "urandom"):
        assert (
            sum(line.startswith(f"mknod -m 0666 /dev/{node} c 1 ") for line in lines)
            == 1
        )


def test_run_dir_is_bind_mounted_over_run():
    lines = sandbox.render_script(RUN_DIR, "tun-hidden").splitlines()
    assert f"mount --bind {RUN_DIR} /run" in lines
    # Mounts must not propagate back to the root mount namespace.
    assert lines.index("mount --make-rprivate /") < lines.index(
        f"mount --bind {RUN_DIR} /run"
    )


def test_run_dir_with_a_space_is_quoted():
    lines = sandbox.render_script("/tmp/a b", "tun-hidden").splitlines()
    assert "mount --bind '/tmp/a b' /run" in lines


def test_script_stops_on_error_marks_ready_then_holds_the_namespace():
    lines = sandbox.render_script(RUN_DIR, "tun-visible").splitlines()
    assert lines[0] == "set -eu"
    assert lines[-2:] == [f": > /run/{sandbox.READY_FILE}", "exec sleep infinity"]
    assert sandbox.READY_FILE == "sandbox.ready"


def test_unknown_policy_is_refused_before_anything_is_created(tmp_path):
    run_dir = tmp_path / "jail"
    with pytest.raises(ValueError, match="unknown device policy 'tun-everywhere'"):
        sandbox.start(None, str(run_dir), "tun-everywhere")
    assert not run_dir.exists()
