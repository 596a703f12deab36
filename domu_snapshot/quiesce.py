"""libvirt side of a snapshot: which LVs belong to which domain, and holding
the guest still while its snapshots are made.

Levels:
  agent    dom.fsFreeze() through qemu-guest-agent, snapshots, dom.fsThaw()
  suspend  dom.suspend(), snapshots, dom.resume()
  sync     Alt+SysRq+S sent to the guest (emergency sync), then snapshots
  none     snapshots only (crash-consistent)
  auto     agent when the domain runs and has a connected agent, else none

A hold is bounded: a watchdog thread thaws/resumes the guest when the
snapshot step overruns the window, and every exit path (exceptions,
KeyboardInterrupt, SystemExit from a SIGTERM handler) releases it.

libvirt-python is optional and imported lazily; without it, or without a
connection, `auto` becomes `none` with a warning and an explicit level fails
the guest.
"""

import dataclasses
import math
import os
import threading
import time
import xml.etree.ElementTree as ET

from .errors import GuestError

LEVELS = ("auto", "agent", "suspend", "sync", "none")
DEFAULT_WINDOW = 10.0
AGENT_CHANNEL = "org.qemu.guest_agent.0"
# Linux input keycodes KEY_LEFTALT, KEY_SYSRQ, KEY_S: the SysRq "emergency sync" chord.
SYSRQ_SYNC_KEYCODES = (56, 99, 31)
# SysRq-S only schedules the sync inside the guest; there is no completion signal,
# so give it a moment before the snapshot (what admins do by hand, too).
SYNC_SETTLE_SECONDS = 1.0
# Bounded retries for thaw/resume: a guest must not stay held because one call
# hit a transient error (agent busy, libvirt job lock held for a moment).
RELEASE_ATTEMPTS = 3
RELEASE_DELAY = 0.3

# virDomainState values (stable ABI), so the module works without libvirt imported.
_RUNNING, _BLOCKED, _PAUSED, _SHUTDOWN, _SHUTOFF, _CRASHED, _PMSUSPENDED = 1, 2, 3, 4, 5, 6, 7
_PAUSED_USER = 1
_STATE_NAMES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down",
                5: "shut off", 6: "crashed", 7: "suspended by the guest"}

_libvirt_module = {}


LIBVIRT_RUN_DIR = "/run/libvirt"


def daemon_sockets():
    """The libvirt daemons' sockets (libvirtd, virtproxyd, virtqemud, virtxend...) that exist."""
    try:
        return [n for n in os.listdir(LIBVIRT_RUN_DIR) if n.endswith("-sock")]
    except OSError:
        return []


def _libvirt():
    """The libvirt module, or None when libvirt-python is not installed."""
    if "mod" not in _libvirt_module:
        try:
            import libvirt  # noqa: WPS433 (optional dependency, imported on first use)
        except ImportError:
            libvirt = None
        else:
            # libvirt prints every error to stderr by default; we report them ourselves.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _libvirt_module["mod"] = libvirt
    return _libvirt_module["mod"]


def _error_code(exc):
    get = getattr(exc, "get_error_code", None)
    return get() if get else None


def _message(exc):
    text = str(exc).strip()
    return text or type(exc).__name__


# ---------------------------------------------------------------- mapping LVs to domains

# LV descriptors come as dicts or objects, spelled like `lvs` fields (lv, lv_path,
# lv_dm_path) or like lvm.LogicalVolume (name, path, dm_path).
_SPELLINGS = {"vg": ("vg", "vg_name"), "lv": ("lv", "lv_name", "name"), "lv_path": ("lv_path", "path"),
              "lv_dm_path": ("lv_dm_path", "dm_path"), "major": ("major", "lv_kernel_major"),
              "minor": ("minor", "lv_kernel_minor")}


def _field(lv, name, default=""):
    for spelling in _SPELLINGS.get(name, (name,)):
        value = lv.get(spelling) if isinstance(lv, dict) else getattr(lv, spelling, None)
        if value not in (None, ""):
            return value
    return default


