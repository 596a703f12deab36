"""Measure 6: one guest backed up by a real Bareos 25, plugin mode against helpers mode.

The daemons are those of the vm suite (tests/bareos_bed.py: director, storage daemon, bareos-fd
with python3-fd, a PostgreSQL catalog, on loopback), configured from etc/bareos/*.conf with only
the `# EDIT` lines replaced, the plugin installed by `make install-plugin`. The guest is the tree
of measure 3 (bench/m3_walk.py plan_tree: small files, 48 files of 512 KiB, symlinks, hard links)
in an ext4 on an LV of a VG of its own.

Arms, run interleaved (ABBA), each a whole Bareos job as bconsole `run` starts it:
- plugin: the example Job domu-snapshot-plugin (the plugin snapshots, mounts, reads and tears
  down the guest inside the job);
- helpers: the example Job domu-snapshot-helpers (RunScript `foreach-domu mount`, a native
  FileSet over the mount root, RunScript `foreach-domu unmount`).
Both prepare and tear down inside the job, so the job time holds the same steps in each mode.
First an untimed Full of each mode (--bareos-warmup): the first job of a fresh Bareos labels its
volume, and the first plugin job imports the core into bareos-fd's Python.

6a. a Full: files/s (JobFiles) and MiB/s (JobBytes) over the job's time;
6b. an Incremental right after, nothing changed in the guest: entries checked per second (the
    Full's JobFiles over the Incremental's time; Accurate is on in both examples).
The time of a job is Bareos's own (EndTime - StartTime of the catalog, the job log's "Elapsed
time", whole seconds): what an admin sees. The wall time from bconsole `run` to the job's
"Termination:" line in the Messages file (read from the file, not by polling the director, which
would load the VM's two CPUs) is kept in the details; it adds the director's own start and end of
a job, alike in both modes.
"""

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from bench import m3_walk
from bench.common import PREFIX, BenchError, run
from bench.report import Row, interleaved, median

ARMS = ("plugin", "helpers")
JOBS = {"plugin": "domu-snapshot-plugin", "helpers": "domu-snapshot-helpers"}
LV = f"{PREFIX}bareos"


def _config(path, vg, mount_root):
    path.write_text(f"[domu-snapshot]\nprefix = {PREFIX}\nvg = {vg}\nmount_root = {mount_root}\n"
                    "quiesce = none\nsyslog = no\n")
    return path


def _foreach_script(work, staged):
    """`foreach-domu` as a host has it: on the system Python, importing the staged copy of the
    core (the one the other measures run), whatever PYTHONPATH bareos-fd passes on."""
    if not staged:
        found = shutil.which("foreach-domu")
        return found or str(Path(__file__).resolve().parent.parent / "helpers" / "foreach-domu")
    script = Path(work) / "foreach-domu"
    script.write_text(f"#!{staged['python']}\nimport sys\nsys.path.insert(0, {staged['pythonpath']!r})\n"
                      "from domu_snapshot.cli import foreach_main\nsys.exit(foreach_main())\n")
    script.chmod(0o755)
    return str(script)


def timed_job(bed, arm, level, timeout=3600):
    """Run one job and wait for its Termination line; returns its figures."""
    started = time.perf_counter()
    jobid = bed.run_job(JOBS[arm], level=level)
    deadline = time.monotonic() + timeout
    while not re.search(r"^\s*Termination:", bed.joblog(jobid), re.M):
        if time.monotonic() > deadline:
            raise BenchError(f"m6: {arm} {level} job {jobid} not ended after {timeout} s:\n{bed.joblog(jobid)[-3000:]}")
        time.sleep(0.25)
    seconds = time.perf_counter() - started
    st = bed.wait_job(jobid, poll=1)
    if st["status"] != "T" or st["termination"] != "Backup OK":
        raise BenchError(f"m6: {arm} {level} job {jobid} ended {st['status']} {st['termination']!r}, "
                         f"{st['errors']} errors:\n{st['log'][-3000:]}")
    rec = st["record"]
    elapsed = _catalog_time(rec.get("endtime")) - _catalog_time(rec.get("starttime"))
    return {"arm": arm, "level": level, "jobid": jobid, "seconds": elapsed, "wall_s": seconds,
            "files": st["files"], "bytes": st["bytes"], "fd_files": st["fd_files"],
            "steps": _step_seconds(arm, st["log"])}


