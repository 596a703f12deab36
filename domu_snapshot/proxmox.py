"""Proxmox VE hosts: which LVs are a VM's disks, the VM's config, and holding a VM still.

Proxmox names a VM's disks `vm-<vmid>-disk-<n>` (templates: `base-<vmid>-disk-<n>`); its LVM
storages take every LV matching `^(vm|base)-(\\d+)-` for a volume of that VM (saved RAM is
`vm-<vmid>-state-<name>`, cloud-init `vm-<vmid>-cloudinit`: no guest filesystem in either).
The VM's config is /etc/pve/qemu-server/<vmid>.conf; a running VM has a QMP socket
/var/run/qemu-server/<vmid>.qmp and, with `agent: 1`, a guest-agent socket <vmid>.qga.

Quiesce levels (the `quiesce` key, as for libvirt):
  agent    guest-fsfreeze-freeze through the agent, snapshots, guest-fsfreeze-thaw
  suspend  QMP `stop`, snapshots, `cont`
  sync     SysRq-S through QMP `send-key`, then snapshots
  none     snapshots only
  auto     agent when the config enables it and the agent answers, else none
Every call is bounded (qga.LineSocket); a watchdog releases the VM when the snapshots overrun
quiesce_timeout; every exit path (exceptions, KeyboardInterrupt, SystemExit) releases it; after
a thaw the agent is asked again and a freeze still active is thawed.
"""

import os
import re
import threading
import time

from . import qga, qmp
from .errors import GuestError
from .quiesce import RELEASE_ATTEMPTS, SYNC_SETTLE_SECONDS, HoldBase, QuiesceResult, not_possible

DISK = re.compile(r"^(?P<kind>vm|base)-(?P<vmid>[1-9][0-9]{0,8})-disk-(?P<n>[0-9]{1,4})$")
# What Proxmox's LVM and LVM-thin storages take for a volume of a VM (ours must never match).
PVE_VOLUME = re.compile(r"^(vm|base)-(\d+)-")
# Keys whose volumes hold firmware state, not a guest filesystem.
_STATE_KEYS = re.compile(r"^(efidisk|tpmstate)\d+$")
_TRUE = ("1", "yes", "on", "true")
_FALSE = ("0", "no", "off", "false")
MAX_CONFIG = 1024 * 1024


def disk_vmid(name, templates=False):
    """(kind, vmid, disk number) for a VM disk's LV name ("vm" or "base"), else None."""
    match = DISK.match(name)
    if not match or (match.group("kind") == "base" and not templates):
        return None
    return match.group("kind"), match.group("vmid"), int(match.group("n"))


def guest_name(kind, vmid):
    return f"{kind}-{vmid}"


def config_text(path):
    """The VM config file as it is (snapshot sections included): what goes into the backup next to
    the VM's files, so `qm`'s own file can be put back. "" and the reason when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG + 1)
    except OSError as exc:
        return "", exc.strerror or str(exc)
    if len(raw) > MAX_CONFIG:
        return "", f"larger than {MAX_CONFIG} bytes"
    return raw.decode("utf-8", "replace"), ""


def read_config(path):
    """The main section of a VM config as {key: value} ({} when there is none)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG)
    except OSError:
        return {}
    return parse_config(raw.decode("utf-8", "replace"))


def parse_config(text):
    """`key: value` lines up to the first [section] (snapshots, [PENDING]): the current config."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            break
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _bool(text):
    text = text.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def agent_setting(value):
    """(enabled, freeze) from an `agent:` value: `1`, `0`, `enabled=1,fstrim_cloned_disks=1`,
    `1,freeze-fs-on-backup=0`. Proxmox's default property is `enabled`; `freeze-fs-on-backup=0`
    (also spelled `freeze-fs=0`) is the admin saying the agent must not freeze for backups."""
    enabled, freeze = False, True
    for part in (value or "").split(","):
        key, sep, val = part.partition("=")
        if not sep:
            key, val = "enabled", key
        key = key.strip()
        flag = _bool(val)
        if key == "enabled" and flag is not None:
            enabled = flag
        elif key in ("freeze-fs-on-backup", "freeze-fs") and flag is not None:
            freeze = flag
    return enabled, freeze


def state_volumes(config):
    """LV names of the VM's EFI vars and TPM state volumes (`efidisk0: local-lvm:vm-100-disk-1,...`)."""
    names = set()
    for key, value in config.items():
        if _STATE_KEYS.match(key):
            volume = value.split(",", 1)[0]
            names.add(volume.split(":", 1)[-1])
    return names


