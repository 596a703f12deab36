import os
import shutil
import struct
import subprocess

import pytest

from domu_snapshot import fsck
from domu_snapshot.errors import ProbeError


@pytest.mark.parametrize("fs", ["ext2", "ext3", "ext4"])
def test_superblock_says_which_ext_and_how_big(tmp_path, fs):
    image = tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run([f"mkfs.{fs}", "-q", "-F", str(image)], check=True)
    sb = fsck.read_superblock(str(image))
    assert sb.fs == fs
    assert sb.size == 8 * 1024 * 1024
    assert sb.clean and not sb.needs_recovery and not sb.has_orphans


def test_no_superblock(tmp_path):
    image = tmp_path / "zero.img"
    image.write_bytes(bytes(4096))
    assert fsck.read_superblock(str(image)) is None
    assert fsck.read_superblock(str(tmp_path / "missing")) is None
    assert fsck.read_superblock(str(image), offset=1 << 20) is None


def _losetup_works():
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        return False
    return subprocess.run(["losetup", "--find"], capture_output=True).returncode == 0


@pytest.fixture
def external_journal(tmp_path):
    """(journal image, filesystem image, the journal's loop device rdev): made by mke2fs for real.
    mke2fs -J device= wants a block device: the journal image is on a loop device meanwhile."""
    if not _losetup_works():
        pytest.skip("needs root and a free loop device (the VM test covers it: tests/vm/test_extjournal.py)")
    journal, fs = tmp_path / "journal.img", tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "8M", str(journal)], check=True)
    subprocess.run(["truncate", "-s", "32M", str(fs)], check=True)
    subprocess.run(["mke2fs", "-q", "-F", "-b", "4096", "-O", "journal_dev", str(journal)], check=True)
    device = subprocess.run(["losetup", "--find", "--show", str(journal)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        rdev = os.stat(device).st_rdev
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-J", f"device={device}", str(fs)],
                       check=True)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    return journal, fs, rdev


def test_external_journal_is_seen_and_refused(external_journal):
    journal, fs, rdev = external_journal
    jsb = fsck.read_superblock(str(journal))
    assert jsb.is_journal_device and jsb.uuid
    sb = fsck.read_superblock(str(fs))
    assert sb.fs == "ext4" and not sb.is_journal_device
    assert sb.journal_uuid == jsb.uuid  # what e2fsck asks blkid for
    assert sb.journal_dev == rdev and sb.journal_inum == 0
    assert sb.external_journal
    message, hint = fsck.refusal(sb, "vg/guest partition 1")
    assert "vg/guest partition 1" in message and "external journal" in message
    assert jsb.uuid in message and f"{os.major(rdev)}:{os.minor(rdev)}" in message
    assert "tune2fs" in hint
    message, hint = fsck.refusal(jsb, "vg/journal (whole disk)")
    assert "journal device" in message and jsb.uuid in message and "not a filesystem" in message


def test_replay_never_runs_e2fsck_on_an_external_journal_fs(external_journal, monkeypatch):
    journal, fs, _rdev = external_journal

    def no_command(argv, **kwargs):
        raise AssertionError(f"ran {argv}")

    monkeypatch.setattr(fsck.commands, "run", no_command)
    for image in (fs, journal):
        with pytest.raises(ProbeError):
            fsck.replay(str(image))


def test_internal_journal_is_not_refused(tmp_path):
    image = tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    sb = fsck.read_superblock(str(image))
    assert sb.journal_inum == 8 and not sb.journal_uuid and sb.journal_dev == 0
    assert not sb.external_journal and not sb.is_journal_device
    assert fsck.refusal(sb, "x") is None and fsck.refusal(None, "x") is None


def test_journal_device_number_alone_is_external(tmp_path):
    """The kernel opens s_journal_dev when the journal inode is 0, UUID or not."""
    image = tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    with open(image, "r+b") as handle:
        handle.seek(1024 + 0xE0)
        handle.write(struct.pack("<II", 0, os.makedev(253, 7)))
    sb = fsck.read_superblock(str(image))
    assert sb.external_journal and not sb.journal_uuid
    message, _hint = fsck.refusal(sb, "vg/g (whole disk)")
    assert "external journal (device number 253:7)" in message


def test_superblock_gives_what_fstab_names_a_filesystem_by(tmp_path):
    image = tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "home", "-U", "0d6f2a3e-1b1c-4a53-9b8e-3d8c2f0e7a11", str(image)],
                   check=True)
    sb = fsck.read_superblock(str(image))
    assert (sb.uuid, sb.label) == ("0d6f2a3e-1b1c-4a53-9b8e-3d8c2f0e7a11", "home")
    subprocess.run(["tune2fs", "-L", "exactly16bytes!!", str(image)], check=True, capture_output=True)
    assert fsck.read_superblock(str(image)).label == "exactly16bytes!!"   # no NUL at the end
