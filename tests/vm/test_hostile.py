"""Hostile and broken input on real LVM (issue 6): odd partition tables and filesystems, odd names,
untrusted guest content. Disks are built by tests/hostile_disks.py; the tool is driven through its
CLI as a user would, and the plugin through the fd harness. Every case asserts its own outcome (the
filesystem mounted: partition, offset, the content of its marker file; or the guest's error: guest
name, step, reason), that no traceback was printed, that nothing is left (no snapshot, loop device,
mount or directory) and, where the tool could have written, that the origin is byte for byte as
built.

Runtime: the table and filesystem cases share one VG and one `list`, one `mount` per option set
and one `unmount --all`; the guest-content and many-files cases build their filesystems once per
module.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import fd_harness, guestdisks
from tests import hostile_disks as hd
from tests.fd_harness import FileDaemon, bareosfd

pytestmark = pytest.mark.vm

VG = "domuhostile"
PREFIX = "domu-h-"
ROOT = "/tmp/domu hostile mnt"          # a space on purpose
WORK = Path("/run/domu-hostile")         # RAM; /tmp in the VM is an overlay of the host's /tmp
TABLE_CASES = sorted(name for name, case in hd.CASES.items() if case.sector == 512
                     and name in os.environ.get("DOMU_HOSTILE_CASES", name).split(","))


def cli(*args, vg=VG, root=ROOT, env=None, timeout=900):
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--vg", vg, "--mount-root", root,
            "--quiesce", "none", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def findmnt(target):
    proc = subprocess.run(["findmnt", "--json", "--mountpoint", target, "-o", "TARGET,SOURCE,FSTYPE,OPTIONS"],
                          capture_output=True, text=True)
    return json.loads(proc.stdout)["filesystems"][0] if proc.returncode == 0 else None


def loop_info(device):
    rows = json.loads(guestdisks.out(["losetup", "--json", "--list", "-O", "NAME,OFFSET,SIZELIMIT,LOG-SEC"]))
    row = next(r for r in rows["loopdevices"] if r["name"] == device)
    return int(row["offset"]), int(row["sizelimit"]), int(row["log-sec"])


def root_entries(root=ROOT):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return found


def assert_nothing_left(gvg, root=ROOT):
    assert gvg.leftovers() == []
    assert root_entries(root) == []


def guest_line(proc, name):
    """What the CLI says about guest `name`: its OK line (stdout) or FAILED entry (stderr) up to
    the time taken - a command's own message can span lines (e2fsck's does) - or its SKIPPED line."""
    timed = re.compile(rf"^((?:error: )?(?:OK|FAILED) +{re.escape(name)}: .*?)  \(\d+\.\ds\)$", re.M | re.S)
    skipped = re.compile(rf"^(warning: SKIPPED {re.escape(name)}: .*)$", re.M)
    found = [m.group(1) for text in (proc.stdout, proc.stderr)
             for pattern in (timed, skipped) for m in pattern.finditer(text)]
    assert len(found) == 1, f"{name}: {found}\n{proc.stdout}{proc.stderr}"
    return found[0]


def cleanup_if_needed(gvg):
    """After a failed test: the tool's own cleanup, so that the VG can go."""
    if gvg.leftovers() or root_entries():
        cli("cleanup", vg=gvg.vg)


def statvfs_flags(path):
    flags = os.statvfs(path).f_flag
    return {name for name in ("ST_RDONLY", "ST_NOSUID", "ST_NODEV", "ST_NOEXEC") if flags & getattr(os, name)}


@pytest.fixture(scope="module")
def hvg():
    WORK.mkdir(parents=True, exist_ok=True)
    gvg = guestdisks.GuestVG(VG, size_mib=1024).create()
    yield gvg
    cleanup_if_needed(gvg)
    left = gvg.destroy()
    assert left == [], f"left on VG {VG}: {left}"


# ------------------------------------------------------------ partition tables and filesystems

