"""The plugin's state and work for one job: backup (prepare each guest, walk it, tear it down),
accurate checks, I/O for the file daemon, and restores. See the package docstring."""

import logging
import os
import stat
import threading
import time

import bareosfd

from .. import commands, logs, report
from ..config import load_config
from ..errors import DomuError, LockBusy, one_line
from ..lock import describe_holder
from ..status import Status
from .options import Options, config_directory, config_overrides
from .restore import Restore
from .walk import Entry, GuestStats, disk_entries, stat_packet, _S_IFMT, _S_IFREG
from .xattrs import Xattrs

PLUGIN = "domu-snapshot"
DEBUG_LEVEL = 100
EVENTS = (
    bareosfd.bEventStartBackupJob,
    bareosfd.bEventEndBackupJob,
    bareosfd.bEventCancelCommand,
    bareosfd.bEventJobEnd,
)
_IN_CORE = hasattr(bareosfd, "iostat_do_in_core")
_NOATIME = getattr(os, "O_NOATIME", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | _CLOEXEC


class JobLogHandler(logging.Handler):
    """The core's log in a job: warnings and notes go to the job log (a note, e.g. "no libvirt on
    this host", is M_INFO: an M_WARNING would make every such job end "OK -- with warnings",
    and a job that lost a guest would look like any other night); the rest goes to the debug
    log (the plugin reports each guest's result and failure itself)."""

    def __init__(self, job):
        super().__init__(logging.DEBUG)
        self.owner = job

    def emit(self, record):
        message = record.getMessage()
        if record.levelno == logging.WARNING:
            self.owner.job(bareosfd.M_WARNING, message)
        elif record.levelno == logging.INFO:
            self.owner.job(bareosfd.M_INFO, message)
        else:
            self.owner.debug(f"[{record.levelname.lower()}] {message}", 50)


class PluginJob:
    """Everything of one Bareos job: bareos-fd gives each job a Python sub-interpreter of its
    own, and the entry module makes one PluginJob at load_bareos_plugin."""

    def __init__(self):
        self.options = {}
        self.option_layers = Options(lambda: config_directory(bareosfd.GetValue(bareosfd.bVarUsedConfig)))
        self.cfg = None
        self.runner = None
        self.run_lock = None
        self.guests = []
        self.space_errors = {}
        self.mode = "each"
        self.level = "F"
        self.lock = threading.RLock()
        self.canceled = False
        self.entries = None          # generator of Entry over all guests
        self.next_entry = None       # prefetched by end_backup_file
        self.current = None          # Entry being saved
        self.fd = -1
        self.live = {}               # guest name -> Guest, prepared and not torn down
        self.prepared = {}           # guest name -> GuestResult (prepare=all)
        self.roots = {}              # mount path (or file) -> "walking" | "complete" | "failed"
        self.incomplete = []         # directories not read completely
        self.dev_ids = {}            # mount path -> st_dev stand-in
        self.lost = []               # names of guests not (completely) backed up in this job
        self.started = False         # start_backup ran (bEventStartBackupJob, or estimate)
        self.finished = False        # the end-of-job report was made
        self.stats = None            # GuestStats of the guest being read
        self.xattrs = Xattrs(self)
        self.restore = Restore(self)

    # messages -----------------------------------------------------------------------------------
    def job(self, level, text):
        bareosfd.JobMessage(level, f"{PLUGIN}: {one_line(text)}\n")

    def debug(self, text, level=DEBUG_LEVEL):
        bareosfd.DebugMessage(level, f"{PLUGIN}: {one_line(text)}\n")

    def lose(self, guest_name):
        """Count a guest whose files this job did not save completely (see finish_job)."""
        if guest_name not in self.lost:
            self.lost.append(guest_name)

    # backup: start -------------------------------------------------------------------------------
    def start_backup(self):
        # The core's lifecycle is loaded for backups only: a restore never touches LVs.
        from domu_snapshot.commands import CommandError
        from domu_snapshot.lifecycle import Runner

        self.started = True
        level = bareosfd.GetValue(bareosfd.bVarLevel)
        self.level = chr(level) if isinstance(level, int) and level > 0 else "F"
        self.mode = self.options.get("prepare", "each")
        try:
            self.cfg = load_config(self.options.get("config") or None,
                                   overrides=config_overrides(self.options))
        except DomuError as exc:
            self.job(bareosfd.M_FATAL, f"configuration: {exc}")
            return bareosfd.bRC_Error
        # owner "plugin": its snapshots carry the plugin's tag, and what `domu-snapshot mount`
        # holds (helpers mode, another job) is left alone
        logs.use(JobLogHandler(self))  # this job's messages: one job per sub-interpreter
        self.runner = Runner(self.cfg, log=logs.emit, owner="plugin")
        # a step still running after a few seconds says so in the job log (commands.PROGRESS_FIRST)
        commands.set_hooks(progress=lambda text: self.job(bareosfd.M_INFO, text))
        try:
            # one run at a time, held until the job's teardown
            self.run_lock = self.runner.lock().acquire(on_wait=self.say_lock_wait, note=self.job_name(),
                                                       stop=lambda: self.canceled)
            for result in self.runner.reap():
                self.report_reaped(result)
            self.guests = list(self.runner.discover())
            self.space_errors = self.runner.check_space(self.guests, concurrent=self.mode == "all")
        except LockBusy as exc:
            self.job(bareosfd.M_FATAL,
                     f"cannot start: {exc}; nothing was snapshotted. Plugin jobs of one client run one "
                     f"at a time: give the director's Client resource Maximum Concurrent Jobs = 1 (the "
                     f"director then queues them), or a lock_timeout (plugin option or configuration) "
                     f"longer than the other job runs")
            self.release_lock()
            return bareosfd.bRC_Error
        except (DomuError, CommandError, OSError) as exc:
            self.job(bareosfd.M_FATAL, f"cannot start: {exc}")
            self.release_lock()
            return bareosfd.bRC_Error
        names = ", ".join(g.name for g in self.guests) or "none"
        self.job(bareosfd.M_INFO, f"level {self.level}, {len(self.guests)} guest(s): {names} "
                                  f"(prepare={self.mode}, mount root {self.cfg.mount_root})")
        self.entries = self.all_entries()
        return bareosfd.bRC_OK

    def job_name(self):
        """"Bareos job N (name)": what a job waiting for our run lock is told holds it."""
        try:
            return f"Bareos job {bareosfd.GetValue(bareosfd.bVarJobId)} ({bareosfd.GetValue(bareosfd.bVarJobName)})"
        except Exception:   # a file daemon without these values: the pid alone names us
            return ""

    def say_lock_wait(self, pid, note):
        """A second job on this client (Maximum Concurrent Jobs > 1) or a helpers-mode
        mount/unmount holds the run lock: say who, and how long this job waits, before waiting.
        Informational: a job that then gets the lock is a normal job."""
        who = describe_holder(pid, note or ("" if pid == str(os.getpid()) else "domu-snapshot"))
        self.job(bareosfd.M_INFO, f"waiting up to {self.cfg.lock_timeout:g} s (lock_timeout) for the "
                                  f"run lock, held by {who}: one domu-snapshot run at a time per host")

    def report_reaped(self, result):
        if result.status == Status.HELD:
            self.job(bareosfd.M_WARNING, "; ".join(result.notes))
        elif result.ok:
            self.job(bareosfd.M_INFO, f"removed what an earlier run left of guest {result.guest.name}")
        else:
            self.job(bareosfd.M_ERROR, f"could not remove what an earlier run left: {result.error}")

    def release_lock(self):
        if self.run_lock is not None:
            self.run_lock.release()
            self.run_lock = None

    # backup: the entries -------------------------------------------------------------------------
    def all_entries(self):
        if self.mode == "all":
            for guest in self.guests:
                if self.canceled:
                    return
                self.prepared[guest.name] = self.prepare(guest)
        for guest in self.guests:
            if self.canceled:
                return
            result = self.prepared.pop(guest.name, None) or self.prepare(guest)
            yield from self.guest_entries(guest, result)

    def prepare(self, guest):
        self.live[guest.name] = guest
        for disk in guest.disks:
            self.roots[disk.mount_path] = "failed"  # until its walk completes
        try:
            with commands.doing(f"guest {guest.name}"):
                result = self.runner.prepare(guest, self.space_errors.get(guest.name))
        except Exception as exc:  # prepare tears down after itself; never crash the file daemon
            from ..lifecycle import GuestResult
            result = GuestResult.failure(guest, "mount", "prepare", f"{type(exc).__name__}: {exc}",
                                         "run domu-snapshot cleanup, then the job again")
        if result.held_by:
            self.live.pop(guest.name, None)  # another job's snapshot: never ours to tear down
        if not result.ok:
            self.lose(guest.name)
            self.job(bareosfd.M_ERROR, f"guest {guest.name}: NOT backed up: {result.error}")
        elif result.status == Status.SKIPPED:
            # an inactive LV or a disk with swap only: nothing to save, by design
            self.job(bareosfd.M_INFO, f"guest {guest.name}: skipped: {'; '.join(result.notes)}")
        else:
            for note in result.notes:
                self.job(bareosfd.M_WARNING, f"guest {guest.name}: {note}")
        return result

    def guest_entries(self, guest, result):
        stats = self.stats = GuestStats()
        finished = False
        try:
            if not result.ok or result.status == Status.SKIPPED:
                finished = True
                return
            xml_path = result.domain_xml_path
            if xml_path:
                # the domain definition the core wrote next to the first disk's mount
                self.roots[xml_path] = "walking"
                try:
                    st = os.lstat(xml_path)
                    if stat.S_ISREG(st.st_mode):
                        entry = Entry(xml_path, st, 0, bareosfd.FT_REG, "", st.st_size == 0)
                        stats.count(entry)
                        yield entry
                        self.roots[xml_path] = "complete"
                except OSError as exc:
                    self.job(bareosfd.M_ERROR, f"guest {guest.name}: domain definition "
                                               f"{xml_path}: {exc.strerror}")
            for disk in result.disks:
                # one root per mounted filesystem: the disk's path, or (guest_filesystems = all)
                # each of part<N>, lvm/<vg>/<lv> below it, or (fstab) the guest's root there and
                # its /boot, /home... inside it; each walked as a filesystem of its own
                for root in disk.roots:
                    nested = {other for other in disk.roots if other.startswith(root + os.sep)}
                    yield from self.root_entries(guest, root, stats, nested)
                    if self.canceled:
                        return
                if disk.roots and disk.roots != [disk.mount_path] \
                        and all(self.roots.get(root) == "complete" for root in disk.roots):
                    self.roots[disk.mount_path] = "complete"  # what is below it and not walked is gone
            finished = True
        finally:
            self.finish_guest(guest, result, stats, finished)

    def root_entries(self, guest, root, stats, nested=()):
        """The entries of one mounted filesystem of a guest; marks the root complete or failed.
        `nested`: the guest's filesystems mounted inside it, walked as roots of their own."""
        self.roots[root] = "walking"
        self.dev_ids.setdefault(root, len(self.dev_ids) + 1)

        def say(level, text):
            self.job(level, f"guest {guest.name}: {text}")

        walker = disk_entries(root, self.dev_ids[root], stats, say, nested)
        while True:
            try:
                entry = next(walker)
            except StopIteration as stop:
                self.incomplete.extend(stop.value or [])
                self.roots[root] = "complete"
                return
            except Exception as exc:  # e.g. the mount vanished: this guest only
                self.roots[root] = "failed"
                self.lose(guest.name)
                say(bareosfd.M_ERROR, f"reading {root} failed after {stats.entries} entries: {exc}")
                return
            if self.canceled:
                return
            yield entry

    def finish_guest(self, guest, result, stats, finished):
        teardown = self.teardown(guest)
        if not result.ok or result.status == Status.SKIPPED:
            return
        if teardown is not None and not teardown.ok:
            self.lose(guest.name)
            for root in [d.mount_path for d in guest.disks] + [r for d in result.disks for r in d.roots]:
                self.roots[root] = "failed"
            self.job(bareosfd.M_ERROR, f"guest {guest.name}: backup NOT valid: {teardown.error}")
        if stats.unreadable or stats.read_errors:
            self.lose(guest.name)   # some of its files were not saved, or saved without data
        if not finished:
            for path, state in self.roots.items():
                if state == "walking":
                    self.roots[path] = "failed"   # not read completely
            why = "job canceled" if self.canceled else "job ended early"
            self.job(bareosfd.M_WARNING, f"guest {guest.name}: stopped after {stats.entries} "
                                         f"entries ({why})")
            return
        if stats.skipped:
            kinds = "/".join(sorted({why for _path, why in stats.skipped}))
            examples = ", ".join(path for path, _why in stats.skipped[:5])
            more = ", ..." if len(stats.skipped) > 5 else ""
            self.job(bareosfd.M_WARNING,
                     f"guest {guest.name}: {len(stats.skipped)} entries not saved ({kinds}: the guest "
                     f"mount is nodev and a restore would create live device files): {examples}{more}")
        self.job(bareosfd.M_INFO, self.summary(guest, result, teardown, stats))

    def summary(self, guest, result, teardown, stats):
        seconds = (time.monotonic() - stats.started + float(result.seconds or 0)
                   + float(teardown.seconds if teardown else 0))
        # what was sent: in an Incremental the file daemon reads only changed files, and a
        # hard-linked file once
        sent = [f"{stats.entries} entries ({report.size(stats.bytes)}), {stats.files_read} files read "
                f"({report.size(stats.bytes_read)})"]
        if stats.bad_names:
            sent.append(f"{stats.bad_names} not saved (names not UTF-8)")
        if stats.unreadable:
            sent.append(f"{stats.unreadable} unreadable")
        if stats.read_errors:
            sent.append(f"{stats.read_errors} read errors")
        peak_use = report.peaks(teardown) if teardown is not None else []
        return f"guest {guest.name}: " + report.detail(result, ", ".join(sent), peak_use, paths=False,
                                                       seconds=seconds)

    def teardown(self, guest):
        """Idempotent; only for guests this job prepared. Returns the GuestResult or None."""
        if guest.name not in self.live:
            return None
        try:
            with commands.doing(f"guest {guest.name}"):
                report = self.runner.teardown([guest])[0]
        except Exception as exc:  # e.g. the system state could not be read
            self.job(bareosfd.M_ERROR, f"guest {guest.name}: teardown failed: {exc}; run "
                                       f"domu-snapshot cleanup")
            from ..lifecycle import GuestResult
            return GuestResult.failure(guest, "unmount", "teardown", str(exc),
                                       "run domu-snapshot cleanup")
        if report.ok or not self.left_over(guest):
            self.live.pop(guest.name, None)  # e.g. an overflow: reported, but nothing is left
        return report

    def left_over(self, guest):
        """Whether the system still shows a snapshot or mount of the guest."""
        try:
            leftovers, _foreign = self.runner.leftovers()
        except Exception:
            return True
        keys = {(d.vg, d.lv) for g in leftovers for d in g.disks}
        return any((d.vg, d.lv) in keys for d in guest.disks)

    def teardown_all(self, why):
        """EndBackupJob, CancelCommand, JobEnd: stop the walk and release every guest."""
        with self.lock:
            if self.entries is not None:
                entries, self.entries = self.entries, None
                entries.close()      # finish_guest of the guest being read
            self.next_entry = None
            self.close_fd()
            for name in list(self.live):
                report = self.teardown(self.live[name])
                if report is not None and not report.ok:
                    self.job(bareosfd.M_ERROR, f"guest {name}: teardown at {why} left something "
                                               f"behind: {report.error}")
            self.prepared.clear()
            # Released even with leftovers: the lock is an fd of this job's interpreter and must
            # not outlive the job; the next run reaps what is left.
            self.release_lock()

    def cancel(self):
        self.canceled = True
        # The file daemon sends this from another thread, possibly while it reads a file of ours
        # or while the job thread is inside a guest step: then the teardown is left to
        # EndBackupJob, which the file daemon sends once that thread has stopped.
        if self.fd < 0 and self.lock.acquire(blocking=False):
            try:
                self.teardown_all("cancel")
            finally:
                self.lock.release()
        else:
            self.debug("cancel: busy, teardown follows at EndBackupJob")

    def advance(self):
        """The next Entry, or None (then the job's report is made)."""
        with self.lock:
            if self.canceled or self.entries is None:
                return None
            entry = next(self.entries, None)
        if entry is None:
            self.finish_job()
        return entry

    def finish_job(self):
        """Once every guest was read: a job that lost a guest fails (M_FATAL).

        The file daemon sends an entry's attributes before its data, so a guest that failed
        half-way (snapshot overflow, read errors, a broken walk) has new catalog versions of
        its files with no or partial data. Bareos builds restores of the latest state and the
        next Incremental's base from jobs that terminated OK or OK with warnings only (JobStatus
        T/W, cats/dml uar_* and accurate queries), so failing the job keeps the failed guest's
        last good versions current; and "Backup OK -- with warnings" is what a healthy host
        without libvirt would show too. Bareos keeps no catalog entries of a failed job (seen with
        25.1.0): the other guests' changes are sent again by the next good Incremental."""
        if self.finished or self.runner is None or self.canceled:
            return
        self.finished = True
        self.teardown_all("end of the guests")  # all torn down already; frees the run lock
        if self.lost:
            self.job(bareosfd.M_FATAL,
                     f"{len(self.lost)} of {len(self.guests)} guest(s) NOT backed up completely: "
                     f"{', '.join(self.lost)} (see the errors above). The job is marked failed so "
                     f"that their last good backup stays the current one; the other guests' changes "
                     f"come with the next good job. Fix the cause and run the job again")
        elif not self.guests and not self.cfg.allow_empty:
            self.job(bareosfd.M_FATAL,
                     f"no guest selected (prefix {self.cfg.prefix!r}, VGs "
                     f"{', '.join(self.cfg.vgs) or 'all'}): nothing was backed up; check prefix, "
                     f"vg and include, or set allow_empty = yes for a host that may have none")

    def close_fd(self):
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    # accurate ---------------------------------------------------------------------------------------
    def check_file(self, fname):
        """bRC_Seen keeps a file of an earlier backup that this job did not send; bRC_OK marks it
        deleted. The file daemon asks after the walk, when every guest is torn down again."""
        path = fname.rstrip("/") or "/"
        root = None
        for candidate in self.roots:
            if path == candidate or path.startswith(candidate + "/"):
                if root is None or len(candidate) > len(root):
                    root = candidate
        if root is None:
            return bareosfd.bRC_OK       # not below a guest of this job: gone with its guest
        state = self.roots[root]
        if state == "walking":           # still mounted (cannot happen in the usual order)
            return bareosfd.bRC_Seen if os.path.lexists(path) else bareosfd.bRC_OK
        if state != "complete":
            return bareosfd.bRC_Seen     # guest failed, skipped or overflowed: keep the last good
        for directory in self.incomplete:
            if path == directory or path.startswith(directory.rstrip("/") + "/"):
                return bareosfd.bRC_Seen
        return bareosfd.bRC_OK

    # entry points (forwarded by the module bareos-fd loads) ------------------------------------
    def load(self):
        bareosfd.RegisterEvents(list(EVENTS))
        return bareosfd.bRC_OK

    def parse_plugin_definition(self, plugindef):
        try:
            self.options = self.option_layers.parse(plugindef)
        except DomuError as exc:
            self.job(bareosfd.M_FATAL, f"plugin options: {exc}; nothing was snapshotted")
            return bareosfd.bRC_Error
        return bareosfd.bRC_OK

    def handle_plugin_event(self, event):
        if event == bareosfd.bEventStartBackupJob:
            return self.start_backup()
        if event == bareosfd.bEventCancelCommand:
            self.cancel()
        elif event in (bareosfd.bEventEndBackupJob, bareosfd.bEventJobEnd):
            self.teardown_all("end of job" if event == bareosfd.bEventJobEnd else "end of backup")
        return bareosfd.bRC_OK

    def start_backup_file(self, savepkt):
        if not self.started:
            # `estimate` sends no bEventStartBackupJob (and python-fd keeps bEventEstimateCommand
            # to itself): the walk starts here then
            if self.start_backup() != bareosfd.bRC_OK:
                return bareosfd.bRC_Error
        entry = self.next_entry or self.advance()
        self.next_entry = None
        if entry is None:
            # Nothing to save at all (no guest, or none could be read; finish_job said so).
            return bareosfd.bRC_Stop
        self.current = entry
        savepkt.fname = entry.path
        savepkt.link = entry.link
        savepkt.statp = stat_packet(entry.st, entry.dev)
        savepkt.type = entry.ftype
        savepkt.no_read = entry.no_read
        return bareosfd.bRC_OK

    def end_backup_file(self):
        # Fetch the next entry now so that "nothing more" is an OK here rather than a bRC_Stop from
        # start_backup_file (which Bareos 22.0 does not accept).
        self.current = None
        self.next_entry = self.advance()
        return bareosfd.bRC_More if self.next_entry is not None else bareosfd.bRC_OK

    def plugin_io(self, iop):
        func = iop.func  # read once: each packet attribute is a conversion on the C side
        try:
            if func == bareosfd.IO_OPEN:
                return self._io_open(iop)
            if func == bareosfd.IO_CLOSE:
                self.close_fd()
                iop.status = 0
                return bareosfd.bRC_OK
            if func == bareosfd.IO_READ:
                data = os.read(self.fd, iop.count)
                iop.buf = bytearray(data)
                iop.status = len(data)
                return bareosfd.bRC_OK
            if func == bareosfd.IO_WRITE:
                view = memoryview(iop.buf or b"")[:iop.count]
                while view:
                    view = view[os.write(self.fd, view):]
                iop.status = iop.count
                return bareosfd.bRC_OK
            if func == bareosfd.IO_SEEK:
                iop.status = os.lseek(self.fd, iop.offset, iop.whence)
                return bareosfd.bRC_OK
        except OSError as exc:
            iop.io_errno = exc.errno or 0
            iop.status = -1
            if func in (bareosfd.IO_OPEN, bareosfd.IO_READ) and self.stats is not None \
                    and self.current is not None:
                self.stats.read_errors += 1   # the entry's attributes are already on their way
            self.job(bareosfd.M_ERROR, f"I/O on {iop.fname or self.current}: {exc.strerror}")
            return bareosfd.bRC_Error
        iop.status = -1
        return bareosfd.bRC_Error

    def _io_open(self, iop):
        self.close_fd()
        if iop.flags & (os.O_WRONLY | os.O_RDWR):
            fd = self.restore.open_for_write(iop.fname)
            if fd is None:
                iop.status = -1
                iop.io_errno = 1  # EPERM
                return bareosfd.bRC_Error
        else:
            fd = self._open_for_backup(self.current, iop.fname)
        self.fd = fd
        if _IN_CORE:
            iop.filedes = fd
            iop.status = bareosfd.iostat_do_in_core
        else:
            iop.status = 0
        return bareosfd.bRC_OK

    def _open_for_backup(self, entry, fname):
        if entry is None or entry.path != fname:
            raise OSError(2, f"IO_OPEN for {fname!r}, which is not the entry being saved")
        try:
            fd = os.open(entry.path, _READ_FLAGS | _NOATIME)
        except PermissionError:
            fd = os.open(entry.path, _READ_FLAGS)  # O_NOATIME needs ownership or CAP_FOWNER
        # One fstat (cat makes the same call): the descriptor must be the file that was listed.
        st = os.fstat(fd)
        if st.st_mode & _S_IFMT != _S_IFREG or st.st_ino != entry.st.st_ino:
            os.close(fd)
            raise OSError(116, f"{entry.path} changed since it was listed")
        stats = self.stats
        if stats is not None:
            stats.files_read += 1
            stats.bytes_read += st.st_size
        return fd

    def handle_backup_file(self, savepkt):
        return bareosfd.bRC_OK

    def restore_object_data(self, rop):
        return bareosfd.bRC_OK