def _catalog_time(text):
    """Seconds since the epoch of a catalog time ("2026-12-04 19:08:00", local time)."""
    if not text:
        raise BenchError("m6: the job's catalog record has no StartTime/EndTime")
    return time.mktime(time.strptime(text.strip()[:19], "%Y-%m-%d %H:%M:%S"))


def _step_seconds(arm, log):
    """What the job log says the domu-snapshot steps took: the plugin's per-guest line (prepare,
    walk, teardown), the helpers' `mount` and `unmount` lines."""
    if arm == "plugin":
        found = re.findall(r"domu-snapshot: guest .*?, ([\d.]+) s\s*$", log, re.M)
        return {"guest_s": float(found[-1])} if found else {}
    out = {}
    for key, script in (("mount_s", "ClientBeforeJob"), ("unmount_s", "ClientAfterJob")):
        found = re.findall(rf"{script}: .*?\(([\d.]+)s\)\s*$", log, re.M)
        if found:
            out[key] = float(found[-1])
    return out


@contextlib.contextmanager
def bareos_with_guest(scratch, staged, vg_name, entries, log):
    """A guest LV of `entries` entries (the tree of measure 3) in a VG of its own and a started
    Bareos bed whose example Jobs back it up; yields (bed, details). Everything is removed after."""
    from tests import bareos_bed, guestdisks

    work = Path(tempfile.mkdtemp(prefix="dsbench-bareos-", dir="/tmp"))
    os.chmod(work, 0o755)                 # the catalog below it runs as user postgres
    foreach = _foreach_script(work, staged)
    tree = Path(scratch) / "tree6"
    made = m3_walk.build_tree(tree, m3_walk.plan_tree(entries))
    size = m3_walk.fs_size_mib(made)
    gvg = guestdisks.GuestVG(vg_name, size_mib=int(size * 1.6) + 64).create()
    details = {"tree": made, "fs_mib": size, "runs": []}
    bed = None
    try:
        guestdisks.run(["lvcreate", "-q", "-y", "-n", LV, "-L", f"{size}M", vg_name])
        run(["mkfs.ext4", "-q", "-F", "-b", str(m3_walk.BLOCK), "-N", str(int(made["entries"] * 1.1) + 1024),
             "-d", str(tree), f"/dev/{vg_name}/{LV}"])
        shutil.rmtree(tree)
        log(f"m6: guest {LV}: {made['entries']} entries, {made['bytes'] / 2 ** 20:.0f} MiB, ext4 of {size} MiB")
        # equal-length roots: the catalog's paths cost the same in both modes
        plugin_root, helpers_root = work / "pmnt", work / "hmnt"
        plugin_conf = _config(work / "plugin.conf", vg_name, plugin_root)
        helpers_conf = _config(work / "helpers.conf", vg_name, helpers_root)
        bed = bareos_bed.Bareos(
            work / "bareos", plugin_values={"mount_root": str(plugin_root), "guest LV prefix": PREFIX},
            helpers_values={"mount_root": str(helpers_root), "foreach-domu": f"{foreach} --config {helpers_conf}"},
            fd_env={"DOMU_SNAPSHOT_CONFIG": str(plugin_conf)}, log=log)
        bed.start()
        details["bareos"] = {"origin": bed.inst.origin, "start_s": sum(bed.timings.values())}
        # the plugin's core compiled once, as a package install leaves it (the helpers' copy is too)
        run([staged["python"] if staged else "python3", "-m", "compileall", "-q", str(bed.plugin_dir)])
        yield bed, details
    finally:
        if bed is not None:
            bed.stop()
        if helpers_root_mounted(work):
            run([foreach, "--config", str(work / "helpers.conf"), "unmount"], check=False)
        if tree.exists():
            shutil.rmtree(tree)
        try:
            guestdisks.destroy_vg(vg_name, gvg.workdir, expected_lvs={LV})
        finally:
            shutil.rmtree(work, ignore_errors=True)


