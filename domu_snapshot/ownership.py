"""Whose snapshots are whose: a runner of one owner ("cli", "plugin") leaves alone what another
owner holds. Derived from the system alone (owner tags on our snapshot LVs, the loop devices
over them, the mounts on those), so it holds after a crash too."""

from . import lvm


# Whose snapshots a runner leaves alone, by the runner's owner. The plugin must not tear down a
# helpers-mode job's mounts between its `mount` and `unmount` (its FileSet may be being read);
# the CLI handles everything that is ours (it is what helpers, cleanup and the boot service run).
LEAVE_ALONE = {"plugin": frozenset({"cli"})}


def maker(owner):
    return "`domu-snapshot mount` (helpers mode)" if owner == "cli" else f"a {owner} run"


def held_message(name, owner):
    """What a runner says about a guest it leaves alone (names the guest and what to do)."""
    return (f"guest {name} is mounted by {maker(owner)}: a backup job may be reading it, so it was "
            f"left alone. If no job uses it, run `domu-snapshot unmount {name}`")


def held_snapshot(volumes, disks, leave_alone):
    """One snapshot among `volumes` (lvs) of the guest disks `disks` ({(vg, lv)}) that carries an
    owner in `leave_alone`, or None."""
    if not leave_alone:
        return None
    for lv in volumes:
        if lv.ours and (lv.vg, lvm.origin_name(lv)) in disks and lv.owner in leave_alone:
            return lv
    return None


def held_disks(state, leave_alone, disk_of_mount):
    """(vg, lv) of guest disks to leave alone -> the snapshot's owner: our snapshots carrying an
    owner in `leave_alone`, and mounts (disk_of_mount(target) -> (vg, lv)) on a loop device over
    such a snapshot, so a mount counts as held even when the snapshot's name does not match its path."""
    if not leave_alone:
        return {}
    held, by_rdev = {}, {}
    for snapshot in state.snapshots.values():
        if snapshot.owner in leave_alone:
            held[(snapshot.vg, lvm.origin_name(snapshot))] = snapshot.owner
            if snapshot.major is not None:
                by_rdev[(snapshot.major, snapshot.minor)] = snapshot
    if not held:
        return held
    held_loops = {}
    for device in state.loops:
        snapshot = by_rdev.get(device.backing_rdev())
        if snapshot is not None:
            held_loops[device.name] = snapshot
    for target, source in state.mounts:
        snapshot = held_loops.get(source)
        key = disk_of_mount(target)
        if snapshot is not None and key is not None:
            held[key] = snapshot.owner
    return held
