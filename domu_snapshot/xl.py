"""Xen hosts run with the xl toolstack (no libvirt): which LVs are one domain's disks, the
domain's configuration for the backup, and quiesce by pausing the domain.

- `xl list -l` prints a JSON array with one object per domain, {"domid": N, "config": ...},
  where "config" is libxl's domain configuration: "c_info" (name, uuid, type) and "disks"
  (each with the backend's "pdev_path", here the LV's path, and the guest's "vdev").
  xl prints S-expressions instead when /etc/xen/xl.conf sets output_format="sxp": refused.
- quiesce = suspend: `xl pause` before the snapshots and `xl unpause` after, on every path
  (also after a failure, a signal, or when the snapshots outlast quiesce_timeout); a domain
  paused by someone else is left paused and never unpaused by us.
- quiesce = sync: `xl sysrq DOMAIN s` (the guest kernel's emergency sync; needs kernel.sysrq).
- quiesce = auto: nothing (xl has no guest-agent freeze, and auto never pauses a guest unasked);
  quiesce = agent cannot be had on xl and fails the guest.
"""

import json
import os
import threading
import time

from . import commands, quiesce
from .commands import CommandError
from .errors import GuestError

DEFAULT_XL = "/usr/sbin/xl"
XEN_CAPABILITIES = "/proc/xen/capabilities"
# xl talks to the hypervisor and xenstored only: a call that takes longer than this is stuck.
XL_TIMEOUT = 30.0
DOM0_NAME = "Domain-0"


def is_xen_dom0(capabilities=XEN_CAPABILITIES):
    """Whether this host is a Xen control domain (where xl manages the guests)."""
    try:
        with open(capabilities, encoding="ascii", errors="replace") as handle:
            return "control_d" in handle.read()
    except OSError:
        return False


def usable(xl_command):
    return os.path.isabs(xl_command) and os.access(xl_command, os.X_OK)


class XlError(Exception):
    """xl could not say what it was asked (its message, and what to do)."""

    def __init__(self, message, hint=""):
        self.message, self.hint = message, hint
        super().__init__(message)


def list_long(xl_command, name=None, timeout=XL_TIMEOUT):
    """The entries of `xl list -l [NAME]`: [{"domid": ..., "config": {...}}, ...]."""
    argv = [xl_command, "list", "-l"] + ([name] if name else [])
    try:
        proc = commands.run(argv, timeout=timeout)
    except CommandError as exc:
        raise XlError(exc.summary(), "check that xl works (xl list) and xenstored runs") from None
    text = proc.stdout.strip()
    if text.startswith("("):
        raise XlError("xl printed its domain list as S-expressions, not JSON",
                      'set output_format="json" in /etc/xen/xl.conf (the default)')
    try:
        entries = json.loads(text or "[]")
    except ValueError as exc:
        raise XlError(f"xl list -l printed no JSON ({exc})", "check the xl version (Xen 4.2 or newer)") from None
    if not isinstance(entries, list):
        raise XlError("xl list -l printed JSON that is no list of domains")
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("config"), dict)]


def entry_name(entry):
    c_info = entry["config"].get("c_info") or {}
    return str(c_info.get("name") or "")


def entry_disk_paths(entry):
    """The backend paths of a domain's disks, in its disk order (cdroms and empty drives left out)."""
    paths = []
    for disk in entry["config"].get("disks") or []:
        if not isinstance(disk, dict) or disk.get("is_cdrom"):
            continue
        path = disk.get("pdev_path")
        if isinstance(path, str) and path:
            paths.append(path)
    return paths


def map_domains(entries, lvs, log=None):
    """{domain name: quiesce.Domain} for the LV descriptors that are disks of xl domains.

    Running domains come before the others (`xl list -l` lists running ones; a domid of null
    marks one that is not); an LV claimed twice goes to the first, with a warning."""
    log = log or (lambda level, message: None)
    lv_index = quiesce.lv_matcher(lvs)
    owner, found = {}, {}
    for entry in entries:
        name = entry_name(entry)
        if not name or name == DOM0_NAME or entry.get("domid") == 0:
            continue
        mine = []
        for path in entry_disk_paths(entry):
            index = lv_index(path)
            if index is None:
                continue
            if index in owner and owner[index] != name:
                log("warning", f"{path} is a disk of xl domains {owner[index]} and {name}; treating it as part "
                               f"of {owner[index]}")
                continue
            if index not in owner:
                owner[index] = name
                mine.append(index)
        if mine:
            uuid = str((entry["config"].get("c_info") or {}).get("uuid") or "")
            found[name] = quiesce.Domain(name, uuid, [lvs[i] for i in mine], json.dumps(entry, indent=2),
                                         entry.get("domid") is not None)
    return found


def domain_flags(xl_command, name, timeout=XL_TIMEOUT):
    """The state letters of `xl list NAME` ("r-----", "--p---", ...), or "" when it is not running."""
    try:
        proc = commands.run([xl_command, "list", name], timeout=timeout)
    except CommandError:
        return ""  # xl list NAME fails for a domain that does not run
    for line in proc.stdout.splitlines()[1:]:
        fields = line.split()
        # Name ID Mem VCPUs State Time(s): the name may hold no spaces in xl
        if len(fields) >= 6 and fields[0] == name:
            return fields[4]
    return ""