def dm_name(vg, lv):
    """Device-mapper name of VG/LV: each hyphen doubled, then VG-LV."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def lv_aliases(lv):
    """Every path string that names this LV (what a domain's <source dev> may say)."""
    vg, name = _field(lv, "vg"), _field(lv, "lv")
    names = {_field(lv, "lv_path"), _field(lv, "lv_dm_path")}
    if vg and name:
        names |= {f"/dev/{vg}/{name}", f"/dev/mapper/{dm_name(vg, name)}"}
    minor = _field(lv, "minor", None)
    if minor is not None and int(minor) >= 0:
        names.add(f"/dev/dm-{int(minor)}")  # what libvirt shows when a domain was set up by dm name
    names.discard("")
    names |= {os.path.realpath(path) for path in names if os.path.exists(path)}
    return names


def _lv_rdevs(lv, aliases):
    """Device numbers of the LV: from lvs' kernel major/minor, or by stat of its paths."""
    major, minor = _field(lv, "major", None), _field(lv, "minor", None)
    found = {os.makedev(int(major), int(minor))} if major is not None and minor is not None \
        and int(major) >= 0 and int(minor) >= 0 else set()
    found |= {rdev for rdev in map(_rdev, aliases) if rdev is not None}
    return found


def _rdev(path):
    """Block device number of path, or None when it does not exist or is no block device."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if (st.st_mode & 0o170000) == 0o060000 else None


def disk_sources(xml_text):
    """Source paths of a domain's disks (block devices, and file disks that name a device)."""
    root = ET.fromstring(xml_text)
    sources = []
    for disk in root.findall("./devices/disk"):
        source = disk.find("source")
        if source is None:
            continue
        path = source.get("dev") or source.get("file")
        if path:
            sources.append(path)
    return sources


def agent_channel_state(xml_text):
    """'connected'/'disconnected' as libvirt reports it, '' when unknown, None when there is no agent channel."""
    root = ET.fromstring(xml_text)
    for target in root.findall("./devices/channel/target"):
        if target.get("name") == AGENT_CHANNEL:
            return target.get("state", "")
    return None


@dataclasses.dataclass
class Domain:
    """A libvirt domain that uses some of the LVs: one guest, however many disks it has."""

    name: str
    uuid: str
    lvs: list  # the caller's LV descriptors, in the domain's disk order
    xml: str  # the persistent definition: what `virsh define` accepts
    active: bool
    error: str = ""  # libvirt failed on it during discovery (e.g. it vanished): its guest fails


def _definition_xml(dom):
    """The domain's persistent definition with secrets, so a restore redefines it exactly.

    Falls back to the live XML where the driver refuses the flags (e.g. a read-only connection).
    """
    lv = _libvirt()
    for flags in (lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE, lv.VIR_DOMAIN_XML_INACTIVE, 0):
        try:
            return dom.XMLDesc(flags)
        except lv.libvirtError:
            continue
    return dom.XMLDesc(0)


def _error_type():
    """libvirt.libvirtError, or a class nothing raises when libvirt-python is missing."""
    lv = _libvirt()
    return lv.libvirtError if lv is not None else _NoError


class _NoError(Exception):
    pass


def lv_matcher(lvs):
    """A function from a disk's source path (as a toolstack names it) to the index of the LV in
    `lvs` it is, or None: by any of the LV's path spellings, else by device number."""
    by_alias, by_rdev = {}, {}
    for index, lv in enumerate(lvs):
        aliases = lv_aliases(lv)
        for alias in aliases:
            by_alias.setdefault(alias, index)
        for rdev in _lv_rdevs(lv, aliases):
            by_rdev.setdefault(rdev, index)

    def index_of(source):
        index = by_alias.get(source)
        if index is None and os.path.exists(source):
            index = by_alias.get(os.path.realpath(source))
            if index is None:
                index = by_rdev.get(_rdev(source))
        return index
    return index_of


def map_domains(conn, lvs, log=None):
    """Map LV descriptors (vg, lv, lv_path, lv_dm_path) to the libvirt domains whose disks they are.

    Returns {domain name: Domain}. LVs no domain uses are simply absent. An LV
    claimed by several domains (e.g. a clone's stale definition) goes to the
    running one, or the first by name, with a warning.
    """
    log = log or (lambda level, message: None)
    lv_index = lv_matcher(lvs)
    claims = {}  # LV index -> list of (active, name)
    found = {}
    error_type = _error_type()
    # Running first, then by name: the deterministic owner of a shared LV. A domain that vanishes
    # meanwhile (undefined, migrated away) raises on any call: never a traceback of the run.
    listed = []
    for dom in conn.listAllDomains(0):
        try:
            listed.append(((not dom.isActive(), dom.name()), dom))
        except error_type as exc:
            log("warning", f"a libvirt domain vanished while its disks were looked up ({_message(exc)}); "
                           f"the LVs it used, if any, are guests of their own in this run")
    listed.sort(key=lambda item: item[0])
    for (_inactive, name), dom in listed:
        matched = []
        try:
            sources = disk_sources(dom.XMLDesc(0))
        except error_type as exc:
            log("warning", f"domain {name}: its definition cannot be read ({_message(exc)}); the LVs it used, "
                           f"if any, are guests of their own in this run (not quiesced)")
            continue
        for source in sources:
            index = lv_index(source)
            if index is not None and index not in matched:
                matched.append(index)
        if not matched:
            continue
        mine = []
        for index in matched:
            claims.setdefault(index, []).append(name)
            if len(claims[index]) == 1:
                mine.append(index)
        if mine:
            try:
                found[name] = Domain(name, dom.UUIDString(), [lvs[i] for i in mine], _definition_xml(dom),
                                     bool(dom.isActive()))
            except error_type as exc:
                found[name] = Domain(name, "", [lvs[i] for i in mine], "", False, error=_message(exc))
    for index, names in claims.items():
        if len(names) > 1:
            log("warning", f"{_field(lvs[index], 'lv_path') or _field(lvs[index], 'lv')} is a disk of several "
                           f"domains ({', '.join(names)}); treating it as part of {names[0]}")
    return found


# ---------------------------------------------------------------- the definition in the backup

# Helpers mode: the definition lies next to the mount of the guest's first disk,
# <mount_root>/<vg>/<lv>.domain.xml, so a FileSet over the mount root picks it up
# and a restore of the guest's files brings its definition along.
DOMAIN_XML_SUFFIX = ".domain.xml"
XL_CONFIG_SUFFIX = ".xl.json"  # an xl domain's `xl list -l` entry (xl.py)
PVE_CONFIG_SUFFIX = ".qemu-server.conf"  # a Proxmox VM's /etc/pve/qemu-server/<vmid>.conf (proxmox.py)
DEFINITION_SUFFIXES = (DOMAIN_XML_SUFFIX, XL_CONFIG_SUFFIX, PVE_CONFIG_SUFFIX)


def domain_xml_path(mount_path, suffix=DOMAIN_XML_SUFFIX):
    return os.path.normpath(mount_path) + suffix


def write_domain_xml(path, xml_text):
    """Write the definition (0600: it may hold VNC/SPICE passwords) atomically; never through a symlink."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(xml_text if xml_text.endswith("\n") else xml_text + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_domain_xml(mount_path):
    """Remove the definition file next to a mount, if it is ours (a regular file). Idempotent."""
    for suffix in DEFINITION_SUFFIXES:
        path = domain_xml_path(mount_path, suffix)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
        except FileNotFoundError:
            pass


def remove_stale_domain_xml(vg_dir, keep=()):
    """After a crash: definition files (and half-written ones) whose mount is gone, in one VG directory.
    Those of mount paths in `keep` (another job's guests, e.g. a swap-only first disk) stay."""
    try:
        names = os.listdir(vg_dir)
    except OSError:
        return
    for name in names:
        path = os.path.join(vg_dir, name)
        for suffix in DEFINITION_SUFFIXES:
            if name.endswith(suffix):
                mount_path = path[: -len(suffix)]
                if not os.path.ismount(mount_path) and os.path.normpath(mount_path) not in keep:
                    remove_domain_xml(mount_path)
            elif suffix + ".tmp" in name and os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)


# ---------------------------------------------------------------- quiescing

def not_possible(guest, level, reason, hint=""):
    """The error of a quiesce level that was asked for and cannot be had (on any host kind)."""
    hint = hint or f"fix that, or set quiesce = auto or none for this guest ([guest {guest}])"
    return GuestError(guest, "quiesce", f"quiesce={level} not possible: {reason}", hint)


@dataclasses.dataclass
class QuiesceResult:
    """What a quiesce did for one guest."""

    requested: str
    level: str = "none"  # what was really used: agent, suspend, sync, none
    freeze_ms: float = 0.0  # frozen/paused time, monotonic clock (0 for sync/none)
    note: str = ""
    overrun: bool = False  # the watchdog released the guest before the snapshots were done
    degraded: bool = False  # less than asked for (auto fell back, window exceeded): worth a warning
    value: object = None  # what the snapshot callable returned
    agent_timeout: object = None  # seconds libvirt waits for the guest agent, when we could set it

    def summary(self):
        text = self.level
        if self.level in ("agent", "suspend"):
            text += f" {self.freeze_ms:.0f} ms"
        if self.overrun:
            text += " (window exceeded)"
        return text


def requested_level(cfg, *names):
    """The level configured for a guest: the first `[guest NAME]` override among names, else the run's."""
    for name in names:
        level = cfg.guests.get(name, {}).get("quiesce") if name else None
        if level:
            return level
    return cfg.quiesce


class Quiescer:
    """One libvirt connection for a run: maps LVs to domains and holds guests around their snapshots.

    `disabled`: why libvirt is not to be used at all (host = plain): no connection is tried."""

    kind = "libvirt"
    definition_suffix = DOMAIN_XML_SUFFIX

    def __init__(self, uri="", window=DEFAULT_WINDOW, log=None, connection=None, disabled=""):
        self.uri = uri or ""
        self.window = float(window)
        self.log = log or (lambda level, message: None)
        self._conn = connection
        self._unavailable = disabled or None  # why there is no connection (once known)
        self._unavailable_hint = "set host = auto, libvirt or xl to quiesce guests" if disabled else ""
        self._warned = False

    # -- connection
    def connection(self):
        """The libvirt connection, or None (the reason is in .unavailable)."""
        if self._conn is not None or self._unavailable:
            return self._conn
        if not self.uri and not os.environ.get("LIBVIRT_DEFAULT_URI") and not daemon_sockets():
            # No daemon could answer the default URI (e.g. a Xen host run with xl): skip loading
            # libvirt-python and the connection attempt, which every run would pay for nothing.
            self._unavailable = f"no libvirt daemon on this host (no socket in {LIBVIRT_RUN_DIR})"
            self._unavailable_hint = "start libvirtd (or virtqemud/virtxend), or set libvirt_uri"
            return None
        lv = _libvirt()
        if lv is None:
            self._unavailable = "libvirt-python is not installed"
            self._unavailable_hint = "install python3-libvirt (Debian) or libvirt-python"
        else:
            try:
                self._conn = lv.open(self.uri or None)
            except lv.libvirtError as exc:
                self._unavailable = f"cannot connect to libvirt at {self.uri or '(default URI)'}: {_message(exc)}"
                self._unavailable_hint = "check libvirt_uri and that libvirtd (or virtqemud) runs"
        return self._conn

    def warn_unavailable(self):
        """Say once per run that there is no libvirt (only where someone wanted it)."""
        if self._unavailable and not self._warned:
            self._warned = True
            # a host without libvirt (Xen with xl, a plain host) is a setup, not a fault: a note;
            # a configured libvirt_uri that does not answer is worth a warning
            self.log("warning" if self.uri else "info",
                     f"quiesce: {self._unavailable}; guests with quiesce=auto get none, "
                     "disks of one domain are not grouped and domain definitions are not saved")

    @property
    def unavailable(self):
        self.connection()
        return self._unavailable

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 -- closing is best effort at the end of a run
                pass
            self._conn = None

    # -- mapping
    def domains(self, lvs):
        """{domain name: Domain} for the given LV descriptors; {} without libvirt."""
        conn = self.connection()
        if conn is None:
            if self.uri:  # configured explicitly: its absence is worth a warning even without quiesce
                self.warn_unavailable()
            return {}
        try:
            return map_domains(conn, lvs, self.log)
        except _error_type() as exc:  # the connection itself failed (listAllDomains)
            self.log("warning", f"libvirt: cannot list domains ({_message(exc)}); every LV is a guest of its own "
                                f"in this run and none is quiesced")
            return {}

    def definition(self, name, fallback=""):
        """The domain's current persistent definition (XML), or `fallback` when libvirt cannot say."""
        conn = self.connection()
        lv = _libvirt()
        if conn is None:
            return fallback
        try:
            return _definition_xml(conn.lookupByName(name))
        except lv.libvirtError as exc:
            kept = "saving the one read at discovery" if fallback else "it is not saved"
            self.log("warning", f"domain {name}: cannot read its definition now ({_message(exc)}); {kept}")
            return fallback

    # -- holding
    def run(self, guest, domain, level, action):
        """Run `action()` (the guest's snapshots) inside the quiesce; returns a QuiesceResult.

        `domain` is a domain name (or a Domain) or None when no domain uses the
        guest's LVs. Raises GuestError (step "quiesce") when an explicitly
        requested level cannot be had, and whatever `action` raises, after the
        guest is released.
        """
        with self.hold(guest, domain, level) as result:
            result.value = action()
        return result

    def hold(self, guest, domain, level):
        """Context manager around the guest's snapshots; yields the QuiesceResult it fills in."""
        return _Hold(self, guest, getattr(domain, "name", domain), level)

    _fail = staticmethod(not_possible)


def _classify(state):
    if state in (_RUNNING, _BLOCKED, _SHUTDOWN, 0):
        return "running"
    if state == _PAUSED:
        return "paused"
    return "quiet"  # shut off, crashed, suspended by the guest: its disks do not change


class _NoAnswer(Exception):
    """libvirt did not return from a freeze or suspend within its bound."""


# How much longer than the window a freeze/suspend call is waited for: libvirt's own agent
# timeout (set to the window) normally answers first.
ENGAGE_GRACE = 5.0


class HoldBase:
    """What every guest hold (libvirt, Proxmox, xl) does alike: choose a level, engage it under a
    watchdog, release the guest on every path (also during a second interrupt), report a failed
    release. A subclass sets `guest`, `result`, `window`, `log` and `held` (what is held, for
    messages) and provides `_plan()`, `_sync()`, `_engage(level)` and `_release(why)`."""

    _watchdog = None  # a thread that ends once the hold is done, or a threading.Timer
    _started = None  # monotonic time of the freeze/pause
    _release_error = None

    def __enter__(self):
        level = self._plan()  # a level, or "suspend-kept": paused by someone else, left so
        res = self.result
        if level in ("none", "suspend-kept"):
            res.level = "suspend" if level == "suspend-kept" else "none"
            return res
        if level == "sync":
            self._sync()
            return res
        self._engage_or_release(level)
        return res

    def __exit__(self, exc_type, exc, tb):
        pending = self._finish()
        if pending is not None:
            raise pending
        if self._release_error is not None:
            if exc_type is not None and not issubclass(exc_type, Exception):
                return False  # KeyboardInterrupt/SystemExit go on; the release error was logged
            if exc is not None:
                self._release_error.message += f" (after the snapshot step failed: {exc})"
            raise self._release_error from exc
        return False

    def _engage_or_release(self, level):
        """_engage(level) (freeze or pause) inside __enter__: `with` does not call __exit__ when
        __enter__ raises, so an interrupt right after the freeze returned is released here."""
        try:
            self._engage(level)
        except BaseException:
            pending = self._finish()
            if pending is not None:
                raise pending
            raise

    def _finish(self):
        """Stop the watchdog and release the guest; returns an interrupt that came meanwhile."""
        self._stop_watchdog()
        pending = None
        # A second Ctrl-C or SIGTERM during the release must not leave the guest
        # held: finish releasing (idempotent), then honour the interrupt.
        for _ in range(3):
            try:
                self._release("done")
                break
            except (KeyboardInterrupt, SystemExit) as interrupt:
                pending = interrupt
        if isinstance(self._watchdog, threading.Thread) and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=60)
        return pending

    def _watch(self):
        """The watchdog thread: releases the guest when the snapshots overrun the window."""
        if not self._done.wait(self.window):
            self._overrun()

    def _overrun(self):
        self.result.overrun = self.result.degraded = True
        self.log("warning", f"{self.guest}: snapshots took longer than the {self.window:g} s quiesce window; "
                            f"releasing {self.held} now (its snapshots are crash-consistent)")
        self._release("watchdog")

    def _stop_watchdog(self):
        if isinstance(self._watchdog, threading.Timer):
            self._watchdog.cancel()
        done = getattr(self, "_done", None)  # the Event a watchdog thread waits on
        if done is not None:
            done.set()

    def _retried(self, release, errors):
        """release() up to RELEASE_ATTEMPTS times (an agent or daemon may answer late); the last
        error of type `errors`, or None. Records how long the guest was held."""
        error = None
        for attempt in range(RELEASE_ATTEMPTS):
            try:
                release()
                error = None
                break
            except errors as exc:
                error = exc
                if attempt + 1 < RELEASE_ATTEMPTS:
                    time.sleep(RELEASE_DELAY)
        if self._started is not None:
            self.result.freeze_ms = round((time.monotonic() - self._started) * 1000.0, 1)
        return error


