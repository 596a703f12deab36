"""Host checks of the test bed's pure parts: fixture layouts and trees, the VM runner's plumbing."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

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
    res = vmbed.run_in_vm(["whatever"], run_dir=tmp_path / "run", kvm=False, out=open(os.devnull, "w"),
                          pyimages=False)
    assert res.exit_code == vmbed.EXIT_NOT_RUN and not res.ran and "did not run" in res.message
    assert (tmp_path / "run/console.log").read_text() == "attempt\nattempt\n"


def test_run_in_vm_never_reruns_a_command_that_started(tmp_path, monkeypatch):
    """The command started (vm_inside.sh's marker) but wrote no exit code: one boot, a failure."""
    monkeypatch.setattr(vmbed, "find_kernel", lambda: "/boot/vmlinuz-test-amd64")
    started = tmp_path / "run" / "started"
    monkeypatch.setattr(vmbed, "vng_argv", lambda *a, **k: ["sh", "-c", f"echo attempt; touch {started}"])
    res = vmbed.run_in_vm(["whatever"], run_dir=tmp_path / "run", kvm=False, out=open(os.devnull, "w"),
                          pyimages=False)
    assert res.exit_code == vmbed.EXIT_NOT_RUN
    assert (tmp_path / "run/console.log").read_text() == "attempt\n"


def test_run_in_vm_timeout_kills_the_vm(tmp_path, monkeypatch):
    monkeypatch.setattr(vmbed, "find_kernel", lambda: "/boot/vmlinuz-test-amd64")
    monkeypatch.setattr(vmbed, "vng_argv", lambda *a, **k: ["sleep", "60"])
    res = vmbed.run_in_vm(["whatever"], run_dir=tmp_path / "run", kvm=False, timeout=1,
                          out=open(os.devnull, "w"), pyimages=False)
    assert res.exit_code == vmbed.EXIT_TIMEOUT and res.seconds < 30


def _listing(root):
    """What an import sees of a tree: names, types, modes, owners, sizes, mtimes, contents."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(path, root)] = ("link", os.readlink(path))
                continue
            content = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_size, int(st.st_mtime), content)
    return out


def _image_tree(image, dest):
    """The image's files, copied out with debugfs (no mount: host tests leave the host alone)."""
    dest.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {dest}", str(image)], check=True, capture_output=True,
                   env=vmbed._tools_env())
    return dest