@pytest.fixture(scope="module")
def table_run(hvg):
    """Every 512-byte-sector case of hostile_disks.CASES as a guest of its own; one `mount` per
    option set, a look at each mount while it is there, `unmount --all`. (`list` reads the same
    tables through a read-only loop device of the origin: test_table_on_4096_byte_sectors runs it,
    where it matters; tests/unit/test_hostile_host.py probes every case's image.)"""
    images = WORK / "images"
    images.mkdir(parents=True, exist_ok=True)
    guests, expect = {}, {}
    started = time.monotonic()
    for case in TABLE_CASES:
        image = hd.new_image(images / f"{case}.img", hd.CASES[case].size_mib)
        expect[case] = hd.CASES[case].build(image)
    timings = {"images": time.monotonic() - started}
    for case in TABLE_CASES:
        guests[case] = hd.add_image(hvg, PREFIX + case, images / f"{case}.img", expect[case])
    timings["LVs"] = time.monotonic() - started - timings["images"]
    run = {"expect": expect, "guests": guests, "mounted": {}, "timings": timings}

    t0 = time.monotonic()
    groups = {}
    for case in TABLE_CASES:
        groups.setdefault(expect[case].options, []).append(PREFIX + case)
    run["mount"] = {}
    for options, names in groups.items():
        proc = cli(*options, "mount", *names)
        for name in names:
            run["mount"][name] = (proc, guest_line(proc, name))
    timings["mount"] = time.monotonic() - t0

    for case in TABLE_CASES:
        target = os.path.join(ROOT, VG, PREFIX + case)
        mounted = findmnt(target)
        seen = {"findmnt": mounted}
        if mounted:
            seen["loop"] = loop_info(mounted["source"])
            seen["statvfs"] = statvfs_flags(target)
            marker = Path(target, hd.MARKER)
            seen["marker"] = marker.read_text() if marker.exists() else None
        if case == "grown-gpt":
            # parted's "fix" of a grown GPT writes a backup header at the end: the snapshot's tail
            # must still be what the origin holds there (zeros)
            with open(f"/dev/{VG}/{PREFIX}{case}-dsnap", "rb") as snap:
                snap.seek(-hd.MiB, os.SEEK_END)
                seen["snapshot tail"] = snap.read(hd.MiB)
        run["mounted"][case] = seen
    run["status"] = json.loads(cli("status", "--json").stdout)

    t0 = time.monotonic()
    run["unmount"] = cli("unmount", "--all")
    timings["unmount"] = time.monotonic() - t0
    run["left"] = hvg.leftovers()
    run["root entries"] = root_entries()
    t0 = time.monotonic()
    run["unchanged"] = {case: guests[case].unchanged() for case in TABLE_CASES}
    timings["compare origins"] = time.monotonic() - t0
    yield run
    for case in TABLE_CASES:
        hvg.remove_guest(PREFIX + case)
    shutil.rmtree(images)
    print(f"\nhostile table cases: {', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}")


@pytest.mark.parametrize("case", TABLE_CASES)
def test_table_and_filesystem_case(table_run, case):
    expect = table_run["expect"][case]
    name = PREFIX + case
    proc, line = table_run["mount"][name]
    seen = table_run["mounted"][case]
    if expect.mounts:
        assert line.startswith("OK      "), line
        assert f"{expect.fs} at byte {expect.offset}" in line, line
        assert seen["findmnt"] is not None, line
        assert seen["findmnt"]["target"] == os.path.join(ROOT, VG, name)
        assert seen["findmnt"]["fstype"] == expect.fs
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(seen["findmnt"]["options"].split(","))
        assert seen["statvfs"] == {"ST_RDONLY", "ST_NOSUID", "ST_NODEV", "ST_NOEXEC"}
        assert seen["loop"][0] == expect.offset
        assert seen["marker"] == expect.marker      # the right filesystem, not just one
        assert seen["findmnt"]["target"] in [m["mount_path"] for m in table_run["status"]["mounted"]]
    else:
        assert line.startswith(f"error: FAILED  {name}: {expect.step} failed: "), line
        for text in expect.message:
            assert text in line, line
        assert " -- " in line, f"no hint of what to do: {line}"
        assert proc.returncode == 1
        assert seen["findmnt"] is None
    if case == "grown-gpt":
        assert seen["snapshot tail"] == bytes(hd.MiB), "the GPT of the snapshot was 'fixed' (written)"
    # after `unmount --all`: nothing of any case is left, and no origin was written
    assert table_run["unmount"].returncode == 0, table_run["unmount"].stderr
    assert table_run["left"] == [] and table_run["root entries"] == []
    assert table_run["status"]["leftovers"] == []
    assert table_run["unchanged"][case], f"the origin LV of {case} changed"


