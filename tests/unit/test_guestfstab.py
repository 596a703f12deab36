"""guestfstab.py: the guest's /etc/fstab read without following a symlink or blocking on a FIFO
and within a bound, parsed as mount(8) reads it, resolved only to the disk's own filesystems,
and its mount points placed only on real directories of the guest's tree."""

import os

import pytest

from domu_snapshot import guestfstab
from domu_snapshot.mount import Mounted


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def test_reads_a_regular_fstab(tmp_path):
    write(tmp_path / "etc/fstab", "UUID=abc / ext4 defaults 0 1\n")
    assert guestfstab.read(str(tmp_path)) == "UUID=abc / ext4 defaults 0 1\n"


def test_no_fstab_no_etc(tmp_path):
    assert guestfstab.read(str(tmp_path)) is None
    (tmp_path / "etc").mkdir()
    assert guestfstab.read(str(tmp_path)) is None


def test_a_symlinked_fstab_or_etc_is_not_followed(tmp_path):
    outside = tmp_path / "host-fstab"
    outside.write_text("/dev/sda1 / ext4 defaults 0 1\n")
    guest = tmp_path / "guest"
    (guest / "etc").mkdir(parents=True)
    os.symlink(outside, guest / "etc/fstab")
    assert guestfstab.read(str(guest)) is None
    other = tmp_path / "other"
    write(other / "etc/fstab", "x / ext4\n")
    (tmp_path / "guest2").mkdir()
    os.symlink(other / "etc", tmp_path / "guest2/etc")
    assert guestfstab.read(str(tmp_path / "guest2")) is None


def test_a_fifo_named_fstab_neither_blocks_nor_is_read(tmp_path):
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc/fstab")
    assert guestfstab.read(str(tmp_path)) is None


def test_a_huge_fstab_is_refused(tmp_path):
    write(tmp_path / "etc/fstab", "#" * (guestfstab.FSTAB_MAX + 1))
    with pytest.raises(guestfstab.FstabError, match="more than 65536"):
        guestfstab.read(str(tmp_path))


def test_parse_keeps_disk_filesystems_and_unescapes_mount_points():
    text = ("# comment\n"
            "UUID=1 / ext4 errors=remount-ro 0 1\n"
            "LABEL=data /srv/my\\040data xfs defaults 0 2   # trailing comment\n"
            "/dev/mapper/vg-swap none swap sw 0 0\n"
            "proc /proc proc defaults 0 0\n"
            "tmpfs /tmp tmpfs defaults 0 0\n"
            "/srv/a /var/a none bind 0 0\n"
            "server:/export /mnt/nfs nfs defaults 0 0\n"
            "broken-line\n"
            "UUID=2 relative ext4 defaults 0 2\n"
            "UUID=3 //var//log/ ext4\n")
    entries = guestfstab.parse(text)
    assert [(e.spec, e.mount_point, e.line) for e in entries] == [
        ("UUID=1", "/", 2), ("LABEL=data", "/srv/my data", 3), ("UUID=3", "/var/log", 11)]


def test_parse_is_bounded():
    text = "".join(f"UUID={n} /m{n} ext4\n" for n in range(500))
    assert len(guestfstab.parse(text)) == guestfstab.ENTRIES_MAX


ROOT = Mounted("/m/part1", "partition 1", fs="ext4", uuid="2f1c0d6e-6f4c-4d8e-9a51-0c6a3b1e7d01", label="root")
HOME = Mounted("/m/lvm/deb-vg/home", "LV deb-vg/home", fs="ext4", uuid="aa", label="home", guest_lv=("deb-vg", "home"))
TWIN = Mounted("/m/part3", "partition 3", fs="ext4", uuid="bb", label="home")


@pytest.mark.parametrize("spec, found", [
    ("UUID=2F1C0D6E-6F4C-4D8E-9A51-0C6A3B1E7D01", ROOT),
    ("/dev/disk/by-uuid/2f1c0d6e-6f4c-4d8e-9a51-0c6a3b1e7d01", ROOT),
    ('LABEL="root"', ROOT),
    ("/dev/disk/by-label/root", ROOT),
    ("/dev/mapper/deb--vg-home", HOME),
    ("/dev/deb-vg/home", HOME),
    ("/dev/mapper/deb-vg-home", None),      # not how device-mapper spells it
    ("LABEL=home", None),                    # two filesystems carry it: neither is chosen
    ("PARTUUID=1234-01", None),
    ("/dev/vda1", None),
    ("UUID=", None),
])
def test_resolve_only_to_the_disks_own_filesystems(spec, found):
    assert guestfstab.resolve(spec, [ROOT, HOME, TWIN]) is found


PART1 = Mounted("/m/part1", "partition 1", fs="ext4", uuid="cc", partition=1)
PART5 = Mounted("/m/part5", "partition 5", fs="ext4", uuid="dd", partition=5)


@pytest.mark.parametrize("spec, one_disk, found", [
    ("/dev/vda1", True, PART1), ("/dev/sda5", True, PART5), ("/dev/xvda5", True, PART5), ("/dev/hda1", True, PART1),
    ("/dev/vda1", False, None),   # a guest of several disks: which is its vda is not known here
    ("/dev/vdb1", True, None), ("/dev/vda2", True, None), ("/dev/vda01", True, None), ("/dev/vda", True, None),
])
def test_a_partition_device_name_resolves_only_on_a_guest_of_one_disk(spec, one_disk, found):
    assert guestfstab.resolve(spec, [PART1, PART5, HOME], one_disk) is found


def test_looks_like_disk():
    assert guestfstab.looks_like_disk("/dev/vdb1") and guestfstab.looks_like_disk("PARTUUID=1")
    assert not guestfstab.looks_like_disk("server:/export")


def test_target_is_a_real_directory_of_the_tree(tmp_path):
    (tmp_path / "var/log").mkdir(parents=True)
    assert guestfstab.target(str(tmp_path), "/var/log") == str(tmp_path / "var/log")
    assert guestfstab.target(str(tmp_path), "/") == str(tmp_path)
    os.symlink("/etc", tmp_path / "srv")
    with pytest.raises(ValueError, match="/srv is a symlink"):
        guestfstab.target(str(tmp_path), "/srv")
    with pytest.raises(ValueError, match="/srv is a symlink"):
        guestfstab.target(str(tmp_path), "/srv/x")
    with pytest.raises(ValueError, match="/home is not in the guest's tree"):
        guestfstab.target(str(tmp_path), "/home")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        guestfstab.target(str(tmp_path), "/file")
    with pytest.raises(ValueError, match="leaves the guest's tree"):
        guestfstab.target(str(tmp_path), "/var/../..")
    with pytest.raises(ValueError, match="components"):
        guestfstab.target(str(tmp_path), "/a" * 17)
