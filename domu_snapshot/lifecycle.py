"""The guest lifecycle: discover → snapshot → find the filesystem → loop →
replay the journal → mount read-only; and teardown.

Teardown never relies on a record of what was done: it reads the system
(mounts under the mount root, loop devices backed by our snapshots, LVs
carrying our tag), so the same code cleans up after a crash or a kill.
"""

import dataclasses
import fnmatch
import os
import time
from typing import Callable, List, Optional

from . import (commands, filesystems, fsck, guestfstab, guestlvm, hooks, loop, lvm, mount, ownership, partitions,
               proxmox, quiesce, xfs, xl)
from .commands import CommandError
from .errors import DomuError, GuestError, ProbeError
from .lock import RunLock
from .status import Status
from .system import System


# ------------------------------------------------------------------ records

@dataclasses.dataclass
class Disk:
    """One guest LV and where its snapshot's filesystem is mounted."""

    vg: str
    lv: str
    mount_path: str
    origin: Optional[lvm.LogicalVolume] = None  # None when rebuilt from leftovers
    naming: str = "suffix"  # lvm.NAMINGS: "prefix" on Proxmox VE hosts (teardown finds either by origin)

    @property
    def key(self):
        return f"{self.vg}/{self.lv}"

    @property
    def lv_path(self):
        return self.origin.path if self.origin else f"/dev/{self.vg}/{self.lv}"

    @property
    def snapshot_name(self):
        return lvm.snapshot_name(self.lv, self.naming)

    @property
    def snapshot_path(self):
        return f"/dev/{self.vg}/{self.snapshot_name}"


@dataclasses.dataclass
class Guest:
    """What is backed up as one: an LV, or all LV disks of one libvirt domain."""

    name: str
    disks: List[Disk]
    domain: Optional[str] = None
    error: Optional[GuestError] = None  # found at discovery (libvirt failed on its domain): prepare fails it
    vmid: Optional[str] = None  # Proxmox VE: the VM's id (its disks are vm-<vmid>-disk-<n>)

    @property
    def active(self):
        return all(d.origin is None or d.origin.active for d in self.disks)


@dataclasses.dataclass
class DiskResult:
    disk: Disk
    choice: Optional[partitions.Choice] = None
    loop: str = ""
    journal: str = ""
    mounted: bool = False
    peak_percent: Optional[float] = None  # snapshot use at teardown
    note: str = ""
    inner: str = ""  # LVM inside the guest: "guest VG ubuntu-vg (as domusnap_...), LV root"
    inner_note: str = ""  # e.g. the host's udev had auto-activated the guest VG
    # guest_filesystems = all: each filesystem at its own path below mount_path (mount.Mounted),
    # and what the disk holds that was not mounted ("partition 1 (fat32)")
    filesystems: List[mount.Mounted] = dataclasses.field(default_factory=list)
    left_out: List[str] = dataclasses.field(default_factory=list)

    @property
    def mount_path(self):
        return self.disk.mount_path

    @property
    def roots(self):
        """The paths of the mounted filesystems: the disk's path, or (all) those below it."""
        if self.filesystems:
            return [m.path for m in self.filesystems]
        return [self.mount_path] if self.mounted else []

    def describe(self):
        if self.note:
            return f"{self.disk.key}: {self.note}"
        if self.filesystems:
            shown = "; ".join(f"{m.mount_point or os.path.relpath(m.path, self.mount_path)}: {m.what}, "
                              f"{m.journal or 'clean'}" for m in self.filesystems)
            left = f"; not mounted: {', '.join(self.left_out)}" if self.left_out else ""
            inner = f"; {self.inner}" if self.inner else ""  # the guest VG, once
            return f"{self.disk.key}: {shown}{inner}{left}"
        if not self.choice:
            return f"{self.disk.key}: not mounted"
        inner = f", {self.inner}" if self.inner else ""
        return f"{self.disk.key}: {self.choice.describe()}{inner}, {self.journal or 'clean'}"


@dataclasses.dataclass
class GuestResult:
    guest: Guest
    action: str  # "mount", "unmount" or "plan"
    status: Status = Status.OK
    error: Optional[GuestError] = None
    disks: List[DiskResult] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    quiesce: str = "none"
    freeze_ms: Optional[float] = None
    notes: List[str] = dataclasses.field(default_factory=list)
    # the libvirt definition (virsh define accepts it), xl's or Proxmox's config; "" for a plain LV
    domain_xml: str = ""
    domain_xml_path: str = ""  # where prepare wrote it: <mount_root>/<vg>/<first lv>.domain.xml
    held_by: str = ""  # owner ("cli") of a snapshot this runner left alone; see Runner.leave_alone

    @property
    def ok(self):
        return self.status != Status.FAILED

    @classmethod
    def failure(cls, guest, action, step, message, hint=""):
        """The result of a guest whose `step` failed outside the Runner's own error handling."""
        return cls(guest, action, status=Status.FAILED, error=GuestError(guest.name, step, message, hint))

    def fail(self, error):
        # The first failure is the cause; later ones (e.g. in cleanup) are notes.
        if self.error is None:
            self.error = error
        else:
            self.notes.append(str(error))
        self.status = Status.FAILED


@dataclasses.dataclass
class SystemState:
    """What the system shows right now: one findmnt, one losetup, one lvs."""

    mounts: list  # (target, source) under the mount root, deepest first
    loops: list  # loop.LoopDevice
    snapshots: dict  # "vg/name" -> LogicalVolume of our tagged snapshots
    pools: dict = dataclasses.field(default_factory=dict)  # "vg/pool" -> LogicalVolume of thin pools
    holder_paths: Callable = guestlvm.holder_paths  # loop name -> device paths of guest LVs on it

    def our_loops(self):
        """Loop device name -> our snapshot behind it (matched by the backing device's rdev)."""
        by_rdev = {(s.major, s.minor): s for s in self.snapshots.values() if s.major is not None}
        found = {}
        for device in self.loops:
            snapshot = by_rdev.get(device.backing_rdev())
            if snapshot is not None:
                found[device.name] = snapshot
        return found

    def snapshots_of(self, vg, lv):
        """Our snapshots of the LV vg/lv (by origin, whichever naming made them)."""
        return [s for s in self.snapshots.values() if s.vg == vg and lvm.origin_name(s) == lv]

    def split_mounts(self):
        """(ours, foreign): mounts under the mount root whose source is a loop device over one of
        our snapshots, and every other one (never unmounted: not ours, whatever its path)."""
        loops = self.our_loops()
        inner = self.inner_devices(loops)
        ours, foreign = [], []
        for target, source in self.mounts:
            mine = source in loops or (source and os.path.realpath(source) in inner)
            (ours if mine else foreign).append((target, source))
        return ours, foreign

    def inner_devices(self, loops):
        """Device paths (resolved) of the guest LVs active on our loop devices (LVM inside a guest):
        the device-mapper devices holding them (/sys/block/loopN/holders)."""
        found = set()
        for name in loops:
            found |= {os.path.realpath(path) for path in self.holder_paths(name)}
        return found


