"""Partition probing on real image files (pyparted, no LVM needed) and the selection logic."""

import hashlib
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domu_snapshot import fsck, partitions
from domu_snapshot.errors import ProbeError

MiB = 1024 * 1024


def run(*argv):
    subprocess.run(argv, check=True, capture_output=True)


def mkfs_at(image, fs, offset, size):
    """Make a filesystem inside an image file at a byte offset (mke2fs -E offset)."""
    run(f"mkfs.{fs}", "-q", "-F", "-E", f"offset={offset}", str(image), str(size // 1024) + "k")


def mkswap_at(image, offset, size):
    """mkswap into a scratch file, copied in at `offset` (bookworm's mkswap has no --offset)."""
    scratch = image.with_suffix(".swap")
    run("truncate", "-s", str(size), str(scratch))
    run("mkswap", str(scratch))
    with open(image, "r+b") as out:
        out.seek(offset)
        out.write(scratch.read_bytes())
    scratch.unlink()


@pytest.fixture
def old_xen_disk(tmp_path):
    """msdos: ext3 at sector 63, then an extended partition holding swap."""
    image = tmp_path / "xen.img"
    image.write_bytes(b"")
    run("truncate", "-s", "48M", str(image))
    run("parted", "-s", str(image), "unit", "s", "mklabel", "msdos",
        "mkpart", "primary", "ext3", "63s", "61439s",
        "mkpart", "extended", "61440s", "98303s",
        "mkpart", "logical", "linux-swap", "63488s", "98303s")
    mkfs_at(image, "ext3", 63 * 512, (61439 - 63 + 1) * 512)
    return image


@pytest.fixture
def gpt_disk(tmp_path):
    """GPT: BIOS boot, swap, ext4."""
    image = tmp_path / "gpt.img"
    run("truncate", "-s", "48M", str(image))
    run("parted", "-s", str(image), "mklabel", "gpt",
        "mkpart", "bios", "1MiB", "2MiB", "set", "1", "bios_grub", "on",
        "mkpart", "swap", "linux-swap", "2MiB", "10MiB",
        "mkpart", "root", "ext4", "10MiB", "47MiB")
    mkswap_at(image, 2 * MiB, 8 * MiB)
    mkfs_at(image, "ext4", 10 * MiB, 37 * MiB)
    return image


def test_old_xen_layout_picks_ext3_at_sector_63(old_xen_disk):
    probed = partitions.probe_isolated(str(old_xen_disk))
    assert probed["label"] == "msdos"
    kinds = {p["number"]: p["kind"] for p in probed["partitions"]}
    assert kinds == {1: "primary", 2: "extended", 5: "logical"}
    choice = partitions.choose(probed)
    assert (choice.number, choice.fs, choice.offset) == (1, "ext3", 32256)
    assert fsck.read_superblock(str(old_xen_disk), choice.offset).fs == "ext3"


def test_gpt_layout_picks_ext4_after_bios_boot_and_swap(gpt_disk):
    probed = partitions.probe_isolated(str(gpt_disk))
    assert probed["label"] == "gpt"
    choice = partitions.choose(probed)
    assert (choice.number, choice.fs, choice.offset) == (3, "ext4", 10 * MiB)
    assert choice.size == 37 * MiB


def test_explicit_partition_number(gpt_disk):
    probed = partitions.probe_isolated(str(gpt_disk))
    assert partitions.choose(probed, partition="3").offset == 10 * MiB
    with pytest.raises(ProbeError, match="partition 2 holds linux-swap"):
        partitions.choose(probed, partition="2")
    with pytest.raises(ProbeError, match="partition 9 does not exist"):
        partitions.choose(probed, partition="9")


def test_filesystem_on_whole_disk(tmp_path):
    image = tmp_path / "whole.img"
    run("truncate", "-s", "16M", str(image))
    run("mkfs.ext4", "-q", "-F", str(image))
    probed = partitions.probe_isolated(str(image))
    choice = partitions.choose(probed)
    assert (choice.number, choice.offset, choice.size) == (0, 0, 16 * MiB)
    assert partitions.choose(probed, partition="whole").number == 0


def test_swap_only_disk_has_nothing_to_mount(tmp_path):
    image = tmp_path / "swap.img"
    run("truncate", "-s", "16M", str(image))
    run("mkswap", str(image))
    probed = partitions.probe_isolated(str(image))
    with pytest.raises(ProbeError, match="no ext4/ext3 filesystem found"):
        partitions.choose(probed)
    assert partitions.only_swap(probed)


def test_garbage_is_a_clear_error(tmp_path):
    image = tmp_path / "garbage.img"
    image.write_bytes(bytes((i * 7919) % 251 for i in range(1 * MiB)) + bytes(7 * MiB))
    probed = partitions.probe_isolated(str(image))
    with pytest.raises(ProbeError, match="no partition table or filesystem recognised"):
        partitions.choose(probed)
    assert not partitions.only_swap(probed)


def test_grown_gpt_is_read_without_writing(gpt_disk):
    """After growing the LV the GPT backup header is not at the end; parted offers a fix. We refuse it."""
    run("truncate", "-s", "64M", str(gpt_disk))
    before = hashlib.sha256(gpt_disk.read_bytes()).hexdigest()
    probed = partitions.probe_isolated(str(gpt_disk))
    assert partitions.choose(probed).offset == 10 * MiB
    assert hashlib.sha256(gpt_disk.read_bytes()).hexdigest() == before


def test_crashing_probe_is_contained(monkeypatch, tmp_path):
    """A crash of the probe child (as libparted can on a malformed table) fails one guest, not the caller."""
    fake = tmp_path / "python-crash"
    fake.write_text("#!/bin/sh\nkill -SEGV $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(partitions, "_python", lambda: str(fake))
    with pytest.raises(ProbeError, match="crashed \\(SIGSEGV\\)"):
        partitions.probe_isolated("/dev/null")


# ------------------------------------------------------------- the probe child started ahead

def test_a_child_started_ahead_reads_the_same_table_as_a_fresh_one(gpt_disk, old_xen_disk):
    for image in (gpt_disk, old_xen_disk):
        child = partitions.ProbeChild()
        assert child.probe(str(image)) == partitions.probe_isolated(str(image))


def test_a_child_started_ahead_is_isolated_like_a_fresh_one():
    child = partitions.ProbeChild()
    try:
        argv = child._proc.args
        assert argv[1] == "-I" and argv[0] == partitions._python()
    finally:
        child.close()


def test_a_crash_in_a_child_started_ahead_is_contained(monkeypatch, tmp_path):
    fake = tmp_path / "python-crash"
    fake.write_text("#!/bin/sh\nread path\nkill -SEGV $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(partitions, "_python", lambda: str(fake))
    child = partitions.ProbeChild()
    with pytest.raises(ProbeError, match="crashed \\(SIGSEGV\\)"):
        child.probe("/dev/null")


def test_a_child_that_died_before_its_device_came_is_replaced_by_a_fresh_one(gpt_disk):
    child = partitions.ProbeChild()
    child._proc.kill()
    child._proc.wait()
    assert partitions.choose(child.probe(str(gpt_disk))).offset == 10 * MiB


def test_an_unused_child_is_ended(gpt_disk):
    from domu_snapshot.config import Config
    from domu_snapshot.lifecycle import Runner
    runner = Runner(Config())
    runner.warm_up_probe()
    first = runner._spare_probe._proc
    assert partitions.choose(runner._probe(str(gpt_disk), warm_next=True)).offset == 10 * MiB
    assert first.poll() == 0  # used: it probed and exited
    spare = runner._spare_probe._proc  # the next disk's, started while this one was read
    assert spare.poll() is None
    runner.end_spare_probe()
    assert spare.poll() is not None and runner._spare_probe is None


# ------------------------------------------------------------- properties

partition = st.fixed_dictionaries({
    "number": st.integers(min_value=-2, max_value=130),
    "kind": st.sampled_from(["primary", "logical", "extended", "weird"]),
    "start": st.integers(min_value=-10, max_value=2**40),
    "length": st.integers(min_value=-10, max_value=2**40),
    "fs": st.sampled_from([None, "ext2", "ext3", "ext4", "xfs", "btrfs", "linux-swap(v1)", "fat32"]),
})
probe_result = st.fixed_dictionaries({
    "sector_size": st.sampled_from([512, 4096, 0, -1, 1024]),
    "length": st.integers(min_value=-1, max_value=2**34),
    "label": st.sampled_from([None, "msdos", "gpt", "loop", "sun"]),
    "partitions": st.lists(st.one_of(partition, st.none(), st.integers(), st.text(max_size=3)), max_size=8),
    "error": st.sampled_from([None, None, "unrecognised disk label"]),
})


@settings(max_examples=2000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(probed=probe_result, wanted=st.sampled_from(["auto", "whole", "1", "2", "5", "0", "128"]))
def test_choice_is_inside_the_device_or_a_probe_error(probed, wanted):
    try:
        choice = partitions.choose(probed, wanted)
    except ProbeError:
        return
    device_bytes = probed["length"] * probed["sector_size"]
    assert choice.fs in partitions.EXT_TYPES
    assert 0 <= choice.offset < device_bytes
    assert 0 < choice.size and choice.offset + choice.size <= device_bytes
    assert choice.offset % probed["sector_size"] == 0


def test_a_read_error_is_reported_as_the_device_s_not_the_table_s():
    probed = {"sector_size": 512, "length": 131072, "label": None, "partitions": [], "read_error": True,
              "error": "read error on the disk: Input/output error during read on /dev/dm-3"}
    with pytest.raises(partitions.ProbeError) as failed:
        partitions.choose(probed)
    assert failed.value.message == probed["error"] and "dmesg" in failed.value.hint
    assert not partitions.only_swap(probed)


def test_every_filesystem_of_a_disk_and_what_is_left_out(old_xen_disk, gpt_disk):
    """guest_filesystems = all: each partition of `filesystems`, by number, and the rest named."""
    probed = partitions.probe_isolated(str(gpt_disk))
    assert [(c.number, c.fs, c.offset) for c in partitions.choose(probed, "every")] == [(3, "ext4", 10 * MiB)]
    assert partitions.left_out(probed, ["ext4"]) == ["partition 1 (no recognised filesystem)",
                                                      "partition 2 (linux-swap(v1))"]
    assert partitions.left_out(probed, ["ext4"], also={1}) == ["partition 2 (linux-swap(v1))"]
    probed = partitions.probe_isolated(str(old_xen_disk))
    assert [c.number for c in partitions.choose(probed, "every", ["ext4", "ext3"])] == [1]
    assert partitions.choose(probed, "every", ["xfs"]) == []
