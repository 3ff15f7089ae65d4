"""Virtual machines for the lab: specs, hypervisors, disks, seeds, SSH.

The layers, from the bottom up:

- :mod:`lab.vm.spec` says what a guest is (memory, disk, NICs, firmware);
- :mod:`lab.vm.hypervisor` starts it on plain QEMU, libvirt or bhyve, all
  behind one ``Hypervisor.start(spec) -> Guest`` call, after
  :mod:`lab.vm.accel` has found an accelerator that really boots;
- :mod:`lab.vm.disks` layers qcow2 images (base, provisioned, throw-away)
  and :mod:`lab.vm.seed` builds the NoCloud ``cidata`` seed that installs
  the run's SSH key;
- :mod:`lab.vm.ssh` turns a guest into a :class:`lab.node.Node`;
- :mod:`lab.vm.debian` builds a Debian 12 guest from Debian's packages and
  :mod:`lab.vm.guest_lab` runs the lab's matrix inside it.

Every guest, overlay and process carries the run id (``vjlab-<run>-...``),
so :func:`lab.vm.hypervisor.leftovers` finds what a run left behind.
"""
