"""Hostile input, host side (no LVM, no loop devices): the odd disks of tests/hostile_disks.py as
image files through the crash-isolated pyparted probe and the partition choice; generated tables
through real libparted (hypothesis); and no shell anywhere in the shipped code.

The same disks go through the whole CLI on real LVM in tests/vm/test_hostile.py.
"""
from __future__ import annotations

import ast
import hashlib
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from domu_snapshot import fsck, partitions
from domu_snapshot.errors import ProbeError
from tests import hostile_disks as hd

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("domu_snapshot", "bareos_plugin", "helpers")
MiB = hd.MiB


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def debugfs_cat(image, offset, name) -> str:
    proc = subprocess.run(["debugfs", "-R", f"cat /{name}", hd.ext_at(image, offset)],
                          capture_output=True, text=True, check=True)
    return proc.stdout


# ------------------------------------------------------------------------ the catalogued disks

@pytest.mark.parametrize("case", sorted(hd.CASES))
def test_hostile_disk_probe_and_choice(tmp_path, case):
    c = hd.CASES[case]
    image = hd.new_image(tmp_path / f"{case}.img", c.size_mib)
    expect = c.build(image)
    before = sha256(image)
    if expect.step == "partition probe":         # libparted dies: only the child, not the caller
        with pytest.raises(ProbeError) as crashed:
            partitions.probe_isolated(str(image))
        assert all(text in crashed.value.message for text in expect.message), crashed.value.message
        assert sha256(image) == before
        return
    probed = partitions.probe_isolated(str(image))
    assert sha256(image) == before, "probing wrote to the disk"
    if c.sector != 512:
        # a 4096-byte-sector table read through 512-byte sectors is no table: never a wrong partition
        assert probed["sector_size"] == 512
        with pytest.raises(ProbeError, match=hd.UNRECOGNISED):
            partitions.choose(probed)
        return
    wanted = expect.options[1] if expect.options[:1] == ("--partition",) else "auto"
    if expect.step == "partition" and case != "fs-larger-than-partition":
        with pytest.raises(ProbeError) as refused:
            partitions.choose(probed, wanted)
        for text in expect.message:
            assert text in refused.value.message
        return
    choice = partitions.choose(probed, wanted)
    superblock = fsck.read_superblock(str(image), choice.offset)
    assert superblock is not None
    if case == "fs-larger-than-partition":       # refused by the core after the choice
        assert (superblock.size, choice.size) == (16 * MiB, 8 * MiB)
        return
    assert superblock.size <= choice.size
    if case == "fsck-unrepairable":              # e2fsck -p gives up: exit 4 (on a copy)
        copy = tmp_path / "copy.img"
        shutil.copyfile(image, copy)
        proc = subprocess.run(["e2fsck", "-p", hd.ext_at(copy, choice.offset)], capture_output=True, text=True)
        assert proc.returncode == 4 and "UNEXPECTED INCONSISTENCY" in proc.stdout + proc.stderr
        return
    assert (choice.number, choice.offset, choice.fs) == (expect.number, expect.offset, expect.fs)
    assert debugfs_cat(image, choice.offset, hd.MARKER) == expect.marker


def test_grown_gpt_keeps_its_backup_where_it_was(tmp_path):
    """parted's fix for a grown disk moves the backup GPT to the end: the disk must stay as it was."""
    image = hd.new_image(tmp_path / "grown.img", 32)
    hd.CASES["grown-gpt"].build(image)
    before = sha256(image)
    for _ in range(2):                       # also with libparted's cache warm in no process
        partitions.choose(partitions.probe_isolated(str(image)))
    assert sha256(image) == before
    assert Path(image).read_bytes()[-MiB:] == bytes(MiB)


# ---------------------------------------------------------------- the core's GPT header check

def _gpt_header(count=128, size=128, header_size=92, crc_ok=True) -> bytes:
    fields = [b"EFI PART", 0x00010000, header_size, 0, 0, 1, 2047, 34, 2014, bytes(16), 2, count, size, 0]
    raw = struct.pack("<8sIIIIQQQQ16sQIII", *fields).ljust(512, b"\0")
    crc = zlib.crc32(raw[:header_size]) & 0xFFFFFFFF
    return raw[:16] + struct.pack("<I", crc ^ (0 if crc_ok else 1)) + raw[20:]


