"""lab/vm/libvirt_daemon.py: the private libvirtd's configuration and command.

Nothing starts here: scenarios/test_vm_debian.py's libvirt variant runs it.
"""

from lab.vm import libvirt_daemon


def test_libvirt_directories_are_the_runs_inside_the_namespace():
    script = libvirt_daemon.namespace_script("/run/vjlab/r/libvirtd")

    for key, target in libvirt_daemon.STATE_DIRS.items():
        assert f"mount --bind /run/vjlab/r/libvirtd/{key} {target}" in script
    assert script.endswith(
        "exec /usr/sbin/libvirtd --config /run/vjlab/r/libvirtd/etc/libvirtd.conf "
        "--pid-file /run/vjlab/r/libvirtd/libvirtd.pid"
    )


def test_configuration_has_private_sockets_and_no_confinement(tmp_path):
    daemon = libvirt_daemon.PrivateLibvirtd("20261204-120000-abcd", str(tmp_path))

    daemon._write_config()

    conf = (tmp_path / "etc" / "libvirtd.conf").read_text()
    qemu = (tmp_path / "etc" / "qemu.conf").read_text()
    assert f'unix_sock_dir = "{tmp_path}/sockets"' in conf
    assert 'unix_sock_rw_perms = "0700"' in conf
    assert 'security_driver = "none"' in qemu and "cgroup_controllers = [ ]" in qemu
    assert 'stdio_handler = "file"' in qemu  # no virtlogd needed
    assert not (tmp_path / "etc" / "qemu" / "networks").exists()
    assert daemon.uri == f"qemu:///system?socket={tmp_path}/sockets/libvirt-sock"


def test_a_missing_daemon_is_named_with_its_package(monkeypatch):
    monkeypatch.setattr(libvirt_daemon, "LIBVIRTD", "/nonexistent/libvirtd")
    problem = libvirt_daemon.unavailable()

    assert problem is not None
    assert "apt-get install" in problem or "libvirt-python" in problem
