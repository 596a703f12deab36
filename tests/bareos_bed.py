"""A throwaway real Bareos for the vm suite: director, storage daemon and file daemon on 127.0.0.1
with a PostgreSQL catalog of its own, all under one scratch directory (run as root in the VM).

Where Bareos comes from (`locate()`), first match wins:
1. $DOMU_BAREOS_HOME: an unpacked relocatable tree (sbin/, lib/, plugins/, python/, share/), like
   the shared tarball's `bareos-25.1.0/`;
2. Debian's packages on this host: /usr/sbin/bareos-fd, /usr/lib/bareos/plugins/python3-fd.so, ...;
3. $DOMU_BAREOS_TARBALL or ../shared/bareos/bareos-25.1.0-debian12-amd64.tar.xz (beside the
   repository), unpacked into the scratch directory (1.4 MB: a fraction of a second, no cache).
None of them: `BareosMissing` with a one-line message; the tests fail on it (never skip).

The FileSet, Job and Client resources are the shipped examples etc/bareos/*.conf, with only the
lines marked `# EDIT <key>` changed (`edit_marked`, which refuses unknown or missing keys), and the
bed's own directives merged into the example's Client {} of the file daemon. The plugin is
installed with `make install-plugin BAREOS_PLUGIN_DIR=<scratch>/plugins`; python3-fd.so is linked
beside it and the real `bareosfd` module is on the file daemon's PYTHONPATH.

    bed = Bareos(workdir, plugin_values={...}).start()
    jobid = bed.run_job("domu-snapshot-plugin", level="Full")
    st = bed.wait_job(jobid)          # JobStatus letter, JobFiles, JobBytes, termination, log
    bed.restore(where=..., jobid=jobid)
    bed.stop()

Every command is an argument list. The daemons fork (their output goes to files, they leave pid
files); `stop()` ends them by those pids, then stops PostgreSQL with pg_ctl.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "etc" / "bareos"
PLUGIN_EXAMPLE = EXAMPLES / "domu-snapshot-plugin.conf"
HELPERS_EXAMPLE = EXAMPLES / "domu-snapshot-helpers.conf"
CLIENT_EXAMPLE = EXAMPLES / "bareos-fd-client.conf"
TARBALL = REPO.parent / "shared" / "bareos" / "bareos-25.1.0-debian12-amd64.tar.xz"

FINAL_STATES = set("TEefAW")   # terminated, error, fatal, canceled, with warnings
RUNNING = "R"


class BareosMissing(RuntimeError):
    """No Bareos to run: the message is one line that says what to provide."""


class BareosError(RuntimeError):
    pass


# ------------------------------------------------------------------------------ where it is
@dataclasses.dataclass
class Install:
    origin: str           # how it was found (for messages)
    sbin: Path            # bareos-dir, bareos-sd, bareos-fd, bconsole
    plugins: Path         # python3-fd.so
    python: Path | None   # directory holding the bareosfd module (None: system-wide)
    ddl: Path             # .../ddl (creates/postgresql.sql, grants/postgresql.sql)
    query_sql: Path
    backends: Path

    def binary(self, name: str) -> str:
        return str(self.sbin / name)


def _tree_install(home: Path, origin: str) -> Install:
    return Install(origin=origin, sbin=home / "sbin", plugins=home / "plugins",
                   python=home / "python", ddl=home / "share" / "ddl", query_sql=home / "share" / "query.sql",
                   backends=home / "lib" / "backends")


def _check(inst: Install) -> list[str]:
    need = [inst.sbin / b for b in ("bareos-dir", "bareos-sd", "bareos-fd", "bconsole")]
    need += [inst.plugins / "python3-fd.so", inst.ddl / "creates" / "postgresql.sql", inst.query_sql]
    return [str(p) for p in need if not p.exists()]


SYSTEM_FD = "/usr/sbin/bareos-fd"


def locate(scratch: Path | None = None, env=os.environ, system_fd: str = SYSTEM_FD) -> Install:
    """The Bareos to run (see the module docstring); unpacks the tarball into `scratch` if that is
    where it comes from. Raises BareosMissing (one line) when there is none."""
    home = env.get("DOMU_BAREOS_HOME")
    if home:
        inst = _tree_install(Path(home), f"DOMU_BAREOS_HOME={home}")
        missing = _check(inst)
        if missing:
            raise BareosMissing(f"DOMU_BAREOS_HOME={home} is not a Bareos tree (missing {', '.join(missing)})")
        return inst
    if os.path.exists(system_fd):
        inst = Install(origin="Debian packages", sbin=Path("/usr/sbin"), plugins=Path("/usr/lib/bareos/plugins"),
                       python=None, ddl=Path("/usr/lib/bareos/scripts/ddl"),
                       query_sql=Path("/usr/lib/bareos/scripts/query.sql"), backends=Path("/usr/lib/bareos/backends"))
        missing = _check(inst)
        if missing:
            raise BareosMissing(f"Bareos packages incomplete (missing {', '.join(missing)}): install "
                                "bareos-director bareos-storage bareos-filedaemon-python3-plugin bareos-bconsole")
        return inst
    tarball = Path(env.get("DOMU_BAREOS_TARBALL") or TARBALL)
    if tarball.is_file():
        if scratch is None:
            raise BareosMissing(f"{tarball} needs a scratch directory to be unpacked into")
        dest = Path(scratch) / "bareos-home"
        if not dest.exists():
            tmp = Path(scratch) / ".unpack"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with tarfile.open(tarball) as tf:
                tf.extractall(tmp, filter="tar") if hasattr(tarfile, "data_filter") else tf.extractall(tmp)
            tops = [p for p in tmp.iterdir() if p.is_dir()]
            if len(tops) != 1:
                raise BareosMissing(f"{tarball}: expected one top directory, found {[p.name for p in tops]}")
            tops[0].rename(dest)
            tmp.rmdir()
        inst = _tree_install(dest, str(tarball))
        missing = _check(inst)
        if missing:
            raise BareosMissing(f"{tarball} unpacked without {', '.join(missing)}")
        return inst
    raise BareosMissing("no Bareos: set DOMU_BAREOS_HOME to an unpacked Bareos tree, install Debian's Bareos "
                        f"packages, or provide {tarball}")


# ------------------------------------------------------------------------------ the examples
_MARK = re.compile(r"#\s*EDIT\s+(?P<key>[^#]*?)\s*$")
_DIRECTIVE = re.compile(r'^(?P<head>\s*[A-Za-z][A-Za-z ]*?\s*=\s*)(?P<value>"(?:[^"\\]|\\.)*"|[^\s#]+)(?P<tail>.*)$')
_PLUGIN_PIECE = re.compile(r'^(?P<head>\s*":(?P<opt>[a-z_]+)=)(?P<value>[^"]*)(?P<tail>".*)$')


def _quote(value: str) -> str:
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')


def _unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value


def marked_keys(text: str) -> dict[str, str]:
    """{EDIT key: current value} of the marked lines of an example."""
    found = {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        m = _MARK.search(line)
        if not m:
            continue
        body = line[:m.start()]
        piece = _PLUGIN_PIECE.match(body)
        d = _DIRECTIVE.match(body)
        if piece:
            found[m.group("key")] = piece.group("value")
        elif d:
            found[m.group("key")] = _unquote(d.group("value"))
        else:
            raise ValueError(f"line {n}: cannot parse the marked line {line!r}")
    return found


def edit_marked(text: str, values: dict) -> str:
    """The example `text` with the value of every `# EDIT <key>` line replaced by values[key]
    (None comments the line out; for the key `foreach-domu` the program word of the Command is
    replaced and its sub-command kept). Every marked key must be given and no other; unmarked lines
    stay as they are, byte for byte."""
    found = marked_keys(text)
    missing, unknown = set(found) - set(values), set(values) - set(found)
    if missing or unknown:
        raise KeyError(f"EDIT keys: missing {sorted(missing)}, unknown {sorted(unknown)} (marked: {sorted(found)})")
    out = []
    for line in text.split("\n"):
        m = _MARK.search(line) if not line.lstrip().startswith("#") else None
        if not m:
            out.append(line)
            continue
        key, value = m.group("key"), values[m.group("key")]
        body, mark = line[:m.start()], line[m.start():]
        if value is None:
            indent = body[:len(body) - len(body.lstrip())]
            out.append(f"{indent}# (bed) {line.strip()}")
            continue
        piece = _PLUGIN_PIECE.match(body)
        if piece:
            # a colon inside a plugin option value is written \\: in the config file
            out.append(piece.group("head") + value.replace(":", "\\\\:") + piece.group("tail") + mark)
            continue
        d = _DIRECTIVE.match(body)
        if key == "foreach-domu":
            old = _unquote(d.group("value")).split(None, 1)
            value = f"{value} {old[1]}" if len(old) > 1 else value
        out.append(d.group("head") + _quote(value) + d.group("tail") + mark)
    return "\n".join(out)


def unmarked_changes(original: str, edited: str) -> list[str]:
    """Lines of `edited` that differ from `original` on a line without an `# EDIT` mark (what the
    bed runs must be the example itself); [] when only marked lines changed."""
    a, b = original.split("\n"), edited.split("\n")
    if len(a) != len(b):
        return [f"line count {len(b)}, the example has {len(a)}"]
    return [f"line {n}: {x!r} -> {y!r}" for n, (x, y) in enumerate(zip(a, b), 1)
            if x != y and (x.lstrip().startswith("#") or not _MARK.search(x))]


def resource_blocks(text: str, kind: str) -> list[str]:
    """The top-level resources of one kind (`Job`, `FileSet`, `Client`) of a config text, each
    from its opening line to its closing brace, as written."""
    blocks, depth, current = [], 0, None
    for line in text.split("\n"):
        code = _strip_comment(line)
        if depth == 0 and re.match(rf"^{kind}\s*\{{", code, re.I):
            current = []
        if current is not None:
            current.append(line)
        depth += code.count("{") - code.count("}")
        if current is not None and depth == 0:
            blocks.append("\n".join(current))
            current = None
    return blocks


def _strip_comment(line: str) -> str:
    inq = esc = False
    for i, ch in enumerate(line):
        if esc:
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == '"':
            inq = not inq
        elif ch == "#" and not inq:
            return line[:i].strip()
    return line.strip()


def variant_job(job_block: str, name: str, extra: list[str]) -> str:
    """A second Job made from an example Job for one test: its Name replaced and `extra`
    directives added before the closing brace; every other line as in the example."""
    lines = job_block.split("\n")
    named = [i for i, l in enumerate(lines) if re.match(r"^\s*Name\s*=", l)]
    assert named, job_block
    lines[named[0]] = f"  Name = {_quote(name)}   # (bed) variant of the example's Job"
    return "\n".join(lines[:-1] + [f"  {e}   # (bed)" for e in extra] + lines[-1:])


def merge_into(block: str, lines: list[str]) -> str:
    """The resource `block` with `lines` added after its opening line (the example's own lines kept)."""
    first, rest = block.split("\n", 1)
    return "\n".join([first] + [f"  {l}   # (bed)" for l in lines] + [rest])


# ------------------------------------------------------------------------------ helpers
def _run(argv: list[str], *, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, stdin=kw.pop("stdin", subprocess.DEVNULL), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BareosError(f"{argv[0]} exited {p.returncode}: {' '.join(argv)}\n{p.stdout}")
    return p


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    """From /proc/net/tcp, not by connecting (a daemon logs a bare connection as an alert)."""
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    except OSError:
        pass
    return False


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise BareosMissing("no PostgreSQL server (initdb) for the Bareos catalog: apt-get install postgresql")
    return Path(found[-1]).parent


# ------------------------------------------------------------------------------ the bed
class Bareos:
    """One private Bareos. Resource names of its own: Director `bed-dir`, Client `bed-fd`,
    Storage `bed-file`, Pool `bed-pool`, Messages `bed-messages`, Catalog `bed-catalog`, restore
    Job `bed-restore`. `plugin_values`/`helpers_values`: EDIT keys of the examples that the caller
    chooses (mount_root, guest LV prefix, foreach-domu); the bed fills in the rest."""

    DIRECTOR, CLIENT, STORAGE, POOL, MESSAGES = "bed-dir", "bed-fd", "bed-file", "bed-pool", "bed-messages"
    CATALOG, RESTORE_JOB = "bed-catalog", "bed-restore"

    def __init__(self, workdir, *, plugin_values: dict | None = None, helpers_values: dict | None = None,
                 variants: dict | None = None, extra_jobs: list[str] = (), fd_env: dict | None = None, log=print):
        self.work = Path(workdir).resolve()
        self.plugin_values = plugin_values
        self.helpers_values = helpers_values
        self.variants = dict(variants or {})      # Job name -> (example Job name, [added directives])
        self.extra_jobs = list(extra_jobs)
        self.fd_env = dict(fd_env or {})
        self.log = log
        self.inst: Install | None = None
        self.ports: dict[str, int] = {}
        self.pw = {k: secrets.token_hex(16) for k in ("console", "fd", "sd")}
        self.joblog_file = self.work / "bareos-jobs.log"
        self.plugin_dir = self.work / "plugins"
        self.pg_data = self.work / "pg" / "data"
        self.pg_socket = self.work / "pg" / "socket"
        self.started: list[str] = []
        self.timings: dict[str, float] = {}
        self.job_texts: dict[str, str] = {}

    # -- start / stop
    def start(self) -> "Bareos":
        self.work.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work, 0o755)          # postgres must reach its data directory below
        closed = [str(d) for d in self.work.parents if not os.stat(d).st_mode & 0o001]
        if closed:
            raise BareosError(f"user postgres cannot reach {self.work} (not searchable: {', '.join(closed)})")
        t0 = time.monotonic()
        self.inst = locate(self.work)
        self.timings["locate"] = time.monotonic() - t0
        try:
            for step in (self.install_plugin, self.start_catalog, self.write_configs, self.start_daemons):
                t = time.monotonic()
                step()
                self.timings[step.__name__] = time.monotonic() - t
        except BaseException:
            self.stop()
            raise
        self.log(f"bareos bed: {self.inst.origin}, up in {time.monotonic() - t0:.0f}s "
                 + " ".join(f"{k}={v:.0f}s" for k, v in self.timings.items()))
        return self

    def install_plugin(self) -> None:
        """As an admin does it: `make install-plugin` into the fd's Plugin Directory, plus python3-fd.so."""
        _run(["make", "--no-print-directory", "-C", str(REPO), "install-plugin",
              f"BAREOS_PLUGIN_DIR={self.plugin_dir}"])
        # a copy: bareos-fd loads only regular files from its Plugin Directory (no symlinks)
        shutil.copy2(self.inst.plugins / "python3-fd.so", self.plugin_dir / "python3-fd.so")

    def _as_postgres(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return _run(["runuser", "-u", "postgres", "--", *argv], **kw)

    def _psql(self, db: str, *args: str, user: str = "postgres") -> str:
        return self._as_postgres([str(self.pg_bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                  "-h", str(self.pg_socket), "-p", str(self.ports["pg"]), "-U", user,
                                  "-d", db, *args]).stdout

    def start_catalog(self) -> None:
        self.pg_bin = _pg_bin()
        self.ports["pg"] = _free_port()
        pg = self.work / "pg"
        for d in (pg, self.pg_socket):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
        self._as_postgres([str(self.pg_bin / "initdb"), "-A", "trust", "-U", "postgres", "-E", "SQL_ASCII",
                           "--locale=C", "--no-sync", "-D", str(self.pg_data)])
        with open(self.pg_data / "postgresql.conf", "a") as f:
            f.write(f"\n# bareos bed\nlisten_addresses = '127.0.0.1'\nport = {self.ports['pg']}\n"
                    f"unix_socket_directories = '{self.pg_socket}'\nfsync = off\nsynchronous_commit = off\n"
                    "full_page_writes = off\nshared_buffers = 32MB\n")
        self._as_postgres([str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data), "-l", str(pg / "postgres.log"),
                           "-w", "-t", "180", "start"], timeout=240)
        self.started.append("pg")
        self._psql("postgres", "-c", "CREATE DATABASE bareos ENCODING 'SQL_ASCII' LC_COLLATE 'C' "
                                     "LC_CTYPE 'C' TEMPLATE template0")
        self._psql("bareos", "-f", str(self.inst.ddl / "creates" / "postgresql.sql"))
        grants = (self.inst.ddl / "grants" / "postgresql.sql").read_text()
        grants = grants.replace("@DB_USER@", "bareos").replace("@DB_PASS@", "")
        gfile = pg / "grants.sql"
        gfile.write_text(grants)
        shutil.chown(gfile, "postgres", "postgres")
        self._psql("bareos", "-f", str(gfile))

    # -- configuration
    def example_values(self, text: str, chosen: dict) -> dict:
        """Values for every EDIT key of an example: the caller's, then the bed's resource names."""
        bed = {"client": self.CLIENT, "storage": self.STORAGE, "pool": self.POOL, "messages": self.MESSAGES,
               "schedule": None, "plugin directory": str(self.plugin_dir)}
        keys = marked_keys(text)
        values = {}
        for key in keys:
            if key in chosen:
                values[key] = chosen[key]
            elif key == "bootstrap":
                values[key] = str(self.work / "bsr" / f"%c-%n.bsr")
            elif key in bed:
                values[key] = bed[key]
            else:
                raise KeyError(f"EDIT key {key!r} needs a value from the test")
        return values

    def director_resources(self) -> str:
        parts = []
        for example, chosen in ((PLUGIN_EXAMPLE, self.plugin_values), (HELPERS_EXAMPLE, self.helpers_values)):
            if chosen is None:
                continue
            text = example.read_text()
            edited = edit_marked(text, self.example_values(text, chosen))
            changed = unmarked_changes(text, edited)
            if changed:
                raise BareosError(f"{example.name}: unmarked lines changed: {changed}")
            parts.append(f"# ---- {example.relative_to(REPO)}, EDIT lines replaced\n" + "\n\n".join(
                resource_blocks(edited, "FileSet") + resource_blocks(edited, "Job")))
            for job in resource_blocks(edited, "Job"):
                name = re.search(r'^\s*Name\s*=\s*"?([^"\n]+?)"?\s*$', job, re.M).group(1)
                self.job_texts[name] = job
        for name, (base, extra) in self.variants.items():
            parts.append(variant_job(self.job_texts[base], name, extra))
        parts += self.extra_jobs
        return "\n\n".join(parts)

    def fd_client_resource(self) -> str:
        text = CLIENT_EXAMPLE.read_text()
        edited = edit_marked(text, self.example_values(text, {}))
        changed = unmarked_changes(text, edited)
        if changed:
            raise BareosError(f"{CLIENT_EXAMPLE.name}: unmarked lines changed: {changed}")
        [client] = resource_blocks(edited, "Client")
        w = self.work
        return merge_into(client, [f"FDport = {self.ports['fd']}", "FDAddress = 127.0.0.1",
                                   f"WorkingDirectory = {_quote(str(w / 'fd'))}"])

    def write_configs(self) -> None:
        w, p, pw = self.work, self.ports, self.pw
        for d in ("dir", "sd", "fd", "volumes", "bsr", "restore-default"):
            (w / d).mkdir(exist_ok=True)
        for k in ("dir", "sd", "fd"):
            p[k] = _free_port()
        jl = _quote(str(self.joblog_file))
        self.dir_conf = w / "bareos-dir.conf"
        self.dir_conf.write_text(f"""# written by tests/bareos_bed.py
Director {{
  Name = {self.DIRECTOR}
  DIRport = {p['dir']}
  DirAddress = 127.0.0.1
  QueryFile = {_quote(str(self.inst.query_sql))}
  WorkingDirectory = {_quote(str(w / 'dir'))}
  Maximum Concurrent Jobs = 4
  Password = {_quote(pw['console'])}
  Messages = bed-daemon
}}

Catalog {{
  Name = {self.CATALOG}
  dbname = "bareos"
  dbuser = "bareos"
  dbpassword = ""
  dbaddress = "127.0.0.1"
  dbport = {p['pg']}
}}

Client {{
  Name = {self.CLIENT}
  Address = 127.0.0.1
  FDPort = {p['fd']}
  Catalog = {self.CATALOG}
  Password = {_quote(pw['fd'])}
  File Retention = 30 days
  Job Retention = 6 months
  AutoPrune = no
  # two jobs at once on this client (the concurrent-jobs test; the other tests wait for each job)
  Maximum Concurrent Jobs = 4
}}

Storage {{
  Name = {self.STORAGE}
  Address = 127.0.0.1
  SDPort = {p['sd']}
  Password = {_quote(pw['sd'])}
  Device = bed-device
  Media Type = File
  Maximum Concurrent Jobs = 4
}}

Pool {{
  Name = {self.POOL}
  Pool Type = Backup
  Recycle = no
  AutoPrune = no
  Volume Retention = 365 days
  Maximum Volume Bytes = 2G
  Label Format = "bedvol-"
}}

Messages {{
  Name = {self.MESSAGES}
  console = all, !skipped, !saved
  append = {jl} = all, !skipped, !saved, !restored
  catalog = all, !skipped, !saved, !restored
}}

Messages {{
  Name = bed-daemon
  console = all, !skipped, !saved
  append = {jl} = all, !skipped, !saved, !restored
}}

FileSet {{
  Name = bed-restore-fileset
  Include {{
    File = {_quote(str(w / 'nothing'))}
  }}
}}

Job {{
  Name = {self.RESTORE_JOB}
  Type = Restore
  Client = {self.CLIENT}
  Storage = {self.STORAGE}
  Pool = {self.POOL}
  Messages = {self.MESSAGES}
  FileSet = bed-restore-fileset
  Where = {_quote(str(w / 'restore-default'))}
}}

{self.director_resources()}
""")
        self.sd_conf = w / "bareos-sd.conf"
        self.sd_conf.write_text(f"""# written by tests/bareos_bed.py
Storage {{
  Name = bed-sd
  SDPort = {p['sd']}
  SDAddress = 127.0.0.1
  WorkingDirectory = {_quote(str(w / 'sd'))}
  Backend Directory = {_quote(str(self.inst.backends))}
  Maximum Concurrent Jobs = 4
}}

Director {{
  Name = {self.DIRECTOR}
  Password = {_quote(pw['sd'])}
}}

Device {{
  Name = bed-device
  Device Type = File
  Media Type = File
  Archive Device = {_quote(str(w / 'volumes'))}
  LabelMedia = yes
  Random Access = yes
  AutomaticMount = yes
  RemovableMedia = no
  AlwaysOpen = no
  Maximum Concurrent Jobs = 4
}}

Messages {{
  Name = bed-sd-messages
  director = {self.DIRECTOR} = all
}}
""")
        self.fd_conf = w / "bareos-fd.conf"
        self.fd_conf.write_text(f"""# written by tests/bareos_bed.py; the Client is etc/bareos/bareos-fd-client.conf's
{self.fd_client_resource()}

Director {{
  Name = {self.DIRECTOR}
  Password = {_quote(pw['fd'])}
}}

Messages {{
  Name = bed-fd-messages
  director = {self.DIRECTOR} = all, !skipped, !restored, !saved
}}
""")
        self.console_conf = w / "bconsole.conf"
        self.console_conf.write_text(f"""Director {{
  Name = {self.DIRECTOR}
  DIRport = {p['dir']}
  Address = 127.0.0.1
  Password = {_quote(pw['console'])}
}}
""")
        for c in (self.dir_conf, self.sd_conf, self.fd_conf, self.console_conf):
            os.chmod(c, 0o600)

    def fd_environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env["PATH"] = f"{REPO / '.venv' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
        if self.inst.python is not None:
            env["PYTHONPATH"] = str(self.inst.python)
        env.update(self.fd_env)
        return env

    def start_daemons(self) -> None:
        for key, binary, conf in (("sd", "bareos-sd", self.sd_conf), ("fd", "bareos-fd", self.fd_conf),
                                  ("dir", "bareos-dir", self.dir_conf)):
            self._start_daemon(key, binary, conf)

    def kill_fd(self) -> int:
        """SIGKILL bareos-fd (a crash: no plugin event, no teardown); returns its pid once gone."""
        pid = self._pid("fd")
        if not pid or not _alive(pid):
            raise BareosError(f"bareos-fd is not running (pid file: {pid})")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _alive(pid):
            if time.monotonic() > deadline:
                raise BareosError(f"bareos-fd {pid} still alive 60 s after SIGKILL")
            time.sleep(0.2)
        self.started.remove("fd")
        (self.work / "fd" / "fd.pid").unlink(missing_ok=True)   # stale: the new one waits for its own
        return pid

    def restart_fd(self) -> int:
        """Start bareos-fd again with the same configuration and environment; returns the new pid."""
        deadline = time.monotonic() + 60
        while _listening(self.ports["fd"]):    # the killed daemon's socket
            if time.monotonic() > deadline:
                raise BareosError(f"port {self.ports['fd']} still listening after bareos-fd was killed")
            time.sleep(0.5)
        self._start_daemon("fd", "bareos-fd", self.fd_conf, append=True)
        return self._pid("fd")

    def _start_daemon(self, key: str, binary: str, conf: Path, append: bool = False) -> None:
        pidfile = self.work / key / f"{key}.pid"
        out = self.work / f"{key}.out"
        with open(out, "a" if append else "w") as f:
            # the daemon forks; its output goes to a file, never a pipe we would wait on
            rc = subprocess.call([self.inst.binary(binary), "-c", str(conf), "-p", str(pidfile)],
                                 stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 env=self.fd_environment() if key == "fd" else None, cwd=str(self.work / key))
        self.started.append(key)
        if rc != 0:
            raise BareosError(f"{binary} exited {rc} at start:\n{out.read_text(errors='replace')}\n"
                              f"{self.config_test(binary, conf)}")
        deadline = time.monotonic() + 180
        while not (pidfile.exists() and _listening(self.ports[key])):
            if time.monotonic() > deadline:
                raise BareosError(f"{binary} does not listen on {self.ports[key]} after 180s:\n"
                                  f"{out.read_text(errors='replace')}\n{self.config_test(binary, conf)}")
            pid = self._pid(key)
            if pid and not _alive(pid):
                raise BareosError(f"{binary} died at start:\n{out.read_text(errors='replace')}\n"
                                  f"{self.config_test(binary, conf)}")
            time.sleep(0.5)

    def config_test(self, binary: str, conf: Path) -> str:
        p = _run([self.inst.binary(binary), "-t", "-c", str(conf)], check=False, timeout=120)
        return f"{binary} -t: exit {p.returncode}\n{p.stdout}"

    def _pid(self, key: str) -> int | None:
        try:
            return int((self.work / key / f"{key}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the daemons by their pid files (TERM, then KILL), then PostgreSQL. Idempotent."""
        for key in ("dir", "fd", "sd"):
            if key not in self.started:
                continue
            pid = self._pid(key)
            if pid and _alive(pid):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            self.started.remove(key)
        if "pg" in self.started:
            self._as_postgres([str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data), "-m", "fast", "-w",
                               "stop"], check=False, timeout=120)
            self.started.remove("pg")
        self.keep_logs()

    def keep_logs(self) -> None:
        run_dir = os.environ.get("DOMU_VM_RUN_DIR")
        if not run_dir:
            return
        dest = Path(run_dir) / "bareos"
        dest.mkdir(parents=True, exist_ok=True)
        for p in [self.joblog_file, self.work / "pg" / "postgres.log"] + \
                 [self.work / f"{k}.out" for k in ("dir", "sd", "fd")] + \
                 [getattr(self, a, None) for a in ("dir_conf", "sd_conf", "fd_conf")]:
            if p is not None and p.exists():
                shutil.copy(p, dest / p.name)

    def fd_alive(self) -> bool:
        pid = self._pid("fd")
        return bool(pid and _alive(pid))

    def fd_pid(self) -> int | None:
        return self._pid("fd")

    # -- console
    def bconsole(self, *commands: str, timeout: float = 300) -> str:
        text = "\n".join(commands) + "\nquit\n"
        p = _run([self.inst.binary("bconsole"), "-c", str(self.console_conf)], check=False, timeout=timeout,
                 input=text, stdin=None)
        if p.returncode != 0:
            raise BareosError(f"bconsole exited {p.returncode} for {commands}:\n{p.stdout}")
        return p.stdout

    def run_job(self, name: str, level: str | None = None, **extra) -> int:
        cmd = f"run job={name}" + (f" level={level}" if level else "")
        cmd += "".join(f" {k}={v}" for k, v in extra.items())
        out = self.bconsole(cmd + " yes")
        m = re.search(r"Job queued\. JobId=(\d+)", out)
        if not m:
            raise BareosError(f"job {name} not queued:\n{out}")
        return int(m.group(1))

    def record(self, jobid: int) -> dict:
        """`llist jobid=N` as a dict (lower-case keys); numbers as int."""
        out = self.bconsole(f"llist jobid={jobid}")
        rec = {}
        for line in out.splitlines():
            m = re.match(r"^\s*([A-Za-z]+):\s?(.*)$", line)
            if m:
                rec.setdefault(m.group(1).lower(), m.group(2).strip())
        if "jobstatus" not in rec:
            raise BareosError(f"no catalog record for job {jobid}:\n{out}")
        for k in ("jobfiles", "jobbytes", "joberrors", "readbytes"):
            if k in rec:
                try:
                    rec[k] = int(rec[k].replace(",", ""))
                except ValueError:
                    pass
        return rec

    def wait_job(self, jobid: int, timeout: float = 600, poll: float = 5) -> dict:
        """Poll `llist jobid=N` until the job has ended (the daemons' logs are copied to the VM
        run directory on the way, so a stuck job can be looked at from the host)."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self.record(jobid)
            if rec["jobstatus"][:1] in FINAL_STATES:
                self.keep_logs()
                st = self.job_status(jobid, rec)
                self.log(f"job {jobid} {rec.get('name', '')} level {st['level']}: {st['status']} "
                         f"{st['termination']!r}, {st['files']} files, {st['errors']} errors")
                return st
            if time.monotonic() > deadline:
                self.keep_logs()
                raise BareosError(f"job {jobid} still running after {timeout}s:\n{self.bconsole('status dir')}\n"
                                  f"{self.bconsole(f'status client={self.CLIENT}')}\n{self.joblog(jobid)}")
            self.keep_logs()
            time.sleep(poll)

    def job_status(self, jobid: int, rec: dict | None = None) -> dict:
        """status (JobStatus letter), files, bytes, errors, level, termination (the job log's
        Termination: text), fd_files (FD Files Written), log (the job's messages), record."""
        rec = rec or self.record(jobid)
        log = self.joblog(jobid)
        term = re.findall(r"^\s*Termination:\s*(.*?)\s*$", log, re.M)
        fdw = re.findall(r"^\s*FD Files Written:\s*([\d,]+)", log, re.M)
        return dict(jobid=jobid, status=rec["jobstatus"][:1], files=rec.get("jobfiles"), bytes=rec.get("jobbytes"),
                    errors=rec.get("joberrors"), level=rec.get("level"), termination=term[-1] if term else None,
                    fd_files=int(fdw[-1].replace(",", "")) if fdw else None, log=log, record=rec)

    def joblog(self, jobid: int) -> str:
        """The job's messages from the Messages resource's append file (multi-line messages whole)."""
        try:
            text = self.joblog_file.read_text(errors="replace")
        except OSError:
            return ""
        out, keep = [], False
        head = re.compile(r"^\S+ \d\d:\d\d(?::\d\d)? \S+(?: JobId (\d+))?: ")
        for line in text.splitlines():
            m = head.match(line)
            if m:
                keep = m.group(1) == str(jobid)
            if keep:
                out.append(line)
        return "\n".join(out)

    def estimate(self, job: str, level: str = "Full", listing: bool = True, timeout: float = 900) -> str:
        """bconsole `estimate job=... level=... [listing]`: its whole output (the file daemon's
        listing lines and its "2000 OK estimate files=N bytes=M")."""
        return self.bconsole(f"estimate job={job} level={level}" + (" listing" if listing else ""),
                             timeout=timeout)

    def cancel(self, jobid: int) -> str:
        return self.bconsole(f"cancel jobid={jobid} yes")

    def list_files(self, jobid: int) -> list[str]:
        out = self.bconsole(f"list files jobid={jobid}")
        # Bareos 25 prints one name per line, indented by one space (older ones: a table)
        names = []
        for line in out.splitlines():
            if line.startswith(" /"):
                names.append(line[1:])
            elif line.startswith("| /") and line.rstrip().endswith("|"):
                names.append(line[2:].rstrip()[:-1].rstrip())
        return names

    def restore(self, where: str | None = None, *, jobid: int | None = None, current: bool = False,
                fileset: str | None = None, files: list[str] = (), timeout: float = 900, **kw) -> dict:
        """Restore everything (or only `files`, by mark in the tree) of `jobid`, or of the latest
        state (`current`, of `fileset`); kw: strip_prefix=, add_prefix=, regexwhere=. Waits; returns
        the restore job's job_status."""
        parts = ["restore", f"client={self.CLIENT}", f"restorejob={self.RESTORE_JOB}"]
        if where is not None:
            parts.append(f"where={where}")
        parts += [f"{k}={v}" for k, v in kw.items()]
        if jobid is not None:
            parts.append(f"jobid={jobid}")
        elif current:
            # Bareos 25 takes `current` only after `select` (alone it falls back to its menu)
            parts += [f"fileset={fileset}", "select", "current"]
        else:
            raise ValueError("jobid= or current=True")
        if files:
            lines = [" ".join(parts)] + [f"mark {f}" for f in files] + ["done", "yes"]
        else:
            lines = [" ".join(parts + ["all", "done", "yes"])]
        out = self.bconsole(*lines)
        m = re.search(r"Job queued\. JobId=(\d+)", out)
        if not m:
            raise BareosError(f"restore not queued:\n{out}")
        return self.wait_job(int(m.group(1)), timeout=timeout)

    def __enter__(self) -> "Bareos":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our own child) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