class _Hold(HoldBase):
    """One guest held still: chooses the level, engages it, watches the window, always releases."""

    def __init__(self, quiescer, guest, domain_name, level):
        if level not in LEVELS:
            raise ValueError(f"quiesce level must be one of {', '.join(LEVELS)}, not {level!r}")
        self.q = quiescer
        self.guest = guest
        self.domain_name = domain_name
        self.window, self.log, self.held = quiescer.window, quiescer.log, f"domain {domain_name}"
        self.result = QuiesceResult(requested=level)
        self._dom = None
        self._release_fn = None  # thaw or resume, while we hold the guest
        self._lock = threading.Lock()
        self._done = threading.Event()

    # -- choosing a level
    def _plan(self):
        """Decide the level to use now; may raise GuestError for an explicit level."""
        requested, res, q = self.result.requested, self.result, self.q
        explicit = requested not in ("auto", "none")
        if requested == "none":
            return "none"
        conn = q.connection()
        if conn is None:
            if explicit:
                raise q._fail(self.guest, requested, q._unavailable, q._unavailable_hint)
            q.warn_unavailable()  # once per run, not once per guest: a host without libvirt is a setup
            res.note = f"no quiesce: {q._unavailable}"
            return "none"
        if self.domain_name is None:
            if explicit:
                raise q._fail(self.guest, requested, "no libvirt domain uses this guest's LVs",
                              f"define the guest in libvirt ({q.uri or 'default URI'}) or set quiesce = none "
                              f"for it ([guest {self.guest}])")
            return "none"  # a plain LV: nothing to quiesce, nothing to say
        lv = _libvirt()
        try:
            self._dom = conn.lookupByName(self.domain_name)
            state, reason = self._dom.state()
        except lv.libvirtError as exc:
            if explicit:
                raise q._fail(self.guest, requested, f"domain {self.domain_name}: {_message(exc)}") from None
            res.note, res.degraded = f"no quiesce: domain {self.domain_name}: {_message(exc)}", True
            return "none"
        kind = _classify(state)
        if kind == "quiet":
            res.note = f"domain {_STATE_NAMES.get(state, state)}: no quiesce needed"
            return "none"
        if kind == "paused":
            if requested == "suspend":
                res.note = "domain was already paused; left paused"
                return "suspend-kept"
            if explicit:
                raise q._fail(self.guest, requested, f"domain {self.domain_name} is paused, so its guest cannot "
                              "act on it", f"resume the domain, or set quiesce = suspend or none for this guest "
                              f"([guest {self.guest}])")
            res.note = "domain paused (not by us): snapshot without quiesce"
            return "none"
        if requested in ("agent", "auto"):
            channel = agent_channel_state(self._dom.XMLDesc(0))
            # libvirt's live XML says whether the agent is connected; probing with
            # qemuAgentCommand instead would taint the domain on every backup.
            why = None
            if channel is None:
                why = "the domain has no qemu-guest-agent channel"
            elif channel == "disconnected":
                why = "the qemu-guest-agent is not connected"
            if why:
                if explicit:
                    raise q._fail(self.guest, requested, why, "install and start qemu-guest-agent in the guest "
                                  f"(and add its channel), or set quiesce = suspend or none ([guest {self.guest}])")
                res.note, res.degraded = f"no agent freeze: {why}; crash-consistent snapshot", True
                return "none"
            return "agent"
        return requested  # suspend or sync on a running domain

    # -- sync
    def _sync(self):
        lv = _libvirt()
        res = self.result
        try:
            self._dom.sendKey(lv.VIR_KEYCODE_SET_LINUX, 0, list(SYSRQ_SYNC_KEYCODES), len(SYSRQ_SYNC_KEYCODES), 0)
        except lv.libvirtError as exc:
            if res.requested == "sync":
                raise self.q._fail(self.guest, "sync", f"sending SysRq-S failed: {_message(exc)}") from None
            res.note = f"no sync: {_message(exc)}"  # pragma: no cover -- auto never picks sync
            return
        res.level = "sync"
        res.note = "SysRq-S sent (needs kernel.sysrq with sync enabled in the guest)"
        time.sleep(SYNC_SETTLE_SECONDS)

    # -- agent / suspend
    def _engage(self, level):
        lv = _libvirt()
        res, dom = self.result, self._dom
        if level == "agent":
            self._bound_agent()
            engage, self._release_fn = dom.fsFreeze, self._thaw
        else:
            engage, self._release_fn = dom.suspend, self._resume
        # The watchdog runs from before the freeze, so a freeze that itself hangs is bounded too;
        # it is started before the clock and the freeze, since starting a thread waits for the
        # scheduler, and that wait must not be time the guest spends frozen.
        self._watchdog = threading.Thread(target=self._watch, name=f"quiesce-watchdog-{self.guest}", daemon=True)
        self._watchdog.start()
        self._started = time.monotonic()
        try:
            count = self._bounded(engage, self._release_fn, self.q.window + ENGAGE_GRACE)
        except (lv.libvirtError, _NoAnswer) as exc:
            self._done.set()
            if not isinstance(exc, _NoAnswer):
                self._best_effort_undo()  # (after no answer, the call's own thread undoes it if it lands)
            self._release_fn = None
            if res.requested == "auto":
                res.level, res.degraded = "none", True
                res.note = f"guest agent did not freeze ({_message(exc)}); crash-consistent snapshot"
                return
            hint = ("check qemu-guest-agent in the guest, or set quiesce = suspend or none "
                    f"([guest {self.guest}])" if level == "agent" else "")
            raise self.q._fail(self.guest, level, f"{'fsFreeze' if level == 'agent' else 'suspend'} of "
                               f"{self.domain_name}: {_message(exc)}", hint) from None
        res.level = level
        if level == "agent" and count == 0:
            res.note = "the agent froze no filesystem"
        if res.overrun:
            # The freeze returned after the watchdog had already thawed: undo it again now.
            self._release("late freeze", force=True)

    def _bounded(self, call, undo, seconds):
        """call() in a thread of its own, waited for `seconds` at most: without a libvirt agent
        timeout a hung agent would hold this guest, and the run lock, for ever. A call that
        succeeds after we stopped waiting is undone (`undo`) by that thread."""
        box, lock, finished = {}, threading.Lock(), threading.Event()

        def worker():
            try:
                box["value"] = call()
            except BaseException as exc:  # noqa: BLE001 -- handed to the waiting thread
                box["error"] = exc
            with lock:
                box["done"] = True
                late = box.get("abandoned") and "error" not in box
            finished.set()
            if late:
                for _ in range(RELEASE_ATTEMPTS):
                    try:
                        undo()
                        break
                    except Exception:  # noqa: BLE001 -- retried, then only logged
                        time.sleep(RELEASE_DELAY)
                else:
                    self.q.log("error", f"{self.guest}: a late {getattr(call, '__name__', 'freeze')} of domain "
                                        f"{self.domain_name} could not be undone: check it (virsh domfsthaw / resume)")

        threading.Thread(target=worker, name=f"quiesce-call-{self.guest}", daemon=True).start()
        try:
            finished.wait(seconds)
        finally:
            with lock:
                if not box.get("done"):
                    box["abandoned"] = True
        if not box.get("done"):
            raise _NoAnswer(f"no answer within {seconds:g} s; it is undone if it lands later")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _bound_agent(self):
        """libvirt's default agent timeout can be unbounded: a hung agent would hold the guest (and
        the run lock) for ever. Bound every agent call of this domain by the window (libvirt >= 5.10;
        the setting stays on the running domain)."""
        lv = _libvirt()
        seconds = max(1, int(math.ceil(self.q.window)))
        try:
            self._dom.agentSetResponseTimeout(seconds, 0)
            self.result.agent_timeout = seconds
        except (AttributeError, lv.libvirtError):
            self.result.agent_timeout = None  # older libvirt, or a driver without it (test:///, xen)
            # libvirt-python builds each later error's message from the thread's last error
            getattr(lv, "virResetLastError", lambda: None)()

    def _release(self, why, force=False):
        with self._lock:
            release = self._release_fn
            if release is None and not force:
                return
            self._release_fn = None
            release = release or (self._thaw if self.result.level == "agent" else self._resume)
            error = self._retried(release, Exception)  # any failure is retried, then reported
            if error is not None:
                action = "fsThaw" if release == self._thaw else "resume"
                command = "domfsthaw" if action == "fsThaw" else "resume"
                self._release_error = GuestError(
                    self.guest, "quiesce", f"{action} of domain {self.domain_name} failed ({why}): {_message(error)}",
                    f"the guest may still be {'frozen' if action == 'fsThaw' else 'paused'}: "
                    f"run `virsh {command} {self.domain_name}` now")
                self.q.log("error", str(self._release_error))

    def _thaw(self):
        lv = _libvirt()
        try:
            self._dom.fsThaw()  # thawing a thawed guest is a no-op: safe to repeat
        except lv.libvirtError as exc:
            if _error_code(exc) == lv.VIR_ERR_OPERATION_INVALID and not self._dom.isActive():
                return  # the domain stopped meanwhile: nothing left frozen
            raise

    def _resume(self):
        state, reason = self._dom.state()
        # Only undo our own pause: not an I/O-error pause, not one that is already gone.
        if state == _PAUSED and reason == _PAUSED_USER:
            self._dom.resume()

    def _best_effort_undo(self):
        """After a failed freeze/suspend: the agent may have frozen some filesystems before failing."""
        lv = _libvirt()
        try:
            if self._release_fn == self._thaw:
                self._thaw()
            else:
                self._resume()
        except lv.libvirtError:
            pass
