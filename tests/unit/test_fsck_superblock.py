import subprocess

import pytest

from domu_snapshot import fsck


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