def run_measure(ctx, opts, vg_name):
    with bareos_with_guest(ctx.work, ctx.staged, vg_name, opts.bareos_files, ctx.log) as (bed, details):
        # untimed: the first job of a fresh Bareos labels the volume and the first plugin job
        # imports the core into bareos-fd's Python; a host's nightly jobs pay neither
        for _ in range(opts.bareos_warmup):
            for arm in ARMS:
                res = timed_job(bed, arm, "Full")
                details.setdefault("warmup", []).append(res)
                ctx.log(f"m6: warm-up {arm} Full: {res['seconds']:.0f} s (not counted)")
        for level in ("Full", "Incremental"):
            for arm in interleaved(list(ARMS), opts.bareos_reps):
                res = timed_job(bed, arm, level)
                details["runs"].append(res)
                ctx.log(f"m6: {arm} {level}: {res['seconds']:.0f} s (wall {res['wall_s']:.1f} s; {res['steps']}), "
                        f"{res['files']} files, {(res['bytes'] or 0) / 2 ** 20:.1f} MiB (job {res['jobid']})")
    return rows(opts, details), details


def helpers_root_mounted(work):
    root = f"{work}/hmnt"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        return any(line.split()[4].startswith(root + "/") for line in handle)


STEPS = ("guest_s", "mount_s", "unmount_s")


def figures(details):
    """Per arm and level: median seconds, files and bytes of the jobs, and of the steps the job
    logs timed (None where a job did not log them)."""
    out = {}
    for res in details["runs"]:
        slot = out.setdefault((res["arm"], res["level"]), {k: [] for k in ("seconds", "files", "bytes") + STEPS})
        for key in ("seconds", "files", "bytes"):
            slot[key].append(res[key])
        for key in STEPS:
            slot[key].append(res.get("steps", {}).get(key))
    return {key: {k: median(v) for k, v in slot.items()} | {"n": len(slot["seconds"])} for key, slot in out.items()}


def _steps_note(p, h):
    """Where the time of the two modes' jobs went, from their logs."""
    if p.get("guest_s") is None or h.get("mount_s") is None or h.get("unmount_s") is None:
        return ""
    return (f"; the plugin's guest took {p['guest_s']:.1f} s in its job (prepare, walk and reads, teardown), "
            f"helpers mount {h['mount_s']:.1f} s + unmount {h['unmount_s']:.1f} s around a native walk "
            f"of about {max(0.0, h['seconds'] - h['mount_s'] - h['unmount_s']):.0f} s")


def rows(opts, details):
    f = figures(details)
    mib = 2 ** 20
    p, h = f[("plugin", "Full")], f[("helpers", "Full")]
    pi, hi = f.get(("plugin", "Incremental")), f.get(("helpers", "Incremental"))
    n = p["n"]
    out = [
        Row("6", f"Full of 1 guest ({details['tree']['entries']:,} entries) on real Bareos 25: plugin vs helpers mode",
            "files/s", p["files"] / p["seconds"], h["files"] / h["seconds"], target=">= 0.95",
            note=f"median of {n} jobs each, whole job (prepare, read, teardown); plugin {p['seconds']:.0f} s for "
                 f"{p['files']:,.0f} files, helpers {h['seconds']:.0f} s for {h['files']:,.0f}"
                 + _steps_note(p, h)).finish(),
        Row("6", "  the same Fulls in MiB/s (JobBytes)", "MiB/s", p["bytes"] / p["seconds"] / mib,
            h["bytes"] / h["seconds"] / mib, target=">= 0.95",
            note=f"plugin {p['bytes'] / mib:.1f} MiB (HardLinks = yes), helpers {h['bytes'] / mib:.1f} MiB "
                 "(the example FileSet keeps Bareos's HardLinks = no: hard-linked data twice)").finish(),
    ]
    if pi and hi:
        out.append(Row("6", "Incremental, nothing changed: entries checked/s, plugin vs helpers mode", "entries/s",
                       p["files"] / pi["seconds"], h["files"] / hi["seconds"], target=">= 0.95",
                       note=f"median of {pi['n']} jobs each, Accurate on; plugin {pi['seconds']:.0f} s "
                            f"({pi['files']:.0f} files sent), helpers {hi['seconds']:.0f} s "
                            f"({hi['files']:.0f} files sent)" + _steps_note(pi, hi)).finish())
    return out
