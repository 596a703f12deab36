"""A model of a hypervisor's storage for the lifecycle's host unit tests: LVs, our snapshots,
loop devices and mounts as plain records, behind the same calls as domu_snapshot.system.System.

It keeps the rules the real host enforces that the lifecycle relies on: a snapshot with a loop
device over it cannot be removed, a loop device under a mount cannot be detached, a name is
taken once. It is no stand-in for storage: the VM suite runs the same lifecycle on real LVM,
dm-snapshot, loop devices, e2fsck and mount. What it lets the host tests do is fail any call
once (`fail_next`) and check what is left afterwards.
"""

import dataclasses
import os

from domu_snapshot import lvm
from domu_snapshot.commands import CommandError
from domu_snapshot.fsck import Superblock
from domu_snapshot.loop import LoopDevice
from domu_snapshot.system import System

SECTOR = 512
MIB = 1 << 20


@dataclasses.dataclass
class ModelLoop(LoopDevice):
    rdev: tuple = None

    def backing_rdev(self):
        return self.rdev


class ModelProbeChild:
    """A child started ahead: it ends after its one probe, or when closed unused."""

    def __init__(self, host):
        self.host = host
        self.ended = False

    def probe(self, path):
        self.ended = True
        return self.host.probe(path)

    def close(self):
        self.ended = True


def busy(argv):
    return CommandError(argv, 5, "", f"{argv[-1]}: device or resource busy")