# ------------------------------------------------------------------- runner

class Runner:
    def __init__(self, config, log=None, owner="", system=None):
        """`owner`: "cli" (domu-snapshot), "plugin" (the Bareos plugin) or "" (no owner tag: only
        for callers that hold the run lock for as long as their snapshots live). `system`: the
        host's storage calls (system.System; the host unit tests pass a model of a host)."""
        if owner and owner not in lvm.OWNER_TAGS:
            raise ValueError(f"unknown runner owner {owner!r}")
        self.cfg = config
        self.owner = owner
        self.system = system or System()
        self.leave_alone = ownership.LEAVE_ALONE.get(owner, frozenset())
        self._log = log or (lambda level, message: None)
        self._volumes = None
        self._quiescer = None
        self._domains = {}
        self._spare_probe = None  # a partitions.ProbeChild started ahead (warm_up_probe)
        self._vg_with = {}  # prepare: disk key -> the disk whose guest VG (spanning both) holds its PV
        self._probed = {}  # prepare: disk key -> its partition table, read ahead by _vg_members
        self._proxmox = None

    def log(self, level, message):
        self._log(level, message)

    def lock(self):
        return RunLock(self.cfg.lock_file, self.cfg.lock_timeout)

    # ------------------------------------------------------------ discovery

    def mount_path(self, vg, lv):
        return os.path.join(self.cfg.mount_root, vg, lv)

    @property
    def proxmox(self):
        """Whether this is a Proxmox VE host (config `host`, or auto: pve_config_dir exists)."""
        if self._proxmox is None:
            self._proxmox = proxmox.is_proxmox(self.cfg)
        return self._proxmox

    @property
    def naming(self):
        return "prefix" if self.proxmox else "suffix"

    def _is_candidate(self, lv):
        if lv.is_hidden or lv.is_pool or lv.is_snapshot or lv.ours or lv.name.endswith(lvm.SUFFIX):
            return False
        if guestlvm.is_inner_vg(lv.vg):
            return False  # a guest's own VG on one of our snapshots (LVM inside the guest)
        if self.proxmox and lv.name.startswith(lvm.PREFIX):
            return False
        return self.selects(lv.vg, lv.name)

    def selects(self, vg, lv):
        """Whether the run's selection (vg, prefix, include, exclude) covers the LV vg/lv. On a
        Proxmox VE host the VM disk names (vm-<vmid>-disk-<n>) take the place of the prefix."""
        if self.cfg.vgs and vg not in self.cfg.vgs:
            return False
        if self.proxmox:
            if proxmox.disk_vmid(lv, self.cfg.pve_templates) is None:
                return False
        elif self.cfg.prefix and not lv.startswith(self.cfg.prefix):
            return False
        names = (lv, f"{vg}/{lv}")
        if self.cfg.include and not any(fnmatch.fnmatchcase(n, g) for g in self.cfg.include for n in names):
            return False
        return not any(fnmatch.fnmatchcase(n, g) for g in self.cfg.exclude for n in names)

    def discover(self, names=None):
        """Guests from one `lvs` report; `names` (LV names or vg/lv) selects some."""
        self._volumes = self.system.volumes(self.cfg.vgs)
        candidates = [lv for lv in self._volumes if self._is_candidate(lv)]
        look_alike = lvm.PREFIX if self.proxmox else lvm.SUFFIX
        for lv in self._volumes:
            origin = lvm.named_origin(lv.name)
            named = lv.name.startswith(look_alike) if self.proxmox else lv.name.endswith(look_alike)
            if named and origin and not lv.ours and not lv.is_hidden and self.selects(lv.vg, origin):
                self.log("warning", f"{lv.key} is named like a snapshot of this tool but does not carry its tag "
                                    f"{lvm.TAG}: not a guest, never touched (rename it if it is a guest's disk; "
                                    f"a snapshot of {origin} cannot be made while it exists)")
        counts = {}
        for lv in candidates:
            counts[lv.name] = counts.get(lv.name, 0) + 1
        guests = [
            Guest(lv.name if counts[lv.name] == 1 else lv.key,
                  [Disk(lv.vg, lv.name, self.mount_path(lv.vg, lv.name), lv, self.naming)])
            for lv in candidates
        ]
        guests = self.group_vms(guests) if self.proxmox else self.group_guests(guests)
        if names:
            guests = self._select(guests, names)
        return guests

    @property
    def quiescer(self):
        """The run's toolstack side: libvirt (connects on first use; works without libvirt-python),
        xl, or none (host = plain); see host_kind()."""
        if self._quiescer is None:
            kind = self.host_kind()
            if kind == "xl":
                self._quiescer = xl.XlQuiescer(self.cfg.xl_command, self.cfg.quiesce_timeout, self.log)
            else:
                disabled = "host = plain: no toolstack is asked" if kind == "plain" else ""
                self._quiescer = quiesce.Quiescer(self.cfg.libvirt_uri, self.cfg.quiesce_timeout, self.log,
                                                  disabled=disabled)
        return self._quiescer

    def host_kind(self):
        """"proxmox", "libvirt", "xl" or "plain": the configured host, or for auto what this host
        shows: Proxmox VE by its VM config directory; then a libvirt daemon (or a libvirt_uri) wins
        over xl, as before xl support (a Xen host with libvirt's libxl driver is driven through
        libvirt)."""
        if self.proxmox:
            return "proxmox"
        if self.cfg.host != "auto":
            return self.cfg.host
        if self.cfg.libvirt_uri or os.environ.get("LIBVIRT_DEFAULT_URI") or quiesce.daemon_sockets():
            return "libvirt"
        if xl.is_xen_dom0() and xl.usable(self.cfg.xl_command):
            return "xl"
        return "libvirt"  # none answers: the libvirt side says so once, as it always did

    def group_guests(self, guests):
        """Join the LVs of one libvirt domain into one guest, so they are snapshotted in one window.

        A domain with one LV keeps the LV's name; one with several is named after the domain.
        LVs no domain uses stay guests of their own.
        """
        position = {g.disks[0].key: i for i, g in enumerate(guests)}  # discover() makes one-disk guests
        if self.cfg.host == "plain":
            self._domains = {}
            return guests
        self._domains = self.quiescer.domains([g.disks[0].origin for g in guests])
        grouped = list(guests)
        for name, domain in self._domains.items():
            members = [position[f"{lv.vg}/{lv.name}"] for lv in domain.lvs]  # in the domain's disk order
            title = guests[members[0]].name if len(members) == 1 else name
            for index in members:
                grouped[index] = None
            error = None
            if domain.error:
                error = GuestError(title, "discovery", f"libvirt failed on domain {name}: {domain.error}",
                                   "it may have been undefined or migrated during the run; run the backup of "
                                   "this guest again (virsh list --all shows the domains)")
            grouped[min(members)] = Guest(title, [guests[i].disks[0] for i in members], name, error)
        return [g for g in grouped if g is not None]

    def group_vms(self, guests):
        """Proxmox VE: all disks of one VMID (in any VG) are one guest `vm-<vmid>` (templates
        `base-<vmid>`), in disk order; the VM's EFI vars and TPM state volumes are left out (no
        guest filesystem). discover() made one-disk guests of VM disk names only."""
        by_vm, order = {}, []
        for guest in guests:
            disk = guest.disks[0]
            kind, vmid, number = proxmox.disk_vmid(disk.lv, self.cfg.pve_templates)
            key = (kind, vmid)
            if key not in by_vm:
                by_vm[key] = []
                order.append(key)
            by_vm[key].append((number, disk.vg, disk))
        grouped = []
        for kind, vmid in order:
            config = proxmox.read_config(proxmox.config_path(self.cfg, vmid))
            firmware = proxmox.state_volumes(config)
            disks = [d for _n, _vg, d in sorted(by_vm[(kind, vmid)], key=lambda item: item[:2])
                     if d.lv not in firmware]
            if disks:
                grouped.append(Guest(proxmox.guest_name(kind, vmid), disks, vmid=vmid))
        return grouped

    def quiesce_plan(self, guest):
        """What quiesce the guest will get, as `check` says it (no guest is touched)."""
        level = quiesce.requested_level(self.cfg, guest.name, guest.domain, *[d.lv for d in guest.disks])
        if guest.vmid is not None:
            return proxmox.plan_text(self.cfg, guest.vmid, level)
        if level == "none":
            return "none (configured)"
        kind = self.host_kind()
        if kind == "plain":
            return f"{level}: host = plain" + ("; none" if level == "auto" else "; fails")
        if guest.domain is None:
            return f"{level}: no {kind} domain uses its LVs" + ("; none" if level == "auto" else "; fails")
        if kind == "xl" and level in ("auto", "agent"):
            return f"{level}: xl has no guest-agent freeze" + ("; none" if level == "auto" else "; fails")
        return f"{level} through {kind} domain {guest.domain}"

    def _select(self, guests, names):
        chosen = []
        for name in names:
            matches = [g for g in guests if name == g.name or (g.vmid is not None and name == g.vmid)
                       or any(name in (d.lv, d.key) for d in g.disks)]
            if not matches:
                known = ", ".join(g.name for g in guests) or "none"
                raise DomuError(f"unknown guest {name!r} (guests found: {known})")
            if len(matches) > 1:
                raise DomuError(f"guest name {name!r} is ambiguous: use vg/lv ({', '.join(g.name for g in matches)})")
            if matches[0] not in chosen:
                chosen.append(matches[0])
        return chosen

    # ---------------------------------------------------------------- space

    def check_space(self, guests, concurrent=True):
        """Per-guest GuestError for guests whose VG cannot hold the planned snapshots.

        `concurrent`: all guests' snapshots exist at once (mount --all);
        otherwise only one guest's at a time (the plugin's default).
        """
        need = {}
        free = {}
        members = {}
        for guest in guests:
            if not guest.active:
                continue
            per_vg = {}
            for disk in guest.disks:
                origin = disk.origin
                if origin is None or origin.is_thin:
                    continue  # thin snapshots take pool space, not VG space
                spec = self.cfg.for_disk(guest, disk, "snapshot_size")
                try:
                    extents = lvm.snapshot_extents(origin, spec)
                except ValueError as exc:
                    raise DomuError(str(exc)) from None
                per_vg[origin.vg] = per_vg.get(origin.vg, 0) + extents * origin.extent_size
                free[origin.vg] = origin.vg_free
                members.setdefault(origin.vg, []).append(guest)
            for vg, size in per_vg.items():
                need[vg] = need.get(vg, 0) + size if concurrent else max(need.get(vg, 0), size)
        errors = self._check_thin_pools(guests)
        for vg, needed in need.items():
            if needed > free[vg]:
                error_for = lambda g: GuestError(  # noqa: E731
                    g.name, "space check",
                    f"VG {vg} has {_gib(free[vg])} free but the snapshots planned in it need {_gib(needed)} "
                    f"(short by {_gib(needed - free[vg])}); nothing was created in {vg}",
                    f"free space in {vg} (vgextend, or remove an unused LV), or lower snapshot_size "
                    f"(now {self.cfg.snapshot_size})")
                for guest in members[vg]:
                    errors.setdefault(guest.name, error_for(guest))
        return errors

    def _check_thin_pools(self, guests):
        """Per-guest GuestError for guests with a thin origin in a pool that is (nearly) full.

        A thin snapshot takes no space when made, but every block the guest writes while it exists
        needs a new block of the pool, and a pool that runs full fails or stalls the guest's own
        writes: so no snapshot is made in a pool at or above thin_pool_max_data_percent /
        thin_pool_max_metadata_percent (from discover()'s report; pools are always listed)."""
        pools = {lv.key: lv for lv in self._volumes or [] if lv.is_thin_pool}
        errors = {}
        for guest in guests:
            if not guest.active:
                continue
            for disk in guest.disks:
                origin = disk.origin
                pool = pools.get(origin.pool_key) if origin is not None else None
                if pool is None:
                    continue
                why = lvm.pool_too_full(pool, self.cfg.thin_pool_max_data_percent,
                                        self.cfg.thin_pool_max_metadata_percent)
                if why:
                    errors[guest.name] = GuestError(
                        guest.name, "space check",
                        f"{disk.key} is a thin LV in {why}: a snapshot now could let the pool run full while "
                        f"the guest writes, and a full pool fails or stalls the guest's own writes; nothing "
                        f"was created for this guest",
                        f"{_pool_room_hint(pool)} (lvs {pool.vg} shows them)")
                    break
        return errors

    # -------------------------------------------------------------- prepare

    def prepare(self, guest, space_error=None):
        """Snapshot, probe, loop, replay and mount every disk of `guest`.

        Never raises for the guest's own failures: they come back in the
        result, after whatever was created has been torn down again.
        """
        started = time.monotonic()
        result = GuestResult(guest, "mount")
        if not guest.active:
            result.status = Status.SKIPPED
            result.notes.append("LV is not active: not touched (activate it with lvchange -ay to back it up)")
            return result
        if guest.error is not None:
            result.fail(guest.error)  # nothing was created
            result.seconds = time.monotonic() - started
            return result
        held = self._held_snapshot(guest)
        if held is not None:
            # Fails without any teardown: what is there is another job's, not ours to touch.
            result.held_by = held.owner
            result.fail(GuestError(
                guest.name, "snapshot",
                f"{held.key} was made by {ownership.maker(held.owner)} and is still held: a backup job may be "
                f"reading it, so this run leaves it alone and does not back up this guest",
                f"run the helpers-mode job and this one at different times; if no job uses it, run "
                f"`domu-snapshot unmount {guest.name}`"))
            result.seconds = time.monotonic() - started
            return result
        if space_error is not None:
            result.fail(space_error)
            result.seconds = time.monotonic() - started
            return result
        try:
            self._check_names(guest)
            if not commands.is_dry_run():
                self.warm_up_probe()  # starts while the snapshots are made
            self._remove_leftovers(guest, result)
            self._create_snapshots(guest, result)
            self._save_domain_xml(guest, result)
            if commands.is_dry_run():
                self._print_plan(guest)
                return result
            self.system.settle(self.cfg.settle_timeout)
            self._vg_with, self._probed = {}, {}
            for index, disk in enumerate(guest.disks):
                result.disks.append(self._mount_disk(guest, disk, more_disks=index + 1 < len(guest.disks)))
                if result.disks[-1].inner_note:
                    result.notes.append(result.disks[-1].inner_note)
            if not any(d.mounted for d in result.disks):
                result.status = Status.SKIPPED
                result.notes.append("nothing to back up: " + "; ".join(d.note for d in result.disks))
                self._teardown_quietly(guest, result)
        except GuestError as error:
            result.fail(error)
            self._teardown_quietly(guest, result)
        except BaseException:
            # Interrupted (signal, cancel): never leave this guest half-prepared.
            self._teardown_quietly(guest, result)
            raise
        finally:
            self.end_spare_probe()
            result.seconds = time.monotonic() - started
        return result

    def warm_up_probe(self):
        """Start the next partition probe's child now, so that its start (Python, libparted)
        overlaps the snapshots instead of following them."""
        if self._spare_probe is None:
            self._spare_probe = self.system.probe_child()

    def _probe(self, path, warm_next=False):
        """The partition table of `path`, read in the spare child if one was started."""
        child, self._spare_probe = self._spare_probe, None
        if warm_next:
            self.warm_up_probe()  # the next disk's, while this one is read
        if child is None:
            return self.system.probe(path)
        return child.probe(path)

    def end_spare_probe(self):
        child, self._spare_probe = self._spare_probe, None
        if child is not None:
            child.close()

    def _check_names(self, guest):
        for disk in guest.disks:
            problem = lvm.check_snapshot_name(disk.vg, disk.lv, disk.naming)
            if problem:
                raise GuestError(guest.name, "snapshot name", problem,
                                 "rename the LV (lvrename) to a shorter name; nothing was created")

    def _held_snapshot(self, guest):
        """One of the guest's snapshots that this runner must leave alone, or None. From the lvs of
        discover(): under the run lock, no `domu-snapshot mount` or `unmount` can change it since."""
        return ownership.held_snapshot(self._volumes or [], {(d.vg, d.lv) for d in guest.disks}, self.leave_alone)

    def _remove_leftovers(self, guest, result):
        """A snapshot left by a crashed run would make lvcreate fail on the name."""
        existing = {(lv.vg, lvm.origin_name(lv)) for lv in self._volumes or [] if lv.ours}
        if any((d.vg, d.lv) in existing for d in guest.disks):
            result.notes.append("removed a leftover snapshot of an earlier run first")
            for report in self.teardown([guest], stale=True):
                result.notes.extend(report.notes)
                if not report.ok:
                    raise report.error

    def _create_snapshots(self, guest, result):
        """All disks of the guest, back to back (inside one quiesce window when quiesced)."""
        def snapshot_all():
            for disk in guest.disks:
                spec = self.cfg.for_disk(guest, disk, "snapshot_size")
                chunk = self.cfg.for_disk(guest, disk, "chunk_size")
                try:
                    self.system.create_snapshot(disk.origin, spec, chunk, self.owner, disk.naming)
                except CommandError as exc:
                    raise GuestError(guest.name, "snapshot", exc.summary(),
                                     f"check free space (vgs {disk.vg}) and leftovers (domu-snapshot status)") from None
        self.hooked(guest, result, lambda: self.quiesced(guest, result, snapshot_all))

    def hooked(self, guest, result, action):
        """Run `action` between the guest's before- and after-snapshot hooks (hooks.py).

        The after-hook runs whenever the before-hook was started (it may have to undo part of
        what a failed before-hook did), also when the action failed or a signal came. A failing
        before-hook fails the guest before any snapshot unless before_hook_failure = continue; a
        failing after-hook fails the guest (whatever it was to undo may still be in effect), or
        is a note when the guest failed already."""
        before = self.cfg.for_guest_of(guest, "before_snapshot_hook").strip()
        after = self.cfg.for_guest_of(guest, "after_snapshot_hook").strip()
        if before:
            try:
                hooks.run(guest, "before-snapshot hook", before, self.cfg.hook_timeout)
            except GuestError as error:
                if self.cfg.for_guest_of(guest, "before_hook_failure") != "continue":
                    self._after_hook_quietly(guest, result, after)
                    raise
                result.notes.append(f"{error.step} failed: {error.message}; the snapshots were made all the same "
                                    f"(before_hook_failure = continue)")
            except BaseException:
                self._after_hook_quietly(guest, result, after)
                raise
        try:
            action()
        except BaseException:
            self._after_hook_quietly(guest, result, after)
            raise
        if after:
            hooks.run(guest, "after-snapshot hook", after, self.cfg.hook_timeout)

    def _after_hook_quietly(self, guest, result, after):
        """The after-hook while the guest fails already: its own failure becomes a note."""
        if not after:
            return
        try:
            hooks.run(guest, "after-snapshot hook", after, self.cfg.hook_timeout)
        except GuestError as error:
            result.notes.append(str(error))

    def quiesced(self, guest, result, create_snapshots):
        """Run create_snapshots inside the guest's quiesce (agent freeze, suspend, sync or none)."""
        level = quiesce.requested_level(self.cfg, guest.name, guest.domain, *[d.lv for d in guest.disks])
        if commands.is_dry_run():
            if guest.domain and level != "none":
                commands.say(f"would quiesce domain {guest.domain} ({level}) around its snapshots")
            elif guest.vmid is not None and level != "none":
                commands.say(f"would quiesce VM {guest.vmid} ({level}) around its snapshots")
            create_snapshots()
            return
        if guest.vmid is not None:
            hold = proxmox.Hold(self.cfg, guest.name, guest.vmid, level, self.log)
        elif self.cfg.host == "plain":
            hold = self.quiescer.hold(guest.name, None, "none" if level == "auto" else level)
        else:
            hold = self.quiescer.hold(guest.name, guest.domain, level)
        try:
            with hold:
                create_snapshots()
        finally:
            used = hold.result
            result.quiesce = used.level
            result.freeze_ms = used.freeze_ms if used.level in ("agent", "suspend") else None
            if used.degraded and used.note:
                result.notes.append(f"quiesce: {used.note}")
            if used.overrun:
                result.notes.append(
                    f"quiesce: snapshots took longer than quiesce_timeout ({self.cfg.quiesce_timeout:g} s); the "
                    f"guest was released before they were all made, so they are only crash-consistent")

    def _save_domain_xml(self, guest, result):
        """The domain's definition goes into the backup: a file next to the first disk's mount
        (helpers mode) and result.domain_xml (the plugin emits it as an entry of its own).
        A Proxmox VM's is its qemu-server config file."""
        if guest.vmid:
            source = proxmox.config_path(self.cfg, guest.vmid)
            what = f"the config of VM {guest.vmid} ({source})"
            result.domain_xml, reason = proxmox.config_text(source)
            suffix = quiesce.PVE_CONFIG_SUFFIX
            if not result.domain_xml:
                result.notes.append(f"{what} could not be read ({reason}): not in this backup")
                return
        elif guest.domain:
            what = f"the definition of domain {guest.domain}"
            known = self._domains.get(guest.domain)
            result.domain_xml = self.quiescer.definition(guest.domain, known.xml if known else "")
            suffix = self.quiescer.definition_suffix
            if not result.domain_xml:
                result.notes.append(f"{what} could not be read: not in this backup")
                return
        else:
            return
        path = quiesce.domain_xml_path(guest.disks[0].mount_path, suffix)
        if commands.is_dry_run():
            commands.say(f"would write {what} to {path}")
            return
        try:
            mount.make_dirs(os.path.dirname(path), self.cfg.mount_root)
            quiesce.write_domain_xml(path, result.domain_xml)
        except OSError as exc:
            raise GuestError(guest.name, "domain definition", f"{path}: {exc}",
                             "check the mount root (free space, permissions)") from None
        result.domain_xml_path = path

    def _print_plan(self, guest):
        """Dry-run: each disk's steps, printed by the very calls that run them (commands.run
        prints instead of running), with placeholders for what only the snapshot would tell."""
        for disk in guest.disks:
            layout = self.cfg.for_disk(guest, disk, "guest_filesystems")
            target = disk.mount_path
            if layout != "first":
                commands.say(f"{disk.key} (guest_filesystems = {layout}): for each partition N that holds one of "
                             f"{', '.join(self.cfg.filesystems)}, and for each LV of a guest VG in it (at "
                             f"{mount.every_path(target, guest_vg='<guest VG>', lv='<LV>')}):")
                target = mount.every_path(target, "<N>")
            device = loop.attach(disk.snapshot_path, "<offset>", "<size>")
            fsck.plan(device)
            mount.mount(device, target, "<ext3|ext4>")
            if "xfs" in self.cfg.filesystems:
                commands.say("for xfs instead of e2fsck and that mount:")
                xfs.replay(device, target)
                xfs.mount_read_only(device, target)
            if layout == "fstab":
                commands.say(f"then, when one of them holds etc/fstab naming itself as /: each is unmounted "
                             f"and mounted again where that fstab mounts it, / at {disk.mount_path}")

    def _mount_disk(self, guest, disk, more_disks=False):
        result = DiskResult(disk)
        snapshot = disk.snapshot_path
        layout = self.cfg.for_disk(guest, disk, "guest_filesystems")
        every = layout in ("all", "fstab")
        if disk.key in self._vg_with and not every:
            result.note = f"holds a PV of the guest VG brought up with {self._vg_with[disk.key]}"
            return result
        try:
            probed = self._probed.pop(disk.key, None) or self._probe(snapshot, warm_next=more_disks)
        except ProbeError as exc:
            raise GuestError(guest.name, "partition probe", f"{disk.key}: {exc.message}", exc.hint) from None
        mode = self.cfg.for_disk(guest, disk, "guest_lvm")
        if every:
            self._mount_every(guest, disk, probed, mode, result)
            if layout == "fstab" and result.filesystems:
                self._assemble_by_fstab(guest, disk, result)
            return result
        partition = self.cfg.for_disk(guest, disk, "partition")
        pv = self.system.find_pv(probed, snapshot, partition) if mode != "no" else None
        if pv is not None and mode == "yes":
            return self._bring_up_guest_vg(guest, disk, pv, result)
        try:
            choice = partitions.choose(probed, partition, self.cfg.filesystems)
        except ProbeError as exc:
            if pv is not None:  # guest_lvm = auto: the guest's VG when no ext partition is chosen
                return self._bring_up_guest_vg(guest, disk, pv, result)
            if partitions.only_swap(probed):
                result.note = "holds only swap"
                return result
            raise GuestError(guest.name, "partition", f"{disk.key}: {exc.message}", exc.hint) from None
        if pv is not None:
            result.inner_note = (f"{disk.key} also holds an LVM PV ({pv.where(disk.key)}): its guest VG is not "
                                 f"backed up (set guest_lvm = yes for this guest to mount its root LV instead, "
                                 f"or guest_filesystems = all for every filesystem of it)")
        result.choice = choice
        result.loop, result.journal, _superblock = self._mount_partition(guest, disk, choice, disk.mount_path)
        result.mounted = True
        return result

    def _mount_every(self, guest, disk, probed, mode, result):
        """guest_filesystems = all: every filesystem of `filesystems` on the disk's partitions and
        on the LVs of the guest VG in its PV (unless guest_lvm = no), each at mount.every_path."""
        snapshot = disk.snapshot_path
        pv = self.system.find_pv(probed, snapshot, "auto") if mode != "no" else None
        brought_up_with = self._vg_with.get(disk.key)
        try:
            choices = partitions.choose(probed, "every", self.cfg.filesystems)
        except ProbeError as exc:
            if pv is None:  # else: a PV on the whole disk, no table
                raise GuestError(guest.name, "partition", f"{disk.key}: {exc.message}", exc.hint) from None
            choices = []
        result.left_out = partitions.left_out(probed, self.cfg.filesystems, also={pv.number} if pv else ())
        for choice in choices:
            path = mount.every_path(disk.mount_path, choice.number)
            loop_name, journal, superblock = self._mount_partition(guest, disk, choice, path)
            result.filesystems.append(mount.Mounted(path, choice.describe(), journal, loop_name, superblock.fs,
                                                    superblock.uuid, superblock.label, partition=choice.number))
        if pv is not None and brought_up_with is None:
            self._bring_up_guest_vg(guest, disk, pv, result, every=True)
        result.mounted = bool(result.filesystems)
        if not result.mounted:
            if brought_up_with is not None:
                result.note = f"holds a PV of the guest VG brought up with {brought_up_with}"
            elif partitions.only_swap(probed):
                result.note = "holds only swap"
            else:
                raise GuestError(guest.name, "partition", f"{disk.key}: no {'/'.join(self.cfg.filesystems)} "
                                 f"filesystem on its partitions or guest LVs (not mounted: "
                                 f"{', '.join(result.left_out) or 'nothing found'})",
                                 "set filesystems to the guest's filesystem types, or exclude the guest")
        return result

    def _mount_partition(self, guest, disk, choice, path):
        """A loop device over `choice` of the disk's snapshot, its journal (log) replayed there and
        it mounted read-only at `path`: (loop device, what the replay did, superblock). Raises
        GuestError; what was made is found and torn down by teardown."""
        snapshot = disk.snapshot_path
        kind = filesystems.kind(choice.fs)
        if kind is None:
            raise GuestError(guest.name, "partition", f"{disk.key}: {choice.describe()}: not a filesystem this "
                             f"tool can replay and mount", f"filesystems takes {', '.join(filesystems.SUPPORTED)}")
        superblock = self.system.superblock(snapshot, choice.offset, choice.fs)
        if superblock is None:
            name = "ext" if kind is filesystems.EXT else choice.fs
            raise GuestError(guest.name, "partition", f"{disk.key}: no {name} superblock at byte {choice.offset}",
                             "the partition table points elsewhere than the filesystem; set partition=N")
        # Before any replay or mount: both would open the journal's (log's) device, not the snapshot.
        refused = filesystems.refusal(superblock, choice.where(disk.key))
        if refused:
            raise GuestError(guest.name, kind.check_step, *refused)
        if superblock.size > choice.size:
            raise GuestError(
                guest.name, "partition",
                f"{disk.key}: the {superblock.fs} filesystem claims {superblock.size} bytes but its partition "
                f"holds {choice.size}: the partition table or the filesystem is damaged", kind.resize_hint)
        try:
            loop_name = self.system.attach_loop(snapshot, choice.offset, choice.size, choice.sector_size)
        except CommandError as exc:
            raise GuestError(guest.name, "loop device", exc.summary(),
                             "check for free loop devices (losetup --list) and that the loop module is loaded") from None
        try:
            # before the replay: XFS replays its log by a mount there
            mount.make_dirs(path, self.cfg.mount_root)
        except OSError as exc:
            raise GuestError(guest.name, "mount", f"{path}: {exc}", "check the mount root") from None
        try:
            journal = self.system.replay(kind, loop_name, path, self.cfg.busy_retries)
        except ProbeError as exc:
            raise GuestError(guest.name, "journal check", exc.message, exc.hint) from None
        except CommandError as exc:
            raise GuestError(guest.name, kind.replay_step, exc.summary(), kind.replay_hint) from None
        try:
            self.system.mount(kind, loop_name, path, superblock.fs)
        except CommandError as exc:
            raise GuestError(guest.name, "mount", exc.summary(), "see dmesg for the kernel's reason") from None
        return loop_name, journal, superblock

    def _assemble_by_fstab(self, guest, disk, result):
        """guest_filesystems = fstab: the disk's filesystems, each mounted at a path of its own by
        _mount_every, moved to where the guest's /etc/fstab mounts them: its root at the disk's
        path, the others below it. A disk none of whose filesystems holds an fstab (a data disk)
        keeps the paths of `all`. Raises GuestError; teardown finds what is mounted."""
        placed = self._fstab_places(guest, disk, result)
        if placed is None:
            result.inner_note = (f"{disk.key}: none of its filesystems holds an /etc/fstab: each is at a path of "
                                 f"its own, as with guest_filesystems = all")
            return
        for mounted in result.filesystems:
            if not any(m is mounted for m, _point in placed):
                result.left_out.append(f"{mounted.what} (not in the guest's /etc/fstab)")
        for mounted in result.filesystems:
            try:
                self.system.unmount(mounted.path, self.cfg.busy_retries)
            except CommandError as exc:
                raise GuestError(guest.name, "fstab", exc.summary(),
                                 f"something uses {mounted.path}; run domu-snapshot cleanup when it is free") from None
        mount.remove_empty_tree(disk.mount_path)
        if os.listdir(disk.mount_path):
            raise GuestError(guest.name, "fstab", f"{disk.key}: {disk.mount_path} is not empty after its "
                             f"filesystems were unmounted ({', '.join(sorted(os.listdir(disk.mount_path))[:5])})",
                             "something not ours is there; remove it (or unmount it), then run again")
        # Parents first: a mount point is checked in the tree its parent's filesystem shows.
        for mounted, point in placed:
            try:
                target = guestfstab.target(disk.mount_path, point)
            except ValueError as exc:
                raise GuestError(guest.name, "fstab",
                                 f"{disk.key}: the guest's /etc/fstab mounts {mounted.what} on {point!a}, but "
                                 f"{exc}: it cannot be placed where the guest has it",
                                 "set guest_filesystems = all for this guest, or fix the guest's fstab") from None
            try:
                self.system.mount(filesystems.kind(mounted.fs), mounted.device, target, mounted.fs)
            except CommandError as exc:
                raise GuestError(guest.name, "mount", exc.summary(), "see dmesg for the kernel's reason") from None
            mounted.path, mounted.mount_point = target, point
        result.filesystems = [m for m, _point in placed]

    def _fstab_places(self, guest, disk, result):
        """[(mount.Mounted, mount point)] as the guest's fstab places the disk's filesystems, its
        root first and parents before children; None when none of them holds an fstab. Entries
        naming no filesystem of this disk are noted in result.left_out."""
        found = []
        for mounted in result.filesystems:
            try:
                text = guestfstab.read(mounted.path)
            except guestfstab.FstabError as exc:
                raise GuestError(guest.name, "fstab", f"{disk.key}: {mounted.what}: {exc}",
                                 "set guest_filesystems = all for this guest") from None
            if text is not None:
                found.append((mounted, guestfstab.parse(text)))
        if not found:
            return None
        one_disk = len(guest.disks) == 1

        def named(entry):
            return guestfstab.resolve(entry.spec, result.filesystems, one_disk)
        # The root is the filesystem whose fstab names itself as "/" (a /boot may hold a stray copy);
        # a single fstab whose "/" is named in a way not read here (PARTUUID=) is the root's.
        roots = [(m, entries) for m, entries in found if any(e.mount_point == "/" and named(e) is m for e in entries)]
        if not roots and len(found) == 1:
            roots = found
        if len(roots) != 1:
            raise GuestError(guest.name, "fstab",
                             f"{disk.key}: {len(found)} of its filesystems hold an /etc/fstab, and {len(roots)} of "
                             f"those name themselves as /: which one is the guest's root is not clear",
                             "set guest_filesystems = all for this guest (each filesystem at a path of its own)")
        root, entries = roots[0]
        placed = [(root, "/")]
        for entry in sorted(entries, key=lambda e: (len([p for p in e.mount_point.split("/") if p]), e.line)):
            if entry.mount_point == "/":
                continue
            mounted = named(entry)
            if mounted is None:
                if guestfstab.looks_like_disk(entry.spec):
                    result.left_out.append(f"fstab {entry.shown()}: not a filesystem of this disk mounted here")
            elif any(m is mounted or point == entry.mount_point for m, point in placed):
                result.left_out.append(f"fstab {entry.shown()}: an earlier line mounts that filesystem, or mounts "
                                       f"one there")
            else:
                placed.append((mounted, entry.mount_point))
        return placed

    def _bring_up_guest_vg(self, guest, disk, pv, result, every=False):
        """The guest VG on `disk`'s PV, with the PVs of the same VG on the guest's other disks;
        every: all its LVs' filesystems (guest_filesystems = all), else the root-like one."""
        members = self._vg_members(guest, disk, pv)
        for member, _path, _pv in members:
            self._vg_with[member.key] = disk.key
        return self.system.bring_up_guest_vg(guest, disk, disk.snapshot_path, pv, result, self.cfg, members,
                                             every=every)

    def _vg_members(self, guest, disk, pv):
        """(disk, snapshot path, PV Choice) of the guest's other disks holding a PV of the guest
        VG whose PV is on `disk` (a VG spanning the guest's disks: Proxmox and libvirt group a
        VM's disks into one guest, snapshotted together); [] for a VG of one PV."""
        try:
            guest_vg = self.system.guest_vg(disk.snapshot_path, pv.offset)
        except (OSError, guestlvm.MetadataError):
            return []  # bring_up says why
        if guest_vg.pv_count < 2 or not guest_vg.uuid:
            return []
        members, seen = [], {guest_vg.this_pv}
        for other in guest.disks:
            if other is disk or other.key in self._vg_with:
                continue
            try:
                probed = self._probed[other.key] = self.system.probe(other.snapshot_path)
                other_pv = self.system.find_pv(probed, other.snapshot_path, "auto")
                other_vg = self.system.guest_vg(other.snapshot_path, other_pv.offset) if other_pv else None
            except (ProbeError, OSError, guestlvm.MetadataError):
                continue
            if other_vg is not None and other_vg.uuid == guest_vg.uuid and other_vg.this_pv in guest_vg.pv_ids \
                    and other_vg.this_pv not in seen:
                seen.add(other_vg.this_pv)
                members.append((other, other.snapshot_path, other_pv))
        return members

    # ------------------------------------------------------------- teardown

    def system_state(self, reuse_report=False, every_vg=False):
        """Mounts, loops and our snapshots as the system shows them now.

        reuse_report: take the LVs from the last discover() instead of a new `lvs` (only right
        when nothing was created or removed since, as in `unmount G`).
        every_vg: our snapshots in every VG, whatever the configuration's `vg` (reap: a mount on a
        snapshot of another VG is still ours, never "foreign").
        """
        if reuse_report and self._volumes is not None:
            volumes = self._volumes
        else:
            volumes = self.system.volumes(() if every_vg else self.cfg.vgs)
        return SystemState(
            mounts=self.system.mounts_under(self.cfg.mount_root),
            loops=self.system.loops(),
            snapshots={lv.key: lv for lv in volumes if lv.ours},
            pools={lv.key: lv for lv in volumes if lv.is_thin_pool},
            holder_paths=self.system.holder_paths,
        )

    def teardown(self, guests, state=None, stale=False):
        """Unmount, detach, check for overflow, remove the snapshot, rmdir; per guest.

        Idempotent: what is already gone is skipped. Three queries in all,
        however many guests. stale: the guests' snapshots are leftovers of an earlier run about
        to be replaced (prepare): one that overflowed since is removed with a note, not a failure
        (this run's backup comes from a fresh snapshot).
        """
        state = state or self.system_state()
        held = self.held(state)
        return [self._teardown_guest(guest, state, held, stale) for guest in guests]

    def held(self, state):
        """(vg, lv) of guest disks this runner must leave alone -> the snapshot's owner (ownership.py)."""
        return ownership.held_disks(state, self.leave_alone, self._disk_of_mount)

    def _disk_of_mount(self, target):
        """(vg, lv) for a mount at or below <mount_root>/<vg>/<lv>, else None."""
        parts = os.path.relpath(target, os.path.normpath(self.cfg.mount_root)).split(os.sep)
        if len(parts) >= 2 and parts[0] not in (".", ".."):
            return parts[0], parts[1]
        return None

    def _teardown_quietly(self, guest, result):
        try:
            for report in self.teardown([guest]):
                if report.error:
                    result.notes.append(f"cleanup: {report.error}")
                result.notes.extend(report.notes)
        except (CommandError, OSError) as exc:
            result.notes.append(f"cleanup could not read the system state: {exc}; run domu-snapshot cleanup")

    def _teardown_guest(self, guest, state, held, stale=False):
        started = time.monotonic()
        result = GuestResult(guest, "unmount")
        owners = [held[(d.vg, d.lv)] for d in guest.disks if (d.vg, d.lv) in held]
        if owners:
            # Not ours to touch (see ownership.LEAVE_ALONE): nothing of this guest is torn down.
            result.status = Status.HELD
            result.held_by = owners[0]
            result.notes.append(ownership.held_message(guest.name, owners[0]))
            return result
        ours, foreign = state.split_mounts()
        for disk in guest.disks:
            disk_result = DiskResult(disk)
            result.disks.append(disk_result)
            # by tag and origin, whichever naming made them (a host switched to Proxmox naming)
            snapshots = state.snapshots_of(disk.vg, disk.lv)
            step = "unmount"
            try:
                for target, source in foreign:
                    if target == disk.mount_path or target.startswith(disk.mount_path + os.sep):
                        result.notes.append(f"{target} is mounted from {source or 'an unknown source'}, not from "
                                            f"a loop device over one of our snapshots: not ours, not touched")
                for target, _source in ours:
                    if target == disk.mount_path or target.startswith(disk.mount_path + os.sep):
                        self.system.unmount(target, self.cfg.busy_retries)
                for snapshot in snapshots:
                    if snapshot.major is not None:
                        mine = [d.name for d in state.loops if d.backing_rdev() == (snapshot.major, snapshot.minor)]
                        step = "guest VG deactivation"
                        for name in mine:
                            self.system.deactivate_guest_vg(name, self.cfg.busy_retries)  # LVM inside the guest, if active
                        step = "loop detach"
                        for name in mine:
                            self.system.detach_loop(name, self.cfg.busy_retries)
                    disk_result.peak_percent = snapshot.snap_percent
                    if snapshot.is_classic_snapshot and snapshot.invalid and stale:
                        result.notes.append(
                            f"the leftover snapshot {snapshot.key} of an earlier run had overflowed (the guest "
                            f"kept writing since): removed, and the guest is snapshotted afresh")
                    elif snapshot.is_classic_snapshot and snapshot.invalid:
                        result.fail(GuestError(
                            guest.name, "snapshot overflow",
                            f"snapshot {snapshot.key} overflowed (its copy-on-write area filled up while the "
                            f"guest kept writing): files read from it may be wrong or unreadable, so this "
                            f"guest's backup is not reliable",
                            f"give snapshots more room (snapshot_size, now "
                            f"{self.cfg.for_disk(guest, disk, 'snapshot_size')}; e.g. 20%ORIGIN or an absolute "
                            f"size like 4G) and run the backup again"))
                    pool = state.pools.get(snapshot.pool_key)
                    full = pool.pool_full if pool is not None else ""
                    if full and stale:
                        result.notes.append(
                            f"the leftover snapshot {snapshot.key} of an earlier run is in thin pool {pool.key}, "
                            f"which ran full ({full}): removed")
                    elif full:
                        result.fail(_pool_full_error(guest.name, snapshot, pool, full))
                    step = "snapshot removal"
                    self.system.remove_snapshot(snapshot, self.cfg.busy_retries)
                self._remove_files(disk.mount_path, skip={target for target, _source in foreign})
            except CommandError as exc:
                result.fail(GuestError(
                    guest.name, step, exc.summary(),
                    f"something still uses it (fuser -vm {disk.mount_path}); when it is free, run "
                    f"domu-snapshot cleanup"))
        result.seconds = time.monotonic() - started
        return result

    def _remove_files(self, mount_path, skip=()):
        """The saved domain definition next to a torn-down mount, and its now empty directories
        (with guest_filesystems = all, those below it too; never one of `skip`: mounts not ours)."""
        if commands.is_dry_run():
            for suffix in quiesce.DEFINITION_SUFFIXES:
                xml = quiesce.domain_xml_path(mount_path, suffix)
                if os.path.isfile(xml) and not os.path.islink(xml):
                    commands.say(f"would remove {xml}")
            if os.path.isdir(mount_path) and not os.path.islink(mount_path):
                commands.say(f"would remove the directory {mount_path} (if empty)")
            return
        quiesce.remove_domain_xml(mount_path)
        if mount_path not in skip and not os.path.ismount(mount_path):
            mount.remove_empty_tree(mount_path, skip)
        mount.remove_empty_dirs(mount_path, self.cfg.mount_root)

    def leftovers(self, state=None, selected_only=False):
        """Guests rebuilt from what the system shows: our snapshots, and mounts under the root on
        loop devices over them; and the targets of every other mount under the root (foreign:
        never touched). selected_only: only guests the run's selection covers (`unmount --all`
        with --include, --vg, ...); the others are neither returned nor foreign."""
        state = state or self.system_state()
        disks = {}
        for snapshot in state.snapshots.values():
            disks[(snapshot.vg, lvm.origin_name(snapshot))] = True
        ours, foreign_mounts = state.split_mounts()
        for target, _source in ours:
            key = self._disk_of_mount(target)
            if key is not None:
                disks[key] = True
        foreign = [target for target, _source in foreign_mounts]
        if selected_only:
            disks = {key: True for key in disks if self.selects(*key)}
        guests = [Guest(lv, [Disk(vg, lv, self.mount_path(vg, lv))]) for vg, lv in disks]
        return guests, foreign

    def reap(self, selected_only=False):
        """Tear down everything earlier runs left: returns per-guest results. What this runner must
        leave alone (a plugin runner: what `domu-snapshot mount` holds) comes back with status
        "held" and nothing of it touched. selected_only: only the guests of the run's selection
        (`unmount --all`); `cleanup` and the boot-time service take everything that is ours.
        Mounts under the mount root that are not on a loop device over one of our snapshots are
        never unmounted, whatever their path (a warning each)."""
        state = self.system_state(every_vg=True)
        guests, foreign = self.leftovers(state, selected_only)
        for target in foreign:
            self.log("warning", f"{target} is mounted under the mount root but is not ours (not a loop device "
                                f"over one of our snapshots): not touched")
        results = self.teardown(guests, state)
        keep = {os.path.normpath(r.guest.disks[0].mount_path) for r in results if r.status == Status.HELD}
        if selected_only:
            # what the selection does not cover keeps its files (a mounted guest's domain definition)
            everything, _ = self.leftovers(state)
            keep |= {os.path.normpath(g.disks[0].mount_path) for g in everything
                     if not self.selects(g.disks[0].vg, g.disks[0].lv)}
        if not commands.is_dry_run():
            self._remove_stale_dirs(keep=keep)
        return results

    def _remove_stale_dirs(self, keep=()):
        root = self.cfg.mount_root
        try:
            vgs = os.listdir(root)
        except OSError:
            return
        mounted = {target for target, _source in self.system.mounts_under(root)}
        for vg in vgs:
            vg_dir = os.path.join(root, vg)
            if os.path.islink(vg_dir) or not os.path.isdir(vg_dir):
                continue
            for lv in os.listdir(vg_dir):
                path = os.path.join(vg_dir, lv)
                if not os.path.islink(path) and os.path.isdir(path) and not os.path.ismount(path) \
                        and path not in mounted:
                    mount.remove_empty_tree(path, mounted)  # guest_filesystems = all: part<N>, lvm/...
                    mount.remove_empty_dirs(path, root)
            quiesce.remove_stale_domain_xml(vg_dir, keep)
            mount.remove_empty_dirs(vg_dir, root)


def _pool_full_error(name, snapshot, pool, full):
    """The failure of a guest whose snapshot's thin pool ran full while it existed."""
    writes = {"error": "failed", "queue": "stalled (queued) and then failed"}.get(pool.when_full, "failed or stalled")
    return GuestError(
        name, "thin pool",
        f"thin pool {pool.key} ran full during the backup ({full}; {pool.pool_use()}): the guest's own "
        f"writes to its disks in that pool {writes} meanwhile, and reads of snapshot {snapshot.key} may have "
        f"failed, so the files read may be incomplete: this guest's backup is not reliable",
        f"{_pool_room_hint(pool)}, check the guest (its writes failed), and run the backup again")


def _pool_room_hint(pool):
    return (f"give the pool room (lvextend -L +SIZE {pool.key}; for its metadata lvextend "
            f"--poolmetadatasize +SIZE {pool.key}), or remove thin LVs it no longer needs")


def _gib(size):
    return f"{size / 1024 ** 3:.2f} GiB"
