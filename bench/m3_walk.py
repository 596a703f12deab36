"""Measure 3: the plugin's walk and reads over a guest of 100,000 entries.

The guest: a tree made in RAM in the VM (dirs, files of 0 B to 512 KiB, symlinks, hard links;
deterministic), turned into an ext4 filesystem on an LV with `mkfs.ext4 -d`, prepared once by
the core (snapshot, loop, mount read-only) and read on that mount with warm caches (a warm-up
pass first), so both arms see the same page cache and the comparison isolates per-entry work.

3a. entries/s of the plugin's generator (`disk_entries`, what the plugin hands to the file daemon,
    imported like the file daemon imports the plugin) against a bare walk: os.scandir plus the
    lstat a backup needs of every entry. For reference, also a scandir walk without lstat.
3b. (opt-in, --read-entries N; measure 6 reads through the real bareos-fd instead)
    bytes/s of the harness's in-core reads (tests/fd_harness.py: the plugin's IO_OPEN, the
    stand-in's os.read loop on the returned descriptor, IO_CLOSE; a full plugin backup job
    through the stand-in file daemon over the mounted guest) against `cat` of the same files
    (one cat process, to /dev/null, reading the list several times so that its own start, which
    costs up to a second in the VM, stays small next to the reading). Also for the files of
    64 KiB and more alone (48 files of 512 KiB sit in the part read). The stand-in costs milliseconds per entry in the VM, so the
    job reads only the first top-level directories (--read-entries, about 5,000 entries).
"""

import os
import random
import shutil
import time
from pathlib import Path

from bench.common import PREFIX, BenchError, run
from bench.report import Row, interleaved, median

BLOCK = 4096
CAT_MAX_ARGS = 20000                # paths per cat process (well inside ARG_MAX)
CAT_TARGET_BYTES = 128 * 2 ** 20    # what one cat measurement reads at least (see cat_repeat)
LARGE = 64 * 1024


# ------------------------------------------------------------------ the tree

def file_size(rng):
    x = rng.random()
    if x < 0.02:
        return 0
    if x < 0.80:
        return rng.randint(1, 2048)
    if x < 0.99:
        return rng.randint(2049, 8192)
    if x < 0.999:
        return rng.randint(8193, 65536)
    return rng.randint(128 * 1024, 512 * 1024)


BIG_DIR = "bigfiles"          # sorts first: always in the part the harness job reads
BIG_FILES = 48
BIG_SIZE = 512 * 1024