class HostModel(System):
    """One host: origins added with add_guest_lv(); every call is logged in `calls`."""

    def __init__(self, vg="vg0", vg_free=64 << 30):
        self.vg = vg
        self.vg_free = vg_free
        self.lvs = {}  # "vg/name" -> lvm.LogicalVolume
        self.disks = {}  # LV path -> (probe dict, {byte offset: Superblock})
        self.attached = {}  # loop name -> ModelLoop
        self.mounted = []  # (target, source), in mount order
        self.calls = []  # (call name, its subject)
        self.failures = {}  # call name -> exceptions the next calls raise
        self.probe_children = []
        self.contents = {}  # (origin LV path, byte offset) -> {relative path: file text, or None: a directory}
        self._shown = {}  # mount target -> the paths its mount made appear, to take away at unmount
        self._minor = 10
        self._loop_number = 0

    # ------------------------------------------------------------ building the host

    def add_guest_lv(self, name, parts=(("ext4", 2048, 16384),), label="msdos", sectors=32768,
                     needs_recovery=True, active=True):
        """An origin LV with a partition table of `parts` (fs, start sector, length in sectors)."""
        self._minor += 1
        lv = lvm.LogicalVolume(
            vg=self.vg, name=name, attr="-wi-ao----" if active else "-wi-------", path=f"/dev/{self.vg}/{name}",
            dm_path="", origin="", snap_percent=None, data_percent=None, tags=[], size=sectors * SECTOR,
            active=active, major=253, minor=self._minor, segtype="linear", pool="", extent_size=4 * MIB,
            vg_free=self.vg_free)
        self.lvs[lv.key] = lv
        probed = {"path": lv.path, "sector_size": SECTOR, "length": sectors, "label": label, "error": None,
                  "read_error": False, "partitions": []}
        superblocks = {}
        for number, (fs, start, length) in enumerate(parts, 1):
            probed["partitions"].append({"number": number, "kind": "primary", "start": start, "length": length,
                                         "fs": fs})
            if fs and fs.startswith("ext"):
                superblocks[start * SECTOR] = Superblock(fs=fs, size=length * SECTOR, needs_recovery=needs_recovery,
                                                         clean=not needs_recovery, has_orphans=False)
        self.disks[lv.path] = (probed, superblocks)
        return lv

    def fill(self, lv, offset, uuid="", label="", tree=None):
        """The filesystem at `offset` of `lv` gets a UUID and label, and what a mount of it shows:
        `tree` {relative path: file text, None for a directory, ("symlink", target)}."""
        superblocks = self.disks[lv.path][1]
        superblocks[offset] = dataclasses.replace(superblocks[offset], uuid=uuid, label=label)
        self.contents[(lv.path, offset)] = tree or {}

    def fail_next(self, call, error):
        """The next call named `call` raises `error` (then calls work again)."""
        self.failures.setdefault(call, []).append(error)

    def _enter(self, call, subject):
        self.calls.append((call, subject))
        pending = self.failures.get(call)
        if pending:
            raise pending.pop(0)

    # ------------------------------------------------------------ what is left

    def snapshots(self):
        return sorted(key for key, lv in self.lvs.items() if lv.ours)

    def leftovers(self):
        """Everything of ours still on the host: snapshots, loop devices, mounts."""
        return {"snapshots": self.snapshots(), "loops": sorted(self.attached), "mounts": list(self.mounted)}

    def written(self):
        """Devices a call that writes (replay, read-write loop) was given."""
        return [subject for call, subject in self.calls if call in ("replay", "attach_loop")]

    def _by_path(self, path):
        return next((lv for lv in self.lvs.values() if lv.path == path), None)

    # ------------------------------------------------------------ reads

    def volumes(self, vgs=()):
        self._enter("volumes", tuple(vgs))
        return [dataclasses.replace(lv, tags=list(lv.tags)) for lv in self.lvs.values()
                if not vgs or lv.vg in vgs]

    def mounts_under(self, root):
        self._enter("mounts_under", root)
        found = [(t, s) for t, s in self.mounted if t == root or t.startswith(root.rstrip("/") + "/")]
        return sorted(found, key=lambda item: item[0].count("/"), reverse=True)

    def loops(self):
        self._enter("loops", "")
        return list(self.attached.values())

    def holder_paths(self, loop_name):
        return set()

    def probe_child(self):
        child = ModelProbeChild(self)
        self.probe_children.append(child)
        return child

    def probe(self, path):
        self._enter("probe", path)
        return self.disks[path][0]

    def find_pv(self, probed, path, partition):
        return None

    def superblock(self, path, offset, fs):
        self._enter("superblock", path)
        return self.disks[path][1].get(offset)

    # ------------------------------------------------------------ changes

    def create_snapshot(self, origin, spec, chunk_size, owner, naming):
        name = lvm.snapshot_name(origin.name, naming)
        argv = ["lvcreate", "--snapshot", "--name", name, origin.key]
        self._enter("create_snapshot", origin.key)
        key = f"{origin.vg}/{name}"
        if key in self.lvs:
            raise CommandError(argv, 5, "", f'Logical Volume "{name}" already exists in volume group "{origin.vg}"')
        self._minor += 1
        tags = [lvm.TAG] + ([lvm.OWNER_TAGS[owner]] if owner else [])
        self.lvs[key] = dataclasses.replace(
            origin, name=name, attr="swi-a-s---", path=f"/dev/{origin.vg}/{name}", origin=origin.name,
            snap_percent=0.0, tags=tags, minor=self._minor)
        self.disks[f"/dev/{origin.vg}/{name}"] = self.disks[origin.path]  # the origin's content, at this instant

    def remove_snapshot(self, snapshot, retries):
        self._enter("remove_snapshot", snapshot.key)
        lv = self.lvs.get(snapshot.key)
        if lv is None or not lv.ours:
            raise AssertionError(f"lvremove of {snapshot.key}, which is not one of our snapshots")
        if any(d.rdev == (lv.major, lv.minor) for d in self.attached.values()):
            raise busy(["lvremove", "--yes", snapshot.key])
        del self.lvs[snapshot.key]

    def settle(self, timeout):
        self._enter("settle", "")

    def attach_loop(self, path, offset, size, sector_size):
        self._enter("attach_loop", path)
        lv = self._by_path(path)
        name = f"/dev/loop{self._loop_number}"
        self._loop_number += 1
        self.attached[name] = ModelLoop(name, path, offset, size, rdev=(lv.major, lv.minor))
        return name

    def detach_loop(self, name, retries):
        self._enter("detach_loop", name)
        if any(source == name for _target, source in self.mounted):
            raise busy(["losetup", "--detach", name])
        del self.attached[name]

    def replay(self, kind, device, target, retries):
        self._enter("replay", self.attached[device].back_file)
        return "journal replayed"

    def mount(self, kind, device, target, fstype):
        self._enter("mount", target)
        self.mounted.append((target, device))
        loop = self.attached[device]
        origin = self._by_path(loop.back_file)
        origin = self.lvs[f"{origin.vg}/{origin.origin}"] if origin.origin else origin
        shown = self._shown[target] = []
        for relative, text in (self.contents.get((origin.path, loop.offset)) or {}).items():
            path = os.path.join(target, relative)   # real files in the test's mount root
            if text is None:
                os.mkdir(path)
            elif isinstance(text, tuple):   # ("symlink", its target)
                os.symlink(text[1], path)
            else:
                with open(path, "w") as handle:
                    handle.write(text)
            shown.append(path)

    def unmount(self, target, retries):
        self._enter("unmount", target)
        self.mounted = [(t, s) for t, s in self.mounted if t != target]
        for path in reversed(self._shown.pop(target, [])):
            if not os.path.islink(path) and os.path.isdir(path):
                os.rmdir(path)
            else:
                os.unlink(path)

    def bring_up_guest_vg(self, guest, disk, snapshot, pv, result, cfg, members=(), every=False):
        raise AssertionError("the model has no LVM inside guests (tests/vm/test_guest_lvm.py has)")

    def deactivate_guest_vg(self, loop_name, retries):
        pass  # no guest VG is ever active here (guestlvm.deactivate then runs no command either)

    # ------------------------------------------------------------ what happens to a snapshot

    def overflow(self, key):
        """The snapshot's copy-on-write area filled up (lvs shows it invalid: attr[4] 'I')."""
        lv = self.lvs[key]
        lv.attr = lv.attr[:4] + "I" + lv.attr[5:]
        lv.snap_percent = 100.0