@pytest.mark.parametrize("header, problem", [
    (_gpt_header(), False),
    (_gpt_header(count=32768, size=128), False),                  # 4 MiB of entries: the kernel's bound
    (_gpt_header(count=32769, size=128), True),
    (_gpt_header(count=0x7FFFFFFF), True),
    (_gpt_header(size=256 * MiB), True),
    (_gpt_header(size=64), True),
    (_gpt_header(size=200), True),
    (_gpt_header(count=0x7FFFFFFF, header_size=96), True),        # a longer header is checked too
    (_gpt_header(count=0x7FFFFFFF, crc_ok=False), False),         # libparted ignores it anyway
    (_gpt_header(count=0x7FFFFFFF, header_size=600), False),      # larger than a sector: invalid
])
def test_absurd_gpt_headers_are_refused_before_libparted(tmp_path, header, problem):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(512) + header + bytes(2046 * 512))
    found = partitions._absurd_gpt_header(str(image), 512, 2048)
    assert bool(found) == problem, found


# ----------------------------------------------------- generated tables through real libparted

@pytest.fixture(scope="module")
def ext4_blocks(tmp_path_factory):
    """A 2 MiB ext4 as (offset, 4 KiB block) pairs of its non-zero blocks, to drop into images."""
    image = tmp_path_factory.mktemp("ext4") / "ext4.img"
    hd.new_image(image, 2)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", str(image)], check=True, capture_output=True)
    data = image.read_bytes()
    return [(i, data[i:i + 4096]) for i in range(0, len(data), 4096) if any(data[i:i + 4096])]


SECTORS = 16384                       # 8 MiB disks
# Mostly plausible values with odd ones mixed in, so that many tables get read and many choices
# made (an ext4 of 4096 sectors sits at the start of some partitions).
start = st.one_of(st.sampled_from([2048, 4096, 6144, 8192, 10240, 12288]), st.integers(0, SECTORS + 4096))
length = st.one_of(st.sampled_from([4096, 6144, 8192, 2048, 1, 0]), st.integers(0, SECTORS + 4096))
mbr_part = st.builds(hd.MbrPart, start=start, length=length,
                     ptype=st.sampled_from([0x83, 0x83, 0x83, 0x05, 0x0F, 0x85, 0x82, 0x00, 0xEE, 0x8E]))
# A zero length gives last = first - 1: at first 0 that is LBA 2**64 - 1 as a table stores it.
gpt_part = st.builds(lambda first, n, kind: hd.GptPart(first, (first + n - 1) % 2 ** 64, kind),
                     start, length, st.sampled_from([hd.LINUX_FS, hd.LINUX_FS, hd.LUKS]))
often = lambda usual, *odd: st.one_of(st.just(usual), st.sampled_from(odd))  # noqa: E731


@st.composite
def plausible(draw):
    """(start, length) of 1-3 partitions one after the other, as a partitioning tool makes them."""
    parts, pos = [], 2048
    for _ in range(draw(st.integers(1, 3))):
        size = draw(st.sampled_from([4096, 4096, 6144, 2048]))
        if pos + size > SECTORS - 40:
            break
        parts.append((pos, size))
        pos += size + draw(st.sampled_from([0, 0, 2048]))
    return parts


def _msdos(layout, types):
    return [hd.MbrPart(start, size, ptype) for (start, size), ptype in zip(layout, types)]


def _gpt(layout):
    return [hd.GptPart(start, start + size - 1) for start, size in layout]


table = st.one_of(
    # plausible tables (the odd partition type among them): mostly read, with choices to check
    st.fixed_dictionaries({
        "kind": st.just("msdos"),
        "parts": st.builds(_msdos, plausible(), st.lists(often(0x83, 0x82, 0x07, 0x05, 0x00), min_size=3, max_size=3)),
        "ebrs": st.just([]),
    }),
    st.fixed_dictionaries({
        "kind": st.just("gpt"), "parts": st.builds(_gpt, plausible()), "entries": st.just(128),
        "entry_size": st.just(128), "backup": often(True, False), "grown": often(0, 2048),
    }),
    # anything goes
    st.fixed_dictionaries({
        "kind": st.just("msdos"),
        "parts": st.lists(st.one_of(st.none(), mbr_part, mbr_part), max_size=4),
        # EBR chain: (where the EBR is, relative to the extended start; its logical; its link)
        "ebrs": st.lists(st.tuples(st.sampled_from([0, 0, 2048, 4096, 1]), st.one_of(st.none(), mbr_part),
                                   st.one_of(st.none(), mbr_part)), max_size=3),
    }),
    st.fixed_dictionaries({
        "kind": st.just("gpt"),
        "parts": st.lists(gpt_part, max_size=6),
        "entries": often(128, 1, 4, 129, 1024, 40000, 0x7FFFFFFF, 0),
        "entry_size": often(128, 256, 0, 64, 1000, 256 * MiB),
        "backup": often(True, False),
        "grown": often(0, 2048, 8192),
    }),
)