def test_table_on_4096_byte_sectors(tmp_path):
    """A VG on a PV with 4096-byte logical sectors: the GPT's LBAs count 4 KiB sectors."""
    vg = "domuhostile4k"
    gvg = hd.SectorVG(vg, size_mib=128, sector_size=4096).create()
    try:
        image = hd.new_image(WORK / "gpt-4k.img", hd.CASES["gpt-4k"].size_mib)
        expect = hd.CASES["gpt-4k"].build(image)
        g = hd.add_image(gvg, "domu-4k", image, expect)
        assert hd.logical_sector_size(gvg.pv_loop) == 4096
        assert hd.logical_sector_size(g.lv_path) == 4096
        proc = cli("list", "--json", vg=vg)
        (row,) = json.loads(proc.stdout)
        assert (row["partition"], row["offset"], row["fs"]) == (1, 256 * 4096, "ext4"), row
        proc = cli("mount", "domu-4k", vg=vg)
        assert proc.returncode == 0, proc.stderr
        assert "partition 1 (gpt), ext4 at byte 1048576" in guest_line(proc, "domu-4k")
        target = os.path.join(ROOT, vg, "domu-4k")
        mounted = findmnt(target)
        assert mounted is not None and mounted["fstype"] == "ext4"
        offset, _size, log_sec = loop_info(mounted["source"])
        assert (offset, log_sec) == (1048576, 4096)
        assert Path(target, hd.MARKER).read_text() == expect.marker
        proc = cli("unmount", "--all", vg=vg)
        assert proc.returncode == 0, proc.stderr
        assert_nothing_left(gvg)
        assert g.unchanged()
    finally:
        cleanup_if_needed(gvg)
        left = gvg.destroy()
        (WORK / "gpt-4k.img").unlink(missing_ok=True)
    assert left == []


# ------------------------------------------------------------------------------------ names

NAMES_VG = "vg-domu+t.1_x"                  # device-mapper doubles the hyphen: vg--domu+t.1_x
ODD_LV = "domu-a+b.c_d-e"


@pytest.fixture(scope="module")
def names_vg():
    WORK.mkdir(parents=True, exist_ok=True)
    gvg = guestdisks.GuestVG(NAMES_VG, size_mib=128).create()
    markers = {}
    try:
        for lv in (ODD_LV, "domu-web", "domu-web2"):
            image = hd.new_image(WORK / f"names-{lv}.img", 8)
            markers[lv] = f"guest {lv}\n"
            hd.mkfs_ext(image, 0, 8 * hd.MiB, marker=markers[lv])
            hd.add_image(gvg, lv, image, hd.Expect(0, 0, "ext4", markers[lv]))
        yield gvg, markers
    finally:
        cleanup_if_needed(gvg)
        left = gvg.destroy()
        for lv in markers:
            (WORK / f"names-{lv}.img").unlink(missing_ok=True)
    assert left == []


def test_vg_and_lv_names_with_hyphen_plus_dot_underscore(names_vg):
    gvg, markers = names_vg
    proc = cli("mount", ODD_LV, vg=NAMES_VG)
    assert proc.returncode == 0, proc.stderr
    target = os.path.join(ROOT, NAMES_VG, ODD_LV)      # the mount root has a space in it
    assert guest_line(proc, ODD_LV).endswith(f"-> {target}")
    assert findmnt(target)["target"] == target
    assert Path(target, hd.MARKER).read_text() == markers[ODD_LV]
    # device-mapper's name of the snapshot doubles every hyphen of both names
    assert os.path.exists("/dev/mapper/vg--domu+t.1_x-domu--a+b.c_d--e--dsnap")
    status = json.loads(cli("status", "--json", vg=NAMES_VG).stdout)
    assert [(m["mount_path"], m["snapshot"]) for m in status["mounted"]] == \
        [(target, f"{NAMES_VG}/{ODD_LV}-dsnap")]
    assert status["leftovers"] == []
    proc = cli("unmount", ODD_LV, vg=NAMES_VG)
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(gvg)
    assert all(g.unchanged() for g in gvg.guests.values())