def config_path(cfg, vmid):
    return os.path.join(cfg.pve_config_dir, f"{vmid}.conf")


def socket_path(cfg, vmid, kind):
    return os.path.join(cfg.pve_run_dir, f"{vmid}.{kind}")


def is_proxmox(cfg):
    """The host kind says Proxmox, or (auto) its VM config directory exists."""
    if cfg.host == "proxmox":
        return True
    return cfg.host == "auto" and os.path.isdir(cfg.pve_config_dir)


def plan_text(cfg, vmid, level):
    """What `check` says about a VM's quiesce, without touching its sockets' peers."""
    if level == "none":
        return "none (configured)"
    config = read_config(config_path(cfg, vmid))
    if not config:
        return f"{level}: no config {config_path(cfg, vmid)}" + ("; none" if level == "auto" else "; fails")
    enabled, freeze = agent_setting(config.get("agent"))
    running = any(os.path.exists(socket_path(cfg, vmid, kind)) for kind in ("qmp", "qga"))
    state = "" if running else " (VM not running now: none needed)"
    if level in ("auto", "agent"):
        if enabled and freeze:
            return f"agent (guest-fsfreeze through {socket_path(cfg, vmid, 'qga')}){state}"
        why = "agent: 1 is not set" if not enabled else "freeze-fs-on-backup=0"
        return f"{level}: {why}; " + ("none (crash-consistent)" if level == "auto" else "fails") + state
    if level == "suspend":
        return f"suspend (QMP stop/cont through {socket_path(cfg, vmid, 'qmp')}){state}"
    return f"sync (SysRq-S through {socket_path(cfg, vmid, 'qmp')}){state}"


# ------------------------------------------------------------------ holding a VM still

