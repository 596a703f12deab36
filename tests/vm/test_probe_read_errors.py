"""A guest disk that cannot be read in part (a failing PV, an overflowed snapshot) must fail the
probe. libparted, told to ignore the read error, would go on without the sectors it could not
read: an unreadable EBR hides the logical partitions behind it and the disk looks like swap only,
which the tool reports as SKIPPED with exit 0 - a guest silently left out of the backup.

The failing sectors come from device-mapper's `error` target over a real msdos disk image."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from domu_snapshot import partitions
from domu_snapshot.errors import ProbeError
from tests import guestdisks

pytestmark = pytest.mark.vm

MIB = 2 ** 20
SECTORS = 64 * MIB // 512
EBR = 9 * MIB // 512          # the extended partition starts here; its first sector is the EBR
DM_NAME = "domu-probe-ioerr"


def run(argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def attach(image, offset=0, size=None):
    argv = ["losetup", "--find", "--show", "--offset", str(offset)]
    if size:
        argv += ["--sizelimit", str(size)]
    return run(argv + [str(image)])


@pytest.fixture
def swap_then_logical_ext4():
    """msdos: 1 primary swap, 2 extended, 5 logical ext4: the old-Xen-style layout."""
    image = Path("/run/domu-probe-ioerr.img")       # RAM: /tmp in the VM is an overlay of the host's
    with open(image, "wb") as handle:
        handle.truncate(SECTORS * 512)
    run(["parted", "-s", str(image), "mklabel", "msdos",
         "mkpart", "primary", "linux-swap", "1MiB", "9MiB",
         "mkpart", "extended", "9MiB", "100%",
         "mkpart", "logical", "ext4", "10MiB", "100%"])
    loops = []
    try:
        loops.append(attach(image, 1 * MIB, 8 * MIB))
        run(["mkswap", loops[-1]])
        loops.append(attach(image, 10 * MIB, 54 * MIB))
        run(["mkfs.ext4", "-q", "-F", loops[-1]])
        for device in reversed(loops):
            run(["losetup", "--detach", device])
        loops = [attach(image)]
        yield loops[0]
    finally:
        subprocess.run(["dmsetup", "remove", "--retry", DM_NAME], capture_output=True)
        for device in loops:
            subprocess.run(["losetup", "--detach", device], capture_output=True)
        image.unlink()


def test_unreadable_ebr_fails_the_guest_instead_of_looking_like_swap_only(swap_then_logical_ext4):
    disk = swap_then_logical_ext4
    readable = partitions.probe_isolated(disk)
    assert [(p["number"], p["fs"]) for p in readable["partitions"] if p["kind"] != "extended"] == \
        [(1, "linux-swap(v1)"), (5, "ext4")], readable
    assert partitions.choose(readable).number == 5 and readable["read_error"] is False

    table = (f"0 {EBR} linear {disk} 0\n"
             f"{EBR} 8 error\n"
             f"{EBR + 8} {SECTORS - EBR - 8} linear {disk} {EBR + 8}\n")
    subprocess.run(["dmsetup", "create", DM_NAME], input=table, text=True, check=True, capture_output=True)
    guestdisks.run(["udevadm", "settle", "--timeout=30"], check=False)

    probed = partitions.probe_isolated(f"/dev/mapper/{DM_NAME}")
    assert probed["read_error"] is True and str(probed["error"]).startswith("read error on the disk: "), probed
    assert "Input/output error" in probed["error"], probed
    assert probed["partitions"] == []
    assert not partitions.only_swap(probed)
    with pytest.raises(ProbeError) as failed:
        partitions.choose(probed)
    assert "read error" in failed.value.message and "dmesg" in failed.value.hint