def test_guest_name_that_is_a_prefix_of_another(names_vg):
    gvg, markers = names_vg
    web, web2 = (os.path.join(ROOT, NAMES_VG, lv) for lv in ("domu-web", "domu-web2"))
    assert cli("mount", "domu-we", vg=NAMES_VG).returncode == 2     # no guest by prefix
    proc = cli("mount", "domu-web", vg=NAMES_VG)
    assert proc.returncode == 0, proc.stderr
    assert findmnt(web) is not None and findmnt(web2) is None
    assert [lv["lv_name"] for lv in gvg.lvs() if lv["lv_name"].endswith("-dsnap")] == ["domu-web-dsnap"]
    proc = cli("mount", "domu-web2", vg=NAMES_VG)
    assert proc.returncode == 0, proc.stderr
    proc = cli("unmount", "domu-web", vg=NAMES_VG)
    assert proc.returncode == 0, proc.stderr
    # domu-web2 is untouched by the teardown of domu-web
    assert findmnt(web) is None and not os.path.exists(web)
    assert findmnt(web2) is not None
    assert Path(web2, hd.MARKER).read_text() == markers["domu-web2"]
    assert [lv["lv_name"] for lv in gvg.lvs() if lv["lv_name"].endswith("-dsnap")] == ["domu-web2-dsnap"]
    proc = cli("unmount", "domu-web2", vg=NAMES_VG)
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(gvg)


# ---------------------------------------------------------------------------- guest content

CONTENT_MARKER = "hostile content\n"


@pytest.fixture(scope="module")
def content_guest(hvg):
    src = WORK / "content-src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    pv = os.stat(hvg.pv_loop).st_rdev              # a block device node pointing at the host's PV
    content = hd.hostile_content(src, (os.major(pv), os.minor(pv)))
    image = hd.new_image(WORK / "content.img", 32)
    expect = hd.content_image(image, src, CONTENT_MARKER)
    shutil.rmtree(src)
    g = hd.add_image(hvg, PREFIX + "content", image, expect)
    yield g, content
    hvg.remove_guest(g.lv)
    image.unlink()


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_guest_content_is_inert_through_the_mount(hvg, content_guest):
    g, content = content_guest
    shadow = _sha("/etc/shadow")
    proc = cli("mount", g.lv)
    assert proc.returncode == 0, proc.stderr
    root = os.path.join(ROOT, VG, g.lv)
    try:
        assert statvfs_flags(root) == {"ST_RDONLY", "ST_NOSUID", "ST_NODEV", "ST_NOEXEC"}
        for rel in content.setuid + content.scripts:
            st = os.lstat(os.path.join(root, rel))
            assert st.st_mode & 0o111, rel                     # the guest made it executable ...
            with pytest.raises(PermissionError):                # ... and noexec stops it
                subprocess.run([os.path.join(root, rel)], capture_output=True)
        assert os.lstat(os.path.join(root, "bin/suid-id")).st_mode & stat.S_ISUID
        assert not os.path.exists("/tmp/hostile-guest-ran")
        for rel in content.devices:                             # nodev: no device behind the nodes
            st = os.lstat(os.path.join(root, rel))
            assert stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            with pytest.raises(OSError) as refused:
                os.close(os.open(os.path.join(root, rel), os.O_RDONLY | os.O_NONBLOCK))
            assert refused.value.errno in (errno.EACCES, errno.ENXIO, errno.EPERM), rel
        for rel, target in content.symlinks.items():            # symlinks are what the guest wrote
            assert os.readlink(os.path.join(root, rel)) == target
        assert Path(root, "etc/shadow").read_bytes() == content.file_data["etc/shadow"]
        names = set(os.listdir(os.fsencode(os.path.join(root, "names"))))
        assert {os.path.basename(b) for b in content.bad_names} <= names
        assert "new\nline.txt" in os.listdir(os.path.join(root, "names"))
        with pytest.raises(OSError) as refused:
            open(os.path.join(root, "names", "new-file"), "w")
        assert refused.value.errno == errno.EROFS
    finally:
        proc = cli("unmount", g.lv)
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(hvg)
    assert g.unchanged()
    assert _sha("/etc/shadow") == shadow