class Hold(HoldBase):
    """One VM held still around its snapshots (context manager yielding a QuiesceResult)."""

    def __init__(self, cfg, guest, vmid, level, log=None):
        self.cfg, self.guest, self.vmid = cfg, guest, vmid
        self.window = float(cfg.quiesce_timeout)
        self.log = log or (lambda level, message: None)
        self.held = f"VM {vmid}"
        self.result = QuiesceResult(requested=level)
        self.agent = qga.Agent(socket_path(cfg, vmid, "qga"), self.window)
        self.monitor = qmp.Monitor(socket_path(cfg, vmid, "qmp"), self.window)
        self._release_fn = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def _fail(self, reason, hint=""):
        return not_possible(self.guest, self.result.requested, reason, hint)

    def _running(self):
        """"running", "paused" (or another QEMU run state), or "" when the VM does not run.
        QEMU makes both sockets at start and removes them at exit; without a QMP socket but with
        the agent's, the VM is taken as running (the agent path needs no QMP)."""
        if not os.path.exists(self.monitor.path):
            return "running" if os.path.exists(self.agent.path) else ""
        try:
            return self.monitor.status()
        except qga.ProtocolError as exc:
            if "Connection refused" in str(exc) or "No such file" in str(exc):
                return ""  # a socket left by a VM that is gone
            raise

    def _plan(self):
        requested, res = self.result.requested, self.result
        explicit = requested not in ("auto", "none")
        if requested == "none":
            return "none"
        path = config_path(self.cfg, self.vmid)
        config = read_config(path)
        if not config:
            if explicit:
                raise self._fail(f"no VM config {path}", f"check pve_config_dir (now {self.cfg.pve_config_dir}) "
                                 f"or set quiesce = none for this guest ([guest {self.guest}])")
            res.note, res.degraded = f"no quiesce: no VM config {path}", True
            return "none"
        try:
            state = self._running()
        except qga.ProtocolError as exc:
            if explicit:
                raise self._fail(f"QMP: {exc}") from None
            res.note, res.degraded = f"no quiesce: QMP: {exc}", True
            return "none"
        if not state:
            res.note = f"VM {self.vmid} is not running: no quiesce needed"
            return "none"
        if state != "running":
            if requested == "suspend":
                res.note = f"VM {self.vmid} was already {state}; left so"
                return "suspend-kept"
            if explicit:
                raise self._fail(f"VM {self.vmid} is {state}, so its guest cannot act on it",
                                 f"resume it (qm resume {self.vmid}), or set quiesce = suspend or none for this "
                                 f"guest ([guest {self.guest}])")
            res.note = f"VM {self.vmid} is {state} (not by us): snapshot without quiesce"
            return "none"
        if requested in ("agent", "auto"):
            enabled, freeze = agent_setting(config.get("agent"))
            why = ""
            if not enabled:
                why = f"{path} does not enable the guest agent (agent: 1)"
            elif not freeze:
                why = f"{path} says freeze-fs-on-backup=0"
            elif not os.path.exists(self.agent.path):
                why = f"no guest-agent socket {self.agent.path}"
            if why:
                if explicit:
                    raise self._fail(why, "enable the agent (qm set <vmid> --agent 1, and qemu-guest-agent in the "
                                     f"guest), or set quiesce = suspend or none ([guest {self.guest}])")
                res.note, res.degraded = f"no agent freeze: {why}; crash-consistent snapshot", True
                return "none"
            return "agent"
        return requested  # suspend or sync

    def _sync(self):
        try:
            self.monitor.sysrq_sync()
        except qga.ProtocolError as exc:
            raise self._fail(f"SysRq-S through QMP: {exc}") from None
        self.result.level = "sync"
        self.result.note = "SysRq-S sent (needs kernel.sysrq with sync enabled in the guest)"
        time.sleep(SYNC_SETTLE_SECONDS)

    def _engage(self, level):
        res = self.result
        engage = self.agent.freeze if level == "agent" else self.monitor.stop
        self._watchdog = threading.Thread(target=self._watch, name=f"pve-watchdog-{self.guest}", daemon=True)
        self._watchdog.start()
        self._started = time.monotonic()
        # Set before the call: an interrupt or a timeout mid-call may leave the VM frozen/paused.
        self._release_fn = self._thaw if level == "agent" else self._cont
        try:
            count = engage()
        except qga.ProtocolError as exc:
            self._done.set()
            self._release("failed freeze" if level == "agent" else "failed stop")
            if self._release_error is not None:
                raise self._release_error from None
            what = "guest-fsfreeze-freeze" if level == "agent" else "QMP stop"
            if res.requested == "auto":
                res.level, res.degraded = "none", True
                res.note = f"guest agent did not freeze ({exc}); crash-consistent snapshot"
                return
            hint = (f"check qemu-guest-agent in the guest, or set quiesce = suspend or none ([guest {self.guest}])"
                    if level == "agent" else "")
            raise self._fail(f"{what} of VM {self.vmid}: {exc}", hint) from None
        res.level = level
        if level == "agent" and count == 0:
            res.note = "the agent froze no filesystem"
        if res.overrun:
            self._release("late freeze", force=True)

    def _release(self, why, force=False):
        with self._lock:
            release = self._release_fn
            if release is None and not force:
                return
            self._release_fn = None
            release = release or (self._thaw if self.result.level == "agent" else self._cont)
            error = self._retried(release, qga.ProtocolError)
            if error is not None:
                agent = release == self._thaw
                self._release_error = GuestError(
                    self.guest, "quiesce",
                    f"{'guest-fsfreeze-thaw' if agent else 'QMP cont'} of VM {self.vmid} failed ({why}): {error}",
                    f"the guest may still be {'frozen' if agent else 'paused'}: run "
                    f"`{'qm guest cmd ' + self.vmid + ' fsfreeze-thaw' if agent else 'qm resume ' + self.vmid}` now")
                self.log("error", str(self._release_error))

    def _thaw(self):
        """Thaw, then ask: a freeze still active (a second freeze that landed late) is thawed too."""
        self.agent.thaw()
        for _ in range(RELEASE_ATTEMPTS):
            if self.agent.status() != "frozen":
                return
            self.agent.thaw()
        raise qga.ProtocolError("the agent still says frozen after thawing")

    def _cont(self):
        self.monitor.cont()  # always: we stopped it (or a stop may have landed)
        if self.monitor.status() == "paused":
            self.monitor.cont()
