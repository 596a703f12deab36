"""The host as the lifecycle (lifecycle.Runner) sees it: every call that reads or changes
storage, in one object.

Runner takes a System; the real one forwards to the module of each outside system (lvm, loop,
partitions, fsck/xfs through filesystems, mount, guestlvm, udev). The host unit tests give Runner
a model of a host instead (tests/unit/hostmodel.py), so that ordering, error mapping and teardown
of every partial state are tested without device-mapper; the VM suite runs the real one.
"""

from . import commands, filesystems, guestlvm, loop, lvm, mount, partitions


class System:
    # ---------------------------------------------------------------- reads

    def volumes(self, vgs=()):
        """Every LV of `vgs` (all VGs when empty), as lvm.LogicalVolume."""
        return lvm.report(vgs)

    def mounts_under(self, root):
        """(target, source) of the mounts at or below `root`, deepest first."""
        return mount.under(root)

    def loops(self):
        """Every attached loop device (loop.LoopDevice)."""
        return loop.list_all()

    def holder_paths(self, loop_name):
        """Device paths of the guest LVs active on a loop device (LVM inside a guest)."""
        return guestlvm.holder_paths(loop_name)

    def probe_child(self):
        """A partition probe started ahead of its device: .probe(path), .close()."""
        return partitions.ProbeChild()

    def probe(self, path):
        """The partition table of `path` (partitions.probe's dict), read in a child of its own."""
        return partitions.probe_isolated(path)

    def find_pv(self, probed, path, partition):
        """The partitions.Choice of an LVM PV on `path`, or None."""
        return guestlvm.find_pv(probed, path, partition)

    def guest_vg(self, path, offset):
        """The guest VG (guestlvm.GuestVG) described by the LVM PV at `offset` of `path`."""
        return guestlvm.read_metadata(path, offset)

    def superblock(self, path, offset, fs):
        """The superblock of the `fs` filesystem at byte `offset` of `path`, or None."""
        return filesystems.read_superblock(path, offset, fs)

    # -------------------------------------------------------------- changes

    def create_snapshot(self, origin, spec, chunk_size, owner, naming):
        lvm.create_snapshot(origin, spec, chunk_size, owner, naming)

    def remove_snapshot(self, snapshot, retries):
        lvm.remove_snapshot(snapshot, retries)

    def settle(self, timeout):
        commands.settle(timeout)

    def attach_loop(self, path, offset, size, sector_size):
        """A read-write loop device over `path` at `offset`; returns its name."""
        return loop.attach(path, offset, size, sector_size)

    def detach_loop(self, name, retries):
        loop.detach(name, retries)

    def replay(self, kind, device, target, retries):
        """The journal (log) replay of a filesystems.Kind on the loop device; what was done."""
        return kind.replay(device, target, retries)

    def mount(self, kind, device, target, fstype):
        kind.mount(device, target, fstype)

    def unmount(self, target, retries):
        mount.unmount(target, retries)

    def bring_up_guest_vg(self, guest, disk, snapshot, pv, result, cfg, members=(), every=False):
        """LVM inside the guest: loops over its PVs, the VG renamed and activated, its root (every:
        each LV's filesystem) mounted."""
        return guestlvm.bring_up(guest, disk, snapshot, pv, result, cfg, members, every)

    def deactivate_guest_vg(self, loop_name, retries):
        guestlvm.deactivate(loop_name, retries)