@pytest.fixture
def small_tree(tmp_path):
    tree = tmp_path / "lib" / "python3.x"
    (tree / "pkg" / "__pycache__").mkdir(parents=True)
    (tree / "pkg" / "__init__.py").write_text("X = 1\n")
    (tree / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\xa7\r\r\n" + bytes(range(256)))
    (tree / "empty.pth").write_text("")
    (tree / "mod.so").write_bytes(b"\x7fELF" + b"\0" * 70000)
    (tree / "mod.so").chmod(0o755)
    (tree / "link.py").symlink_to("pkg/__init__.py")
    os.utime(tree / "pkg" / "__init__.py", (1_600_000_000, 1_600_000_000))
    return tree


def test_tree_image_holds_the_same_tree_and_is_reused_until_the_tree_changes(small_tree, tmp_path):
    dest = tmp_path / "pyimg"
    image, built = vmbed.build_tree_image(small_tree, dest)
    assert built and image.parent == dest
    assert _listing(_image_tree(image, tmp_path / "out1")) == _listing(small_tree), "no lost+found, same mtimes"
    assert vmbed.build_tree_image(small_tree, dest) == (image, False)

    (small_tree / "pkg" / "__init__.py").write_text("X = 2\n")     # same size: pip/dpkg replace files
    new_image, built = vmbed.build_tree_image(small_tree, dest)
    assert built and new_image != image and not image.exists(), "the stale image is replaced"
    assert b"X = 2" in open(_image_tree(new_image, tmp_path / "out2") / "pkg" / "__init__.py", "rb").read()
    assert sorted(dest.iterdir()) == [new_image], "no temporary files left"


def test_python_images_failure_is_a_one_line_note_and_no_image(small_tree, tmp_path):
    not_a_dir = tmp_path / "pyimg"
    not_a_dir.write_text("")
    pairs, note = vmbed.python_images([small_tree], not_a_dir)
    assert pairs == [] and "\n" not in note
    assert note.startswith("python trees from images: 0") and f"over 9p as before: {small_tree}" in note


def test_python_trees_are_the_interpreters_and_never_the_repository():
    trees = vmbed.python_trees()
    assert Path(sys.base_prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}") in trees
    assert any(t.parent.parent.parent == vmbed.REPO / ".venv" for t in trees), "the venv's site-packages"
    for tree in trees:
        assert vmbed.REPO not in tree.parents or tree.is_relative_to(vmbed.REPO / ".venv")
        assert not (tree / "domu_snapshot").exists(), "the package must come from the working tree"


def test_run_in_vm_hands_the_images_to_the_vm(small_tree, tmp_path, monkeypatch):
    monkeypatch.setattr(vmbed, "find_kernel", lambda: "/boot/vmlinuz-test-amd64")
    monkeypatch.setattr(vmbed, "vng_argv", lambda *a, **k: ["true"])
    monkeypatch.setattr(vmbed, "python_trees", lambda: [small_tree])
    monkeypatch.setattr(vmbed, "PYIMG_DIR", tmp_path / "pyimg")
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        vmbed.run_in_vm(["whatever"], run_dir=tmp_path / "run", kvm=False, out=f)
    [image] = (tmp_path / "pyimg").iterdir()
    assert (tmp_path / "run" / "pyimages").read_bytes() == f"{image}\0{small_tree}\0".encode()
    assert f"vmbed: python trees from images: 1 (built {small_tree})" in out.read_text()


def test_inside_script_goes_on_when_an_image_does_not_mount(tmp_path):
    """A missing or broken image: one message, the tree stays as it was, the command still runs."""
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "command").write_bytes(b"".join(a.encode() + b"\0" for a in [sys.executable, "-c", "print('ran')"]))
    (tmp_path / "pyimages").write_bytes(f"{tmp_path / 'no-such.ext4'}\0{target}\0".encode())
    script = vmbed.INSIDE_SCRIPT.read_text()
    body = (script[:script.index("for mod in")] + script[script.index("# Python's trees"):script.index("# udevd")]
            + script[script.index("read -r uptime"):])
    (tmp_path / "inside.sh").write_text(body)
    p = subprocess.run(["bash", str(tmp_path / "inside.sh"), str(tmp_path), str(vmbed.REPO)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "ran" in p.stdout
    [line] = [l for l in p.stderr.splitlines() if "python image" in l]
    assert line.startswith(f"vm: python image not used, {target} read over 9p:")
    assert list(target.iterdir()) == [] and str(target) not in open("/proc/self/mounts").read()


def test_junit_summary(tmp_path, capsys):
    xml = tmp_path / "a.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="5" failures="1" errors="0" skipped="0" '
                   'time="2.0"/></testsuites>')
    assert junitsum.main([f"host={xml}", f"vm={tmp_path / 'missing.xml'}"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "host: 4 passed, 1 failed, 0 skipped in 2s"
    assert lines[-1] == "total: 4 passed, 2 failed"


def _load_module_script(tmp_path, modprobe_script):
    """vm_inside.sh's load_module with a stand-in modprobe and dmesg first on PATH."""
    script = vmbed.INSIDE_SCRIPT.read_text()
    start = script.index("fail_setup() {")
    body = script[start:script.index("\n}\n", start) + 3]
    start = script.index("load_module() {")
    body += script[start:script.index("\n}\n", start) + 3]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("modprobe", modprobe_script), ("dmesg", "echo kernel said: oops"),
                       ("sleep", "true")):
        (bindir / name).write_text("#!/bin/sh\n" + text + "\n")
        (bindir / name).chmod(0o755)
    test = tmp_path / "t.sh"
    test.write_text(f"exit_file={tmp_path}/exit-code\n{body}\nload_module dm-nosuch\necho loaded\n")
    return subprocess.run(["bash", str(test)], capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))


def test_a_modprobe_that_fails_once_is_retried(tmp_path):
    count = tmp_path / "count"
    p = _load_module_script(tmp_path, f'echo x >> {count}; [ $(wc -l < {count}) -ge 2 ] || kill -SEGV $$')
    assert p.returncode == 0 and "loaded" in p.stdout, p.stderr
    assert count.read_text() == "x\nx\n"


def test_a_modprobe_that_fails_twice_shows_the_kernel_log(tmp_path):
    p = _load_module_script(tmp_path, 'echo "modprobe: FATAL: no dm-nosuch" >&2; exit 1')
    assert p.returncode == 125 and "loaded" not in p.stdout
    assert "modprobe dm-nosuch failed twice: modprobe: FATAL: no dm-nosuch" in p.stderr
    assert "kernel said: oops" in p.stderr and "vm: set-up failed: modprobe dm-nosuch" in p.stderr