def _write_table(image, spec) -> list[int]:
    """Write the table; returns the sector numbers where partitions start (for filesystems)."""
    if spec["kind"] == "msdos":
        hd.write_mbr(image, spec["parts"])
        starts = [p.start for p in spec["parts"] if p]
        extended = next((p for p in spec["parts"] if p and p.ptype in (0x05, 0x0F, 0x85)), None)
        if extended is not None:
            for rel, logical, link in spec["ebrs"]:
                where = extended.start + rel
                if where < SECTORS:
                    hd.write_ebr(image, where, logical, link)
                    if logical:
                        starts.append(where + logical.start)
        return starts
    hd.write_gpt(image, spec["parts"], disk_sectors=SECTORS - spec["grown"], entries=spec["entries"],
                 entry_size=spec["entry_size"], backup=spec["backup"])
    return [p.first for p in spec["parts"]]


# derandomize: every run tries the same examples, so a CI run fails only on a change of the code
# (a new search found the gpt_part bug above in the fixture, not in the tool: a red CI for nothing).
@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(spec=table, fs_at=st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True),
       wanted=st.sampled_from(["auto", "auto", "whole", "1", "2", "5"]))
def test_generated_tables_through_libparted(tmp_path, ext4_blocks, spec, fs_at, wanted):
    """Whatever the table: the probe never writes, the choice is a ProbeError or lies inside the
    device on a sector boundary with an ext superblock at its start."""
    image = hd.new_image(tmp_path / "gen.img", SECTORS * 512 // MiB)
    starts = _write_table(image, spec)
    for index in fs_at:                          # ext4 at the start of some partitions
        if index < len(starts) and 0 < starts[index] and (starts[index] * 512 + 2 * MiB) <= SECTORS * 512:
            for offset, block in ext4_blocks:
                hd.put(image, starts[index] * 512 + offset, block)
        _write_table(image, spec)                # the table wins where they overlap
    before = sha256(image)
    try:
        probed = partitions.probe_isolated(str(image), timeout=30)
    except ProbeError as exc:
        probed = None                            # a crash or a hang of the child: the tool's own error
        event(f"probe failed: {exc.message.split(':')[0]}")
    assert sha256(image) == before, "probing wrote to the disk"
    if probed is None:
        return
    try:
        choice = partitions.choose(probed, wanted)
    except ProbeError as exc:
        event(f"{spec['kind']}: no choice ({'table unread' if probed.get('error') else 'none fits'})")
        return
    event(f"{spec['kind']}: {choice.fs} chosen")
    device = probed["length"] * probed["sector_size"]
    assert probed["sector_size"] == 512 and probed["length"] == SECTORS
    assert choice.fs in partitions.EXT_TYPES
    assert 0 <= choice.offset and choice.offset % 512 == 0
    assert 0 < choice.size and choice.offset + choice.size <= device
    assert fsck.read_superblock(str(image), choice.offset) is not None


# ----------------------------------------------------------------------------- no shell, ever

def test_no_shell_true_in_shipped_code():
    proc = subprocess.run(["grep", "-R", "shell=True", *SHIPPED], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout    # 1: no line matched


def _python_files():
    for top in SHIPPED:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and \
                    (path.suffix == ".py" or path.read_bytes()[:64].startswith(b"#!") and b"python" in path.read_bytes()[:64]):
                yield path


def test_no_shell_in_any_form():
    """Beyond the grep: no `shell=` other than False, no os.system/os.popen/commands-style helpers."""
    files = list(_python_files())
    assert any(p.name == "commands.py" for p in files) and any(p.parent.name == "bareos_plugin" for p in files)
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: shell=")
            func = node.func
            name = f"{getattr(func.value, 'id', '')}.{func.attr}" if isinstance(func, ast.Attribute) else ""
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert found == []
