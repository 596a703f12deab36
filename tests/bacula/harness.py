"""A private Bacula installation for tests: director, storage daemon and file daemon on loopback.

Uses Debian's packaged binaries (bacula-director + bacula-director-sqlite3, bacula-sd, bacula-fd,
bacula-console: installed by the Makefile) but none of their configuration, catalog or services:
everything lives in one temporary directory, the daemons listen on 127.0.0.1 on free ports, the
catalog is a private SQLite file made from the package's own table definitions, and the daemons run
in the foreground as children of this process, so they are stopped whatever happens to the test
(``Bacula.stop()``, also called by the context manager and by an ``atexit`` hook).

Typical use::

    with Bacula(tmpdir, director_resources=job_and_fileset_text, fd_env={"PATH": ...}) as b:
        jobid = b.run_job("domu", level="Full")
        job = b.wait(jobid)                  # dict from `llist jobid=`
        files = b.list_files(jobid)          # from `list files jobid=`
        b.restore(where=..., jobids=[jobid])

Everything is driven through ``bconsole -c`` (the same commands a person would type), except the
few reads that have no stable console form, which go to the SQLite catalog read-only.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

BACULA_DIR = "/usr/sbin/bacula-dir"
BACULA_SD = "/usr/sbin/bacula-sd"
BACULA_FD = "/usr/sbin/bacula-fd"
BCONSOLE = "/usr/sbin/bconsole"
QUERY_FILE = "/etc/bacula/scripts/query.sql"
# Where Debian's bacula-director-sqlite3 keeps its table definitions: dbconfig-common's plain SQL
# (what the package's postinst feeds to sqlite3), and Bacula's own make_sqlite3_tables script (the
# same SQL inside a shell here-document).
CATALOG_SQL_CANDIDATES = (
    "/usr/share/dbconfig-common/data/bacula-director-sqlite3/install/sqlite3",
    "/usr/share/bacula-director/make_sqlite3_tables",
)
APT_PACKAGES = ("bacula-director", "bacula-director-sqlite3", "bacula-sd", "bacula-fd", "bacula-console")

# Job status letters (Bacula's jcr.h) used by the tests.
JS_TERMINATED = "T"   # OK (also "OK -- with warnings": then JobErrors > 0)
JS_ERROR = "E"
JS_FATAL = "f"
JS_CANCELED = "A"
JS_RUNNING = "R"
FINAL_STATES = {"T", "E", "e", "f", "A", "W", "I"}


class BaculaError(RuntimeError):
    pass


def missing_binaries() -> List[str]:
    return [p for p in (BACULA_DIR, BACULA_SD, BACULA_FD, BCONSOLE) if not os.access(p, os.X_OK)]


def require_installed() -> None:
    missing = missing_binaries()
    if missing or catalog_sql_source() is None:
        raise BaculaError(
            "Bacula is not installed (missing: %s); install it with: apt-get install -y %s"
            % (", ".join(missing) or "SQLite catalog definitions", " ".join(APT_PACKAGES)))


def catalog_sql_source() -> Optional[str]:
    for cand in CATALOG_SQL_CANDIDATES:
        if os.path.exists(cand):
            return cand
    return None


def catalog_sql() -> str:
    """The SQL that creates Bacula's SQLite catalog tables, as Debian's package ships it."""
    src = catalog_sql_source()
    if src is None:
        require_installed()
    text = Path(src).read_text()
    if src.endswith("make_sqlite3_tables"):
        m = re.search(r"<<\s*END-OF-DATA\n(.*?)\nEND-OF-DATA", text, re.S)
        if not m:
            raise BaculaError("cannot find the SQL in %s" % src)
        text = m.group(1)
    return text


def make_catalog(path: Path) -> None:
    """Create and initialise an SQLite catalog at ``path`` (what the package's postinst does)."""
    if path.exists():
        path.unlink()
    con = sqlite3.connect(str(path))
    try:
        con.executescript(catalog_sql())
        con.commit()
    finally:
        con.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quote(value: str) -> str:
    """A Bacula config string literal."""
    return '"%s"' % str(value).replace("\\", "\\\\").replace('"', '\\"')


def _port_open(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? Read from /proc/net/tcp rather than by connecting,
    which the daemons would log as a "Security Alert" (a connection without a Hello)."""
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    except OSError:
        pass
    return False


def _die_with_parent() -> None:
    """In the daemon's child process before exec: get SIGTERM when the test process dies, even by
    SIGKILL (Linux PR_SET_PDEATHSIG), so no daemon outlives a crashed or killed test run."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_live: "set[Bacula]" = set()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - safety net
    for b in list(_live):
        try:
            b.stop()
        except Exception:
            pass


class Bacula:
    """One private director + SD + FD. Names: ``<name>-dir``, ``<name>-sd``, ``<name>-fd``.

    Resources the harness defines itself, for the caller's Job/FileSet to reference:
    Client ``CLIENT``, Storage ``STORAGE``, Pool ``POOL``, Messages ``MESSAGES``, Catalog
    ``CATALOG``, and a restore job ``RESTORE_JOB``.
    """

    CLIENT = "test-fd"
    STORAGE = "test-file"
    POOL = "test-pool"
    MESSAGES = "test-messages"
    CATALOG = "test-catalog"
    RESTORE_JOB = "test-restore"
    NAME = "test"

    def __init__(self, workdir, director_resources: str = "", *, fd_env: Optional[Mapping[str, str]] = None,
                 fd_extra: str = "", dir_extra: str = "", sd_extra: str = "", debug: int = 0):
        require_installed()
        self.workdir = Path(workdir).resolve()
        self.director_resources = director_resources
        self.fd_env = dict(fd_env) if fd_env is not None else None
        self.fd_extra, self.dir_extra, self.sd_extra = fd_extra, dir_extra, sd_extra
        self.debug = debug
        self.procs: Dict[str, subprocess.Popen] = {}
        self._logs: Dict[str, object] = {}
        self.ports = {}
        self.passwords = {k: secrets.token_urlsafe(24) for k in ("console", "fd", "sd")}
        self.dir_conf = self.workdir / "bacula-dir.conf"
        self.sd_conf = self.workdir / "bacula-sd.conf"
        self.fd_conf = self.workdir / "bacula-fd.conf"
        self.console_conf = self.workdir / "bconsole.conf"
        self.storage_dir = self.workdir / "storage"
        self.log_file = self.workdir / "bacula.log"
        self.catalog_path = self.workdir / "dir" / "bacula.db"

    # ------------------------------------------------------------------ configuration
    def write_configs(self) -> None:
        w = self.workdir
        for d in ("dir", "sd", "fd", "storage", "bsr"):
            (w / d).mkdir(parents=True, exist_ok=True)
        os.chmod(w, 0o700)
        for k in ("dir", "sd", "fd"):
            self.ports[k] = free_port()
        make_catalog(self.catalog_path)
        n, p, pw = self.NAME, self.ports, self.passwords
        dir_conf = f"""# generated by tests/bacula/harness.py
Director {{
  Name = {n}-dir
  DIRport = {p['dir']}
  DirAddress = 127.0.0.1
  QueryFile = {quote(QUERY_FILE)}
  WorkingDirectory = {quote(w / 'dir')}
  PidDirectory = {quote(w / 'dir')}
  Maximum Concurrent Jobs = 5
  Password = {quote(pw['console'])}
  Messages = {self.MESSAGES}-daemon
}}

Catalog {{
  Name = {self.CATALOG}
  dbname = "bacula"; dbuser = ""; dbpassword = ""
}}

Client {{
  Name = {self.CLIENT}
  Address = 127.0.0.1
  FDPort = {p['fd']}
  Catalog = {self.CATALOG}
  Password = {quote(pw['fd'])}
  File Retention = 30 days
  Job Retention = 6 months
  AutoPrune = no
}}

Storage {{
  Name = {self.STORAGE}
  Address = 127.0.0.1
  SDPort = {p['sd']}
  Password = {quote(pw['sd'])}
  Device = {n}-device
  Media Type = {n}-file
  Maximum Concurrent Jobs = 5
}}

Pool {{
  Name = {self.POOL}
  Pool Type = Backup
  Recycle = no
  AutoPrune = no
  Volume Retention = 365 days
  Maximum Volume Jobs = 0
  Maximum Volume Bytes = 4G
  Label Format = "{n}-vol-"
}}

Messages {{
  Name = {self.MESSAGES}
  console = all, !skipped, !saved
  append = {quote(self.log_file)} = all, !skipped
  catalog = all, !skipped, !saved
}}

Messages {{
  Name = {self.MESSAGES}-daemon
  console = all, !skipped, !saved
  append = {quote(self.log_file)} = all, !skipped
}}

Job {{
  Name = {self.RESTORE_JOB}
  Type = Restore
  Client = {self.CLIENT}
  Storage = {self.STORAGE}
  Pool = {self.POOL}
  Messages = {self.MESSAGES}
  FileSet = {self.RESTORE_JOB}-fileset
  Where = {quote(w / 'restore-default')}
}}

FileSet {{
  Name = {self.RESTORE_JOB}-fileset
  Include {{
    File = {quote(w / 'nothing')}
  }}
}}

{self.dir_extra}

# ---- resources supplied by the test
{self.director_resources}
"""
        sd_conf = f"""# generated by tests/bacula/harness.py
Storage {{
  Name = {n}-sd
  SDPort = {p['sd']}
  SDAddress = 127.0.0.1
  WorkingDirectory = {quote(w / 'sd')}
  Pid Directory = {quote(w / 'sd')}
  Maximum Concurrent Jobs = 5
}}

Director {{
  Name = {n}-dir
  Password = {quote(pw['sd'])}
}}

Device {{
  Name = {n}-device
  Media Type = {n}-file
  Archive Device = {quote(self.storage_dir)}
  LabelMedia = yes
  Random Access = yes
  AutomaticMount = yes
  RemovableMedia = no
  AlwaysOpen = no
  Maximum Concurrent Jobs = 5
}}

Messages {{
  Name = {n}-sd-messages
  director = {n}-dir = all
}}
{self.sd_extra}
"""
        fd_conf = f"""# generated by tests/bacula/harness.py
FileDaemon {{
  Name = {self.CLIENT}
  FDport = {p['fd']}
  FDAddress = 127.0.0.1
  WorkingDirectory = {quote(w / 'fd')}
  Pid Directory = {quote(w / 'fd')}
  Maximum Concurrent Jobs = 5
{self.fd_extra}
}}

Director {{
  Name = {n}-dir
  Password = {quote(pw['fd'])}
}}

Messages {{
  Name = {n}-fd-messages
  director = {n}-dir = all, !skipped, !restored
}}
"""
        console_conf = f"""# generated by tests/bacula/harness.py
Director {{
  Name = {n}-dir
  DIRport = {p['dir']}
  Address = 127.0.0.1
  Password = {quote(pw['console'])}
}}
"""
        for path, text in ((self.dir_conf, dir_conf), (self.sd_conf, sd_conf), (self.fd_conf, fd_conf),
                           (self.console_conf, console_conf)):
            path.write_text(text)
            os.chmod(path, 0o600)

    def check_configs(self) -> None:
        """Let each daemon parse its configuration (``-t``): a clear error before anything starts."""
        for binary, conf in ((BACULA_DIR, self.dir_conf), (BACULA_SD, self.sd_conf),
                             (BACULA_FD, self.fd_conf), (BCONSOLE, self.console_conf)):
            r = subprocess.run([binary, "-t", "-c", str(conf)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=60)
            if r.returncode != 0:
                raise BaculaError("%s rejects %s (exit %d):\n%s\n--- config ---\n%s"
                                  % (binary, conf, r.returncode, r.stdout, conf.read_text()))

    # ------------------------------------------------------------------ daemons
    def start(self) -> "Bacula":
        self.write_configs()
        self.check_configs()
        _live.add(self)
        try:
            for key, binary, conf in (("sd", BACULA_SD, self.sd_conf), ("fd", BACULA_FD, self.fd_conf),
                                      ("dir", BACULA_DIR, self.dir_conf)):
                argv = [binary, "-f", "-c", str(conf)]
                if self.debug:
                    argv += ["-d", str(self.debug), "-dt"]
                log = open(self.workdir / ("%s.out" % key), "w")
                self._logs[key] = log
                env = None
                if key == "fd" and self.fd_env is not None:
                    env = dict(os.environ)
                    env.update(self.fd_env)
                self.procs[key] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                   stderr=subprocess.STDOUT, env=env,
                                                   start_new_session=True, preexec_fn=_die_with_parent)
                self._wait_listening(key)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, key: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs[key]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BaculaError("bacula %s exited with %s at start:\n%s"
                                  % (key, proc.returncode, self.daemon_output(key)))
            if _port_open(self.ports[key]):
                return
            time.sleep(0.1)
        raise BaculaError("bacula %s does not listen on port %d after %ss:\n%s"
                          % (key, self.ports[key], timeout, self.daemon_output(key)))

    def daemon_output(self, key: str) -> str:
        try:
            return (self.workdir / ("%s.out" % key)).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        """Stop the daemons (SIGTERM, then SIGKILL of each one's process group). Idempotent."""
        for key in ("dir", "fd", "sd"):
            proc = self.procs.get(key)
            if proc is None or proc.poll() is not None:
                continue
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for key in ("dir", "fd", "sd"):
            proc = self.procs.get(key)
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        _live.discard(self)

    def running(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs.values())

    def __enter__(self) -> "Bacula":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ console
    def console(self, *commands: str, timeout: float = 120) -> str:
        """Run bconsole commands (one per line) and return what it printed."""
        text = "\n".join(commands) + "\nquit\n"
        r = subprocess.run([BCONSOLE, "-n", "-c", str(self.console_conf)], input=text,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, errors="replace")
        if r.returncode != 0:
            raise BaculaError("bconsole exited %d for %r:\n%s" % (r.returncode, commands, r.stdout))
        return r.stdout

    def run_job(self, job: str, level: Optional[str] = None, **extra: str) -> int:
        cmd = "run job=%s" % job
        if level:
            cmd += " level=%s" % level
        for k, v in extra.items():
            cmd += " %s=%s" % (k, v)
        out = self.console(cmd + " yes")
        m = re.search(r"Job queued\. JobId=(\d+)", out)
        if not m:
            raise BaculaError("job %s not queued:\n%s" % (job, out))
        return int(m.group(1))

    def job(self, jobid: int) -> Dict[str, str]:
        """The job's catalog record as `llist jobid=` prints it (keys lower-case)."""
        out = self.console("llist jobid=%d" % jobid)
        rec: Dict[str, str] = {}
        for line in out.splitlines():
            m = re.match(r"^\s*([A-Za-z]+):\s?(.*)$", line)
            if m:
                rec.setdefault(m.group(1).lower(), m.group(2).strip())
        if "jobstatus" not in rec:
            raise BaculaError("no catalog record for job %d:\n%s" % (jobid, out))
        rec["jobstatus"] = rec["jobstatus"][:1]
        for k in ("jobfiles", "jobbytes", "joberrors", "readbytes"):
            if k in rec:
                rec[k] = int(rec[k].replace(",", ""))
        return rec

    def status(self, jobid: int) -> str:
        return self.job(jobid)["jobstatus"]

    def wait(self, jobid: int, timeout: float = 600) -> Dict[str, str]:
        """Wait until the job has ended; return its catalog record."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BaculaError("job %d still running after %ss:\n%s"
                                  % (jobid, timeout, self.console("status dir")))
            # `wait jobid=` returns when the job has ended (bounded by bconsole's own timeout here).
            try:
                self.console("wait jobid=%d" % jobid, timeout=min(left, 120) + 5)
            except subprocess.TimeoutExpired:
                continue
            rec = self.job(jobid)
            if rec["jobstatus"] in FINAL_STATES:
                return rec
            time.sleep(0.5)

    def wait_running(self, jobid: int, timeout: float = 120, poll: float = 0.2) -> None:
        """Wait until the job's status is Running (R) in the director."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(jobid)
            if st == JS_RUNNING:
                return
            if st in FINAL_STATES:
                raise BaculaError("job %d ended (%s) before it was seen running:\n%s"
                                  % (jobid, st, self.joblog(jobid)))
            time.sleep(poll)
        raise BaculaError("job %d not running after %ss" % (jobid, timeout))

    def cancel(self, jobid: int) -> str:
        return self.console("cancel jobid=%d yes" % jobid)

    def list_files(self, jobid: int) -> List[str]:
        """File names of the job as `list files jobid=` prints them (directories end in '/')."""
        out = self.console("list files jobid=%d" % jobid)
        return parse_table_column(out, "filename")

    def joblog(self, jobid: int) -> str:
        return self.console("list joblog jobid=%d" % jobid)

    def restore(self, where, jobids: Optional[Sequence[int]] = None, *, current: bool = False,
                fileset: Optional[str] = None, files: Optional[Iterable[str]] = None,
                timeout: float = 600) -> Dict[str, str]:
        """Restore into ``where`` (all files, or ``files``) and wait; returns the restore job record.

        ``jobids``: exactly these jobs (e.g. a Full and its Incrementals); ``current``: the most
        recent backup of the client for ``fileset`` (bconsole's option 5).
        """
        parts = ["restore", "client=%s" % self.CLIENT, "restorejob=%s" % self.RESTORE_JOB,
                 "where=%s" % where]
        if jobids:
            parts.append("jobid=%s" % ",".join(str(j) for j in jobids))
        elif current:
            parts += ["fileset=%s" % fileset, "current"]
        else:
            raise ValueError("give jobids or current=True")
        if files:
            lines = [" ".join(parts), ] + ["mark %s" % f for f in files] + ["done", "yes"]
        else:
            lines = [" ".join(parts + ["all", "done", "yes"])]
        out = self.console(*lines)
        m = re.search(r"Job queued\. JobId=(\d+)", out)
        if not m:
            raise BaculaError("restore not queued:\n%s" % out)
        return self.wait(int(m.group(1)), timeout=timeout)

    # ------------------------------------------------------------------ catalog (read-only)
    def catalog_files(self, jobid: int) -> List[Dict[str, object]]:
        """Rows of the catalog's File table for the job: path, name, fileindex, lstat, md5."""
        con = sqlite3.connect("file:%s?mode=ro" % self.catalog_path, uri=True, timeout=30)
        try:
            rows = con.execute(
                "SELECT Path.Path, Filename.Name, File.FileIndex, File.LStat, File.MD5 FROM File "
                "JOIN Path ON Path.PathId = File.PathId "
                "JOIN Filename ON Filename.FilenameId = File.FilenameId "
                "WHERE File.JobId = ? ORDER BY Path.Path, Filename.Name", (jobid,)).fetchall()
        finally:
            con.close()
        return [dict(path=r[0] + r[1], fileindex=r[2], lstat=r[3], md5=r[4],
                     size=decode_lstat(r[3])["size"], mode=decode_lstat(r[3])["mode"]) for r in rows]

    def volumes(self) -> List[Path]:
        return sorted(self.storage_dir.iterdir()) if self.storage_dir.exists() else []


# ---------------------------------------------------------------------- parsing helpers
def parse_table_column(out: str, column: str) -> List[str]:
    """Values of one column of a bconsole ASCII table (``| a | b |`` rows between ``+---+`` rules)."""
    lines = out.splitlines()
    values: List[str] = []
    header_idx = None
    cols: List[str] = []
    for i, line in enumerate(lines):
        if header_idx is not None and i > header_idx + 1 and line.startswith("+"):
            break           # end of the table (bconsole may print another table after it)
        if line.startswith("|") and header_idx is None:
            cells = [c.strip().lower() for c in line.strip()[1:-1].split("|")]
            if column.lower() in cells:
                header_idx, cols = i, cells
                continue
        if header_idx is not None and line.startswith("| ") and line.rstrip().endswith("|"):
            if len(cols) == 1:
                # one column: take everything between the outer bars, so names with '|' survive
                values.append(line[2:].rstrip()[:-1].rstrip())
            else:
                cells = [c.strip() for c in line.strip()[1:-1].split("|")]
                values.append(cells[cols.index(column.lower())])
    return values


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _from_base64(s: str) -> int:
    neg = s.startswith("-")
    if neg:
        s = s[1:]
    v = 0
    for ch in s:
        v = (v << 6) + _B64.index(ch)
    return -v if neg else v


def decode_lstat(lstat: str) -> Dict[str, int]:
    """Decode the catalog's LStat field (Bacula's base64 `encode_stat`)."""
    names = ("dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
             "atime", "mtime", "ctime", "linkfi", "flags", "stream")
    vals = [_from_base64(x) for x in lstat.split()]
    return dict(zip(names, vals))