class XlQuiescer:
    """The xl side of a run, with the interface of quiesce.Quiescer (domains, definition, hold)."""

    kind = "xl"
    definition_suffix = quiesce.XL_CONFIG_SUFFIX

    def __init__(self, xl_command=DEFAULT_XL, window=quiesce.DEFAULT_WINDOW, log=None):
        self.xl = xl_command
        self.window = float(window)
        self.log = log or (lambda level, message: None)
        self._warned = False

    @property
    def unavailable(self):
        return None if usable(self.xl) else f"{self.xl} is not there or not executable"

    def warn_unavailable(self):
        if self.unavailable and not self._warned:
            self._warned = True
            self.log("warning", f"quiesce: {self.unavailable}; disks of one xl domain are not grouped, "
                                f"guests are not paused and domain configurations are not saved")

    def close(self):
        pass

    def domains(self, lvs):
        if self.unavailable:
            self.warn_unavailable()
            return {}
        try:
            return map_domains(list_long(self.xl), lvs, self.log)
        except XlError as exc:
            self.log("warning", f"xl: cannot list domains ({exc.message}; {exc.hint}); every LV is a guest of "
                                f"its own in this run and none is paused")
            return {}

    def definition(self, name, fallback=""):
        """The domain's configuration now (its `xl list -l` entry), or `fallback`."""
        try:
            for entry in list_long(self.xl, name):
                if entry_name(entry) == name:
                    return json.dumps(entry, indent=2)
        except XlError as exc:
            self.log("warning", f"xl domain {name}: cannot read its configuration now ({exc.message}); "
                                + ("saving the one read at discovery" if fallback else "it is not saved"))
        return fallback

    def hold(self, guest, domain, level):
        return _XlHold(self, guest, getattr(domain, "name", domain), level)

    fail = staticmethod(quiesce.not_possible)


class _XlHold(quiesce.HoldBase):
    """One xl domain held still around its snapshots: paused (and always unpaused) or synced."""

    def __init__(self, quiescer, guest, domain_name, level):
        if level not in quiesce.LEVELS:
            raise ValueError(f"quiesce level must be one of {', '.join(quiesce.LEVELS)}, not {level!r}")
        self.q = quiescer
        self.guest = guest
        self.domain = domain_name
        self.window, self.log, self.held = quiescer.window, quiescer.log, f"domain {domain_name} (unpausing it)"
        self.result = quiesce.QuiesceResult(requested=level)
        self._paused_by_us = False
        self._lock = threading.Lock()

    def _plan(self):
        requested, res, q = self.result.requested, self.result, self.q
        explicit = requested not in ("auto", "none")
        if requested == "none":
            return "none"
        if requested == "agent":
            raise q.fail(self.guest, "agent", "xl has no guest-agent freeze",
                         f"set quiesce = suspend (xl pause) or sync (xl sysrq s) for this guest ([guest {self.guest}])")
        if q.unavailable:
            if explicit:
                raise q.fail(self.guest, requested, q.unavailable, "install xl or set xl_command")
            q.warn_unavailable()
            return "none"
        if self.domain is None:
            if explicit:
                raise q.fail(self.guest, requested, "no xl domain uses this guest's LVs",
                             f"check `xl list -l`, or set quiesce = none for it ([guest {self.guest}])")
            return "none"
        if requested == "auto":
            res.note = "xl host: no guest-agent freeze, crash-consistent snapshot (quiesce = suspend pauses it)"
            return "none"
        flags = domain_flags(q.xl, self.domain)
        if not flags or "s" in flags or "d" in flags:
            res.note = f"domain {self.domain} is not running: no quiesce needed"
            return "none"
        if "p" in flags:
            if requested == "suspend":
                res.note = "domain was already paused; left paused"
                return "suspend-kept"
            raise q.fail(self.guest, requested, f"domain {self.domain} is paused, so its kernel cannot sync",
                         f"unpause it, or set quiesce = suspend or none for this guest ([guest {self.guest}])")
        return requested

    def _sync(self):
        try:
            commands.run([self.q.xl, "sysrq", self.domain, "s"], timeout=XL_TIMEOUT)
        except CommandError as exc:
            raise self.q.fail(self.guest, "sync", f"xl sysrq {self.domain} s failed: {exc.summary()}") from None
        self.result.level = "sync"
        self.result.note = "SysRq-S sent (needs kernel.sysrq with sync enabled in the guest)"
        time.sleep(quiesce.SYNC_SETTLE_SECONDS)

    def _engage(self, _level):
        """xl pause (the only level xl holds a domain with)."""
        # The watchdog starts before the pause: a pause that itself takes the whole window is
        # bounded too, and released as soon as it returns.
        self._watchdog = threading.Timer(self.q.window, self._overrun)
        self._watchdog.daemon = True
        self._watchdog.start()
        self._started = time.monotonic()
        try:
            commands.run([self.q.xl, "pause", self.domain], timeout=min(XL_TIMEOUT, self.q.window + quiesce.ENGAGE_GRACE))
        except CommandError as exc:
            # xl may have paused it before it failed or was killed: undo what is there
            self._paused_by_us = "p" in domain_flags(self.q.xl, self.domain)
            self._release("failed pause")
            raise self.q.fail(self.guest, "suspend", f"xl pause {self.domain} failed: {exc.summary()}",
                              f"check the domain (xl list {self.domain}), or set quiesce = none for this guest "
                              f"([guest {self.guest}])") from None
        with self._lock:
            self._paused_by_us = True
            self.result.level = "suspend"
        if self.result.overrun:
            self._release("late pause")

    def _release(self, why):
        with self._lock:
            if not self._paused_by_us:
                return
            error = self._retried(lambda: commands.run([self.q.xl, "unpause", self.domain], timeout=XL_TIMEOUT),
                                  CommandError)
            self._paused_by_us = error is not None and "p" in domain_flags(self.q.xl, self.domain)
            if error is not None and self._paused_by_us:
                self._release_error = GuestError(
                    self.guest, "quiesce", f"xl unpause {self.domain} failed ({why}): {error.summary()}",
                    f"the domain is still paused: run `xl unpause {self.domain}` now")
                self.q.log("error", str(self._release_error))