def test_plugin_never_follows_guest_symlinks(hvg, content_guest, tmp_path):
    g, content = content_guest
    mount_root = tmp_path / "plugin mnt"
    definition = fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), mount_root=str(mount_root), vg=VG, prefix=PREFIX,
        include=g.lv, quiesce="none")
    shadow = _sha("/etc/shadow")
    old = os.environ.get("DOMU_SNAPSHOT_CONFIG")
    os.environ["DOMU_SNAPSHOT_CONFIG"] = "/nonexistent/domu-snapshot.conf"
    try:
        fd = FileDaemon(definition)
        result = fd.backup()
    finally:
        if old is None:
            os.environ.pop("DOMU_SNAPSHOT_CONFIG")
        else:
            os.environ["DOMU_SNAPSHOT_CONFIG"] = old
    assert result.job.fatal == [], result.job.messages
    assert result.status == "W"                     # the names that are not UTF-8 are errors
    root = os.path.join(str(mount_root), VG, g.lv)
    by_rel = {}
    for record in result.records:
        assert record.fname == root or record.fname.startswith(root + "/"), record.fname
        by_rel[os.path.relpath(record.fname, root) if record.fname != root else ""] = record
    expected = dict(content.saved, **{hd.MARKER: "file", "lost+found": "dir"})
    file_data = dict(content.file_data, **{hd.MARKER: CONTENT_MARKER.encode()})
    assert sorted(by_rel) == sorted(expected)
    kinds = {"dir": bareosfd.FT_DIREND, "symlink": bareosfd.FT_LNK, "fifo": bareosfd.FT_SPEC}
    for rel, kind in expected.items():
        record = by_rel[rel]
        if kind == "file":
            assert record.type == bareosfd.FT_REG and record.data == file_data[rel], rel
        else:
            assert record.type == kinds[kind], rel
        if kind == "symlink":
            assert record.link == content.symlinks[rel] and record.data is None, rel
    assert by_rel["etc/shadow"].data == content.file_data["etc/shadow"]
    for rel in content.setuid:
        assert by_rel[rel].stat["st_mode"] & (stat.S_ISUID | stat.S_ISGID)
    # device nodes: not saved, and said so; names that are not UTF-8: each reported with its bytes
    warnings = " ".join(result.job.texts(bareosfd.M_WARNING))
    assert f"{len(content.devices)} entries not saved (device node" in warnings, warnings
    errors = result.job.errors
    for bad in content.bad_names:
        assert any(repr(os.path.join(os.fsencode(root), bad))[2:-1] in e or repr(bad)[2:-1] in e
                   for e in errors), (bad, errors)
    assert len(errors) == len(content.bad_names), errors
    assert hvg.leftovers() == [] and not os.path.exists(mount_root / VG)

    # the restore writes only below `where`; symlinks come back as symlinks, pointing where they did
    where = tmp_path / "restore"
    job, _statuses = fd.restore(result.records, str(where))
    assert job.fatal == [], job.messages
    restored = Path(f"{where}{root}")
    for rel, target in content.symlinks.items():
        assert os.readlink(restored / rel) == target, rel
    assert (restored / "etc/shadow").read_bytes() == content.file_data["etc/shadow"]
    assert _sha("/etc/shadow") == shadow
    assert not os.path.exists("/tmp/hostile-guest-ran")


# ------------------------------------------------------- a crafted directory graph (issue 13)

EVIL_DIR = "\x01dir\x1b[2J\nOK      forged line"     # sorts first; an escape sequence, a new line


def _plugin_backup(mount_root, lv):
    definition = fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), mount_root=str(mount_root), vg=VG, prefix=PREFIX,
        include=lv, quiesce="none")
    old = os.environ.get("DOMU_SNAPSHOT_CONFIG")
    os.environ["DOMU_SNAPSHOT_CONFIG"] = "/nonexistent/domu-snapshot.conf"
    try:
        return FileDaemon(definition).backup()
    finally:
        if old is None:
            os.environ.pop("DOMU_SNAPSHOT_CONFIG")
        else:
            os.environ["DOMU_SNAPSHOT_CONFIG"] = old


@pytest.fixture(scope="module")
def relinked_guest(hvg):
    """ext4 whose directory EVIL_DIR/sub has a second name, z/again (a directory hard link: only
    debugfs can make one; the kernel never does). Left clean, so no e2fsck runs that could undo it."""
    src = WORK / "relinked-src"
    if src.exists():
        shutil.rmtree(src)
    (src / EVIL_DIR / "sub").mkdir(parents=True)
    (src / EVIL_DIR / "sub" / "data.txt").write_text("saved once\n")
    (src / "z").mkdir()
    image = hd.new_image(WORK / "relinked.img", 32)
    expect = hd.content_image(image, src, CONTENT_MARKER)
    shutil.rmtree(src)
    fs = hd.ext_at(image, expect.offset)
    # the inode of EVIL_DIR/sub, by the name debugfs can be given (no control characters in it)
    listing = subprocess.run(["debugfs", "-R", "ls -l /", fs], capture_output=True, text=True, check=True).stdout
    evil_ino = next(int(line.split()[0]) for line in listing.splitlines() if "forged line" in line)
    sub = subprocess.run(["debugfs", "-R", f"ls -l <{evil_ino}>", fs], capture_output=True, text=True,
                         check=True).stdout
    sub_ino = next(int(line.split()[0]) for line in sub.splitlines() if line.split()[-1:] == ["sub"])
    subprocess.run(["debugfs", "-w", "-R", f"link <{sub_ino}> /z/again", fs], capture_output=True, check=True)
    check = subprocess.run(["debugfs", "-R", "ls -l /z/again", fs], capture_output=True, text=True, check=True)
    assert "data.txt" in check.stdout, check.stdout + check.stderr
    g = hd.add_image(hvg, PREFIX + "relinked", image, expect)
    yield g
    hvg.remove_guest(g.lv)
    image.unlink()