def plan_tree(entries, seed=7):
    """What build_tree makes for `entries` entries in all (root included): a dict of lists.
    Besides the random sizes, BIG_DIR holds BIG_FILES files of BIG_SIZE (streaming reads)."""
    rng = random.Random(seed)
    big = min(BIG_FILES, max(0, entries // 100))
    top = max(1, min(40, entries // 2500))
    sub = max(1, min(25, entries // (top * 100)))
    dirs = [""] + [f"d{t:02d}" for t in range(top)] + [f"d{t:02d}/s{s:02d}" for t in range(top) for s in range(sub)]
    leaves = dirs[1 + top:] or dirs
    if big:
        dirs.append(BIG_DIR)
    rest = max(0, entries - len(dirs) - big)
    symlinks = rest // 100
    hardlinks = rest // 500
    files = rest - symlinks - hardlinks
    names = [f"{leaves[i % len(leaves)]}/f{i:06d}{('.txt', '.conf', '.so', '', '.log')[i % 5]}".lstrip("/")
             for i in range(files)]
    sizes = [file_size(rng) for _ in range(files)]
    links = [(f"{leaves[i % len(leaves)]}/l{i:05d}".lstrip("/"), f"../../{names[(i * 7919) % files]}" if files else "x")
             for i in range(symlinks)]
    hard = [(f"{leaves[(i + 3) % len(leaves)]}/h{i:05d}".lstrip("/"), names[(i * 104729) % files])
            for i in range(hardlinks if files else 0)]
    big_files = [(f"{BIG_DIR}/big{i:03d}.img", BIG_SIZE) for i in range(big)]
    return {"dirs": dirs, "files": list(zip(names, sizes)) + big_files, "symlinks": links, "hardlinks": hard}


def build_tree(root, plan):
    """Write the planned tree under `root`; returns its summary."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    blob = random.Random(11).randbytes(512 * 1024 + 4096)
    for d in plan["dirs"]:
        (root / d).mkdir(parents=True, exist_ok=True)
    total = blocks = 0
    for i, (name, size) in enumerate(plan["files"]):
        fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if size:
                offset = (i * 4093) % 4096
                os.write(fd, blob[offset:offset + size])
        finally:
            os.close(fd)
        total += size
        blocks += -(-size // BLOCK)
    for name, target in plan["symlinks"]:
        os.symlink(target, root / name)
    for name, target in plan["hardlinks"]:
        os.link(root / target, root / name)
    entries = len(plan["dirs"]) + len(plan["files"]) + len(plan["symlinks"]) + len(plan["hardlinks"])
    return {"entries": entries, "dirs": len(plan["dirs"]), "files": len(plan["files"]),
            "symlinks": len(plan["symlinks"]), "hardlinks": len(plan["hardlinks"]), "bytes": total,
            "blocks": blocks}


def fs_size_mib(summary):
    data = summary["blocks"] * BLOCK + summary["dirs"] * 4 * BLOCK
    inodes = summary["entries"] * 256
    return int((data * 1.25 + inodes * 1.5) / 2 ** 20) + 96


# ------------------------------------------------------------------ the arms

def bare_walk(top):
    """os.scandir over every directory, lstat of every entry (what a backup needs); entries."""
    os.lstat(top)
    count = 1
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                entry.stat(follow_symlinks=False)
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


def names_walk(top):
    """os.scandir only (file types from the directory entries, no lstat); entries."""
    count = 1
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


def plugin_walk(plugin, top):
    """The plugin's generator over `top`; entries (and problems reported, which should be none)."""
    problems = []
    stats = plugin.GuestStats()
    count = 0
    for _entry in plugin.disk_entries(top, 1, stats, lambda level, text: problems.append(text)):
        count += 1
    if problems:
        raise BenchError(f"the plugin reported problems walking {top}: {problems[:3]}")
    return count


def timed(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


def _timed_daemon_class():
    from tests import fd_harness

    class TimedDaemon(fd_harness.FileDaemon):
        """The stand-in file daemon, timing its per-file reading of data (IO_OPEN, in-core reads,
        IO_CLOSE: FileDaemon._read_data) and dropping the data once counted."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.read_s = self.large_read_s = 0.0
            self.read_bytes = self.large_bytes = self.read_files = 0
            self.read_names = []
            self.in_plugin = {}      # entry point -> seconds spent inside the plugin
            self._reading = False
            self.plugin_in_read_s = 0.0

        def _call(self, name, *args):
            started = time.perf_counter()
            try:
                return super()._call(name, *args)
            finally:
                seconds = time.perf_counter() - started
                self.in_plugin[name] = self.in_plugin.get(name, 0.0) + seconds
                if self._reading:
                    self.plugin_in_read_s += seconds

        def _read_data(self, record, *rest):
            # IO_OPEN, the in-core reads and IO_CLOSE only (what cat's open/read/close compares
            # with); the harness's own descriptor check and get_acl/get_xattr come after it
            started = time.perf_counter()
            self._reading = True
            try:
                opened = super()._read_data(record, *rest)
            finally:
                self._reading = False
            seconds = time.perf_counter() - started
            data = record.data
            if data is not None:
                self.read_s += seconds
                self.read_bytes += len(data)
                self.read_files += 1
                self.read_names.append(record.fname)
                if len(data) >= LARGE:
                    self.large_read_s += seconds
                    self.large_bytes += len(data)
                record.data = b""
            return opened

    return TimedDaemon


def harness_backup(ctx, trees):
    """A full plugin backup job through the stand-in, the core's Runner replaced by the harness's
    DirRunner over directories of the already mounted guest (one "disk" each), so every job reads
    the same warm mount."""
    from domu_snapshot import lifecycle
    from tests import fd_harness

    guest = fd_harness.FakeGuest(name=f"{PREFIX}big", trees=list(trees))
    definition = fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), mount_root=ctx.mount_root, quiesce="none")
    daemon = _timed_daemon_class()(definition)
    real = lifecycle.Runner
    lifecycle.Runner = lambda cfg, log=None, owner="": fd_harness.DirRunner(cfg, log, [guest])
    started = time.perf_counter()
    try:
        result = daemon.backup()
    finally:
        lifecycle.Runner = real
    seconds = time.perf_counter() - started
    if result.status != "T":
        raise BenchError(f"harness backup ended {result.status}: {result.job.errors[:3]}")
    return seconds, daemon, len(result.records)


def cat_repeat(total_bytes, files, target=CAT_TARGET_BYTES, max_args=CAT_MAX_ARGS):
    """How many times one cat reads the list, so that its own start is a small part of its time
    (process starts cost ~0.5-1 s in the VM) without an argument list beyond `max_args` paths."""
    if not files or not total_bytes:
        return 1
    return int(max(1, min(-(-target // total_bytes), max_args // files)))


def cat_files(names, env, repeat=1):
    """One `cat` (argument lists of at most CAT_MAX_ARGS paths) reading `names` `repeat` times
    to /dev/null; seconds."""
    import subprocess
    paths = list(names) * repeat
    started = time.perf_counter()
    for i in range(0, len(paths), CAT_MAX_ARGS):
        proc = subprocess.run(["cat", "--", *paths[i:i + CAT_MAX_ARGS]], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if proc.returncode != 0:
            raise BenchError(f"cat failed: {proc.stderr.decode(errors='replace')[-500:]}")
    return time.perf_counter() - started


# ------------------------------------------------------------------ the measure

def run_measure(ctx, opts, vg_name):
    from domu_snapshot.config import load_config
    from domu_snapshot.lifecycle import Runner
    from tests import fd_harness, guestdisks

    from domu_snapshot.bareos import walk as plugin
    tree = ctx.work / "tree"
    t0 = time.perf_counter()
    made = build_tree(tree, plan_tree(opts.files))
    t_tree = time.perf_counter() - t0
    size = fs_size_mib(made)
    ctx.log(f"m3: tree of {made['entries']} entries ({made['files']} files, {made['bytes'] / 2 ** 20:.0f} MiB)"
            f" made in {t_tree:.0f} s; ext4 of {size} MiB")
    pv_mib = int(size * 1.2) + 64
    gvg = guestdisks.GuestVG(vg_name, size_mib=pv_mib).create()
    details = {"tree": made, "tree_build_s": t_tree, "fs_mib": size}
    try:
        lv = f"{PREFIX}big"
        guestdisks.run(["lvcreate", "-q", "-y", "-n", lv, "-L", f"{size}M", vg_name])
        t0 = time.perf_counter()
        run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-N", str(int(made["entries"] * 1.1) + 1024),
             "-d", str(tree), f"/dev/{vg_name}/{lv}"])
        details["mkfs_s"] = time.perf_counter() - t0
        shutil.rmtree(tree)
        ctx.log(f"m3: mkfs.ext4 -d took {details['mkfs_s']:.0f} s")
        cfg = load_config(None, {"vgs": [vg_name], "mount_root": ctx.mount_root, "quiesce": "none",
                                 "syslog": False})
        runner = Runner(cfg)
        guest = runner.discover([lv])[0]
        prepared = runner.prepare(guest)
        if not prepared.ok or not prepared.disks or not prepared.disks[0].mounted:
            raise BenchError(f"m3: could not prepare {lv}: {prepared.error}")
        top = prepared.disks[0].mount_path
        try:
            details.update(_measure_on(ctx, opts, plugin, top))
        finally:
            report = runner.teardown([guest])[0]
            if not report.ok:
                raise BenchError(f"m3: teardown failed: {report.error}")
    finally:
        if tree.exists():
            shutil.rmtree(tree)
        guestdisks.destroy_vg(vg_name, gvg.workdir, expected_lvs={f"{PREFIX}big"})
    line = summary(details)
    if line:
        details["summary_notes"] = [line]
    return _rows(opts, details), details


def regular_files(tops):
    """Every regular file with data, as the harness job reads them: each of `tops` is a disk of its
    own there (the plugin gives each disk its own st_dev), so hard links count once per top."""
    names = []
    for top in tops:
        seen = set()
        stack = [top]
        while stack:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if st.st_size and st.st_ino not in seen:
                            seen.add(st.st_ino)
                            names.append((entry.path, st.st_size))
    return names


def read_subset(top, entries):
    """The first top-level directories of the guest holding about `entries` entries in all: the
    stand-in file daemon costs milliseconds per entry in the VM, so its job reads a part."""
    chosen, count = [], 0
    for name in sorted(os.listdir(top)):
        path = os.path.join(top, name)
        if not os.path.isdir(path) or os.path.islink(path) or name == "lost+found":
            continue
        chosen.append(path)
        count += names_walk(path)
        if count >= entries:
            break
    return chosen, count


def _measure_on(ctx, opts, plugin, top):
    env = ctx.env()
    ctx.log("m3: warm-up walk (cold cache)")
    warm_walk = timed(bare_walk, top)
    # the harness arm is opt-in (--read-entries N): measure 6 reads through the real bareos-fd
    trees, subset_entries = read_subset(top, opts.read_entries) if opts.read_entries > 0 else ([], 0)
    files = regular_files(trees)
    names = [name for name, _size in files]
    large = [name for name, size in files if size >= LARGE]
    warm_cat = cat_files(names, env)
    total = sum(size for _name, size in files)
    large_total = sum(size for _name, size in files if size >= LARGE)
    repeat, large_repeat = cat_repeat(total, len(names)), cat_repeat(large_total, len(large))
    out = {"entries_walked": warm_walk[1], "warm_up": {"bare_walk_s": warm_walk[0], "cat_s": warm_cat},
           "cat_repeat": repeat, "cat_large_repeat": large_repeat,
           "read_trees": [os.path.relpath(t, top) for t in trees], "read_entries": subset_entries,
           "files_read": len(names), "bytes_read": total, "large_files": len(large), "large_bytes": large_total,
           "walk": {"bare": [], "plugin": [], "names": []},
           "read": {"harness_read_s": [], "harness_job_s": [], "cat_s": [], "harness_large_s": [],
                    "cat_large_s": [], "plugin_in_read_s": [], "plugin_entry_points_s": []}}
    ctx.log(f"m3: warm-up done ({warm_walk[0]:.0f} s walk); reads on {subset_entries} entries "
            f"({len(names)} files with data, {out['bytes_read'] / 2 ** 20:.1f} MiB) in {', '.join(out['read_trees'])}")
    records = None
    for arm in interleaved(["bare", "plugin"], opts.walk_reps):
        seconds, count = timed(bare_walk, top) if arm == "bare" else timed(plugin_walk, plugin, top)
        if count != warm_walk[1]:
            raise BenchError(f"m3: the {arm} walk saw {count} entries, the first walk {warm_walk[1]}")
        out["walk"][arm].append(seconds)
        ctx.log(f"m3: walk {arm}: {count / seconds:,.0f} entries/s ({seconds:.1f} s)")
    seconds, count = timed(names_walk, top)
    out["walk"]["names"].append(seconds)
    for arm in interleaved(["harness", "cat"], opts.read_reps if trees else 0):
        if arm == "harness":
            seconds, daemon, records = harness_backup(ctx, trees)
            if daemon.read_bytes != out["bytes_read"] or daemon.read_files != out["files_read"]:
                raise BenchError(f"m3: the harness read {daemon.read_files} files, {daemon.read_bytes} bytes; "
                                 f"the tree has {out['files_read']}, {out['bytes_read']}")
            out["read"]["harness_job_s"].append(seconds)
            out["read"]["harness_read_s"].append(daemon.read_s)
            out["read"]["harness_large_s"].append(daemon.large_read_s)
            out["read"]["plugin_in_read_s"].append(daemon.plugin_in_read_s)
            out["read"]["plugin_entry_points_s"].append(daemon.in_plugin)
            rate = daemon.read_bytes / daemon.read_s / 2 ** 20
        else:
            # seconds per pass over the files (one cat reads the list `repeat` times)
            seconds = cat_files(names, env, repeat) / repeat
            out["read"]["cat_s"].append(seconds)
            out["read"]["cat_large_s"].append(cat_files(large, env, large_repeat) / large_repeat if large else None)
            rate = out["bytes_read"] / seconds / 2 ** 20
        ctx.log(f"m3: read {arm}: {rate:.2f} MiB/s" + (f" (whole harness job {seconds:.0f} s)" if arm == "harness" else ""))
    out["harness_records"] = records
    return out


def summary(d):
    """One line for RESULTS.md: what an entry costs in the walk and in the stand-in's whole job."""
    try:
        walk = median(d["walk"]["plugin"]) / d["entries_walked"]
        job = median(d["read"]["harness_job_s"]) / d["read_entries"]
        per_file = median(d["read"]["harness_read_s"]) / d["files_read"]
        in_plugin = median(d["read"]["plugin_in_read_s"]) / d["files_read"]
        cat = median(d["read"]["cat_s"]) / d["files_read"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return (f"3: per entry, the plugin's generator takes {walk * 1e3:.2f} ms and the stand-in file daemon's "
            f"whole job {job * 1e3:.1f} ms; per file read, the harness takes {per_file * 1e3:.2f} ms "
            f"({in_plugin * 1e3:.2f} ms of it inside plugin_io: IO_OPEN/IO_CLOSE and the stand-in's packet "
            f"checks) and cat {cat * 1e3:.2f} ms.")


def _rows(opts, d):
    n = d["entries_walked"]
    walk = d["walk"]
    rate = {arm: (n / median(walk[arm]) if walk[arm] else None) for arm in walk}
    read = d["read"]
    mib = 2 ** 20
    h_rate = d["bytes_read"] / median(read["harness_read_s"]) / mib if read["harness_read_s"] else None
    c_rate = d["bytes_read"] / median(read["cat_s"]) / mib if read["cat_s"] else None
    hl = d["large_bytes"] / median(read["harness_large_s"]) / mib if read["harness_large_s"] and d["large_bytes"] else None
    cl = d["large_bytes"] / median(read["cat_large_s"]) / mib if read["cat_large_s"] and d["large_bytes"] else None
    job = median(read["harness_job_s"])
    in_plugin = median(read["plugin_in_read_s"])
    share = f"; {100 * in_plugin / median(read['harness_read_s']):.0f}% of it inside the plugin's plugin_io" \
        if in_plugin is not None and read["harness_read_s"] else ""
    walk_rows = [
        Row("3", f"walk of {n:,} entries: plugin generator vs os.scandir + lstat", "entries/s",
            rate["plugin"], rate["bare"], target=">= 0.9",
            note=f"median of {opts.walk_reps} each, warm cache").finish(),
        Row("3", "  (reference) plugin generator vs os.scandir without lstat", "entries/s",
            rate["plugin"], rate["names"], note="1 run; no stat at all: less than a backup needs").finish(),
    ]
    if not read["harness_read_s"]:
        return walk_rows
    return walk_rows + [
        Row("3", f"in-core reads, {d['files_read']:,} files, {d['bytes_read'] / mib:.1f} MiB: harness vs cat",
            "MiB/s", h_rate, c_rate, target=">= 0.9",
            note=f"median of {opts.read_reps}; harness per file: IO_OPEN + reads + IO_CLOSE{share}; one cat "
                 f"reads the list {d.get('cat_repeat', 1)}x"
                 + (f"; whole harness job {job:.0f} s" if job else "")).finish(),
        Row("3", f"  files >= 64 KiB only ({d['large_files']} files, {d['large_bytes'] / mib:.1f} MiB)",
            "MiB/s", hl, cl, note=f"same runs; one cat reads them {d.get('cat_large_repeat', 1)}x").finish(),
    ]
