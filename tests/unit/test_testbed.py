"""Host checks of the test bed's pure parts: fixture layouts and trees, the VM runner's plumbing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import guestdisks, junitsum, vmbed
from tests.guestdisks import LAYOUTS, MiB, SECTOR


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_regions_fit_the_disk(name):
    lay = LAYOUTS[name]
    total = lay.default_mib * MiB // SECTOR
    fs, swaps = lay.regions(total)
    regions = ([fs] if fs else []) + swaps
    assert regions, "a layout holds something"
    for start, end in regions:
        assert 0 <= start <= end < total
    regions.sort()
    for (_, end), (start, _) in zip(regions, regions[1:]):
        assert end < start, "regions overlap"
    if lay.label == "gpt":
        assert max(e for _, e in regions) <= total - 34, "backup GPT needs the last 33 sectors"
    if lay.fstype:
        assert (fs[0] * SECTOR == 0) == (lay.partition is None)


def test_standard_layouts_have_the_offsets_of_issue_2():
    def offset(name):
        lay = LAYOUTS[name]
        return lay.regions(lay.default_mib * MiB // SECTOR)[0][0] * SECTOR
    assert offset("msdos-ext3-63") == 32256
    assert offset("msdos-ext4-1m") == 1 * MiB
    assert offset("whole-ext4") == 0
    assert LAYOUTS["gpt-ext4"].partition == 3 and LAYOUTS["swap"].fstype is None


def test_expected_tree_covers_the_required_kinds():
    tree = guestdisks.expected_tree("s")
    kinds = {e["type"] for e in tree.values()}
    assert kinds == {"dir", "file", "symlink"}
    targets = [e["target"] for e in tree.values() if e["type"] == "symlink"]
    assert any(t.startswith("/") for t in targets) and any(t.startswith("..") for t in targets)
    assert any(" " in p for p in tree) and any(not p.isascii() for p in tree)
    assert any(e.get("hardlink") for e in tree.values())
    assert any(e["type"] == "file" and e["size"] == 0 for e in tree.values())
    assert any(e["type"] == "file" and e["size"] >= 100 * 1024 for e in tree.values())
    assert any(e["uid"] == 1000 for e in tree.values())
    links = sum(1 for e in tree.values() if e.get("hardlink")) - 1
    assert len({e["mtime"] for e in tree.values()}) == len(tree) - links, "distinct mtimes"
    assert guestdisks.expected_tree("s") == tree and guestdisks.expected_tree("t") != tree


def test_populate_and_compare_tree(tmp_path):
    expected = guestdisks.populate(tmp_path, "seed")
    assert guestdisks.compare_tree(tmp_path, expected) == []
    os.utime(tmp_path / "etc/hostname", (1, 1))
    (tmp_path / "var/cache/empty-dir").rmdir()
    assert guestdisks.compare_tree(tmp_path, expected) == [
        "missing: var/cache/empty-dir", "etc/hostname: mtime 1, expected %d" % expected["etc/hostname"]["mtime"],
        "var/cache: mtime %d, expected %d" % (int(os.stat(tmp_path / "var/cache").st_mtime), expected["var/cache"]["mtime"])]


def test_find_kernel_skips_cloud_kernels(monkeypatch):
    monkeypatch.setattr(vmbed.glob, "glob", lambda pattern: [
        "/boot/vmlinuz-6.1.0-9-cloud-amd64", "/boot/vmlinuz-6.1.0-10-amd64", "/boot/vmlinuz-6.1.0-9-amd64"])
    monkeypatch.setattr(vmbed.os.path, "isdir", lambda p: True)
    assert vmbed.find_kernel() == "/boot/vmlinuz-6.1.0-10-amd64"


def test_runner_passes_argv_and_env_without_a_shell(tmp_path, monkeypatch):
    """The command and environment reach vm_inside.sh through NUL-separated files; run the
    inside script here with a fake environment to check the round trip and the exit-code file."""
    monkeypatch.setenv("DOMU_EXAMPLE", "a b;c")
    cmd = [sys.executable, "-c", "import os, sys; print(sys.argv[1:], os.environ['DOMU_EXAMPLE']); sys.exit(7)",
           "x y", "$HOME", "'q'"]
    (tmp_path / "command").write_bytes(b"".join(a.encode() + b"\0" for a in cmd))
    (tmp_path / "env").write_bytes(b"DOMU_EXAMPLE=a b;c\0")
    script = vmbed.INSIDE_SCRIPT.read_text()
    # Drop the kernel/udev set-up: it needs the VM.
    body = script[:script.index("for mod in")] + script[script.index('read -r uptime'):]
    (tmp_path / "inside.sh").write_text(body)
    p = subprocess.run(["bash", str(tmp_path / "inside.sh"), str(tmp_path), str(vmbed.REPO)],
                       capture_output=True, text=True)
    assert p.returncode == 7
    assert "['x y', '$HOME', \"'q'\"] a b;c" in p.stdout
    assert (tmp_path / "exit-code").read_text().strip() == "7"


def test_run_in_vm_without_exit_code_file_is_a_failure(tmp_path, monkeypatch):
    """vng "succeeds" but the VM never booted: booted once more, then reported as a failure."""
    monkeypatch.setattr(vmbed, "find_kernel", lambda: "/boot/vmlinuz-test-amd64")
    monkeypatch.setattr(vmbed, "vng_argv", lambda *a, **k: ["echo", "attempt"])
    res = vmbed.run_in_vm(["whatever"], run_dir=tmp_path / "run", kvm=False, out=open(os.devnull, "w"))
    assert res.exit_code == vmbed.EXIT_NOT_RUN and not res.ran and "did not run" in res.message
    assert (tmp_path / "run/console.log").read_text() == "attempt\nattempt\n"


def test_run_in_vm_never_reruns_a_command_that_started(tmp_path, monkeypatch):
    """The command started (vm_inside.sh's marker) but wrote no exit code: one boot, a failure."""
    monkeypatch.setattr(vmbed, "find_kernel", lambda: "/boot/vmlinuz-test-amd64")
    started = tmp_path / "run" / "started"
    monkeypatch.setattr(vmbed, "vng_argv", lambda *a, **k: ["sh", "-c", f"echo attempt; touch {started}"])
    res = vmbed.run_in_vm(["whatever"], run_dir=tmp_path / "run", kvm=False, out=open(os.devnull, "w"))
    assert res.exit_code == vmbed.EXIT_NOT_RUN
    assert (tmp_path / "run/console.log").read_text() == "attempt\n"


def test_run_in_vm_timeout_kills_the_vm(tmp_path, monkeypatch):
    monkeypatch.setattr(vmbed, "find_kernel", lambda: "/boot/vmlinuz-test-amd64")
    monkeypatch.setattr(vmbed, "vng_argv", lambda *a, **k: ["sleep", "60"])
    res = vmbed.run_in_vm(["whatever"], run_dir=tmp_path / "run", kvm=False, timeout=1,
                          out=open(os.devnull, "w"))
    assert res.exit_code == vmbed.EXIT_TIMEOUT and res.seconds < 30


def test_junit_summary(tmp_path, capsys):
    xml = tmp_path / "a.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="5" failures="1" errors="0" skipped="0" '
                   'time="2.0"/></testsuites>')
    assert junitsum.main([f"host={xml}", f"vm={tmp_path / 'missing.xml'}"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "host: 4 passed, 1 failed, 0 skipped in 2s"
    assert lines[-1] == "total: 4 passed, 2 failed"