def test_plugin_saves_a_relinked_directory_once_and_escapes_guest_names(hvg, relinked_guest, tmp_path):
    g = relinked_guest
    mount_root = tmp_path / "plugin mnt"
    result = _plugin_backup(mount_root, g.lv)
    assert result.job.fatal == [], result.job.messages
    root = os.path.join(str(mount_root), VG, g.lv)
    saved = sorted(os.path.relpath(r.fname, root) for r in result.records if r.fname.startswith(root))
    assert saved == sorted([".", hd.MARKER, "lost+found", EVIL_DIR, f"{EVIL_DIR}/sub",
                            f"{EVIL_DIR}/sub/data.txt", "z"]), saved
    assert result.status == "W"                              # an error was reported, the job went on
    (relinked,) = [t for t in result.job.errors if "another link to the directory" in t]
    assert f"{root}/z/again" in relinked and "\\x01dir\\x1b[2J\\nOK      forged line/sub" in relinked
    for mtype, text in result.job.messages:                  # no message carries a raw control character
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f]", text) and text.count("\n") <= 1, (mtype, text)
    assert hvg.leftovers() == [] and not os.path.exists(mount_root / VG)
    assert g.unchanged()


# ------------------------------------------------------------------ many files, deep trees

@pytest.fixture(scope="module")
def big_guest(hvg):
    t0 = time.monotonic()
    lv = PREFIX + "big"
    tree = hd.make_big_tree_lv(hvg, lv, WORK / "big-mnt")
    built = time.monotonic() - t0
    t0 = time.monotonic()
    proc = cli("mount", lv)
    assert proc.returncode == 0, proc.stderr
    mounted = time.monotonic() - t0
    from domu_snapshot.bareos import walk as plugin
    yield tree, os.path.join(ROOT, VG, lv), plugin
    t0 = time.monotonic()
    proc = cli("unmount", lv)
    print(f"\nbig guest: built {built:.0f}s, mount {mounted:.0f}s, unmount {time.monotonic() - t0:.0f}s")
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(hvg)
    hvg.remove_guest(lv)


def _walk(plugin, root):
    """The plugin's own walker over a mounted guest (what it hands to the file daemon)."""
    stats = plugin.GuestStats()
    problems = []
    entries = list(plugin.disk_entries(root, 1, stats, lambda level, text: problems.append(text)))
    return entries, stats, problems


def test_100000_small_files(big_guest):
    tree, root, plugin = big_guest
    t0 = time.monotonic()
    entries, stats, problems = _walk(plugin, os.path.join(root, "many"))
    seconds = time.monotonic() - t0
    print(f"\nwalked {len(entries)} entries in {seconds:.1f}s")
    assert problems == []
    files = [e for e in entries if e.ftype == bareosfd.FT_REG]
    dirs = [e for e in entries if e.ftype == bareosfd.FT_DIREND]
    assert len(files) == tree.files and len(dirs) == tree.files // tree.per_dir + 1
    assert len(entries) == stats.entries == len(files) + len(dirs)
    assert stats.bytes == tree.files * 8
    assert sorted(os.path.relpath(e.path, root) for e in files) == \
        sorted(tree.file_name(n) for n in range(tree.files))
    for n in range(0, tree.files, 997):                 # a sample of the content, through the mount
        assert Path(root, tree.file_name(n)).read_bytes() == tree.data(n)


def test_200_levels_deep(big_guest):
    tree, root, plugin = big_guest
    entries, stats, problems = _walk(plugin, os.path.join(root, "deep"))
    assert problems == []
    paths = [os.path.relpath(e.path, root) for e in entries]
    deepest = tree.deep_dir
    assert deepest.count("/") == tree.depth
    assert paths[0] == f"{deepest}/bottom.txt"          # contents first, then each directory
    assert paths[1:] == [deepest.rsplit("/", i)[0] for i in range(tree.depth + 1)]
    assert Path(root, deepest, "bottom.txt").read_bytes() == b"200 levels down\n"
