"""commands.run on the host, with real child processes: what runs, where, with what environment,
and which children a timeout or a signal may kill (tools are stand-ins found through the
DOMU_SNAPSHOT_TOOL_PATH test hook; LVM itself only runs in the VM suite)."""

import os
import signal
import sys
import time

import pytest

from domu_snapshot import commands, partitions
from domu_snapshot.commands import CommandError


@pytest.fixture
def tools(tmp_path, monkeypatch):
    """A directory of stand-in tools, first in the core's tool lookup."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv(commands.TOOL_PATH_ENV, f"{bindir}:{commands.TOOL_PATH}")

    def make(name, script):
        path = bindir / name
        path.write_text("#!/bin/sh\n" + script + "\n")
        path.chmod(0o755)
        return path
    return make


def test_child_runs_in_its_own_session_from_root_dir_with_a_minimal_environment(tools, tmp_path, monkeypatch):
    tools("showenv", 'echo "cwd=$(pwd)"; env | sort; ps -o sid= -p $$')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent.so")
    monkeypatch.setenv("LVM_SYSTEM_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    lines = commands.run(["showenv"]).stdout.split()
    assert "cwd=/" in lines
    names = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("cwd=")}
    assert {"PYTHONPATH", "LD_PRELOAD", "LVM_SYSTEM_DIR", "HOME"}.isdisjoint(names)
    assert "LC_ALL=C" in lines and f"PATH={tmp_path}/bin:{commands.TOOL_PATH}" in lines
    assert int(lines[-1]) != os.getsid(0)  # a terminal's Ctrl-C does not reach it


def test_tools_are_found_through_the_fixed_path_only(tmp_path, monkeypatch):
    planted = tmp_path / "lvs"
    planted.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    planted.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv(commands.TOOL_PATH_ENV, raising=False)
    commands.run(["lvs", "--version"], check=False)
    assert not (tmp_path / "ran").exists()


def test_a_killable_tool_is_killed_at_its_timeout(tools):
    tools("mount", "sleep 30")
    started = time.monotonic()
    with pytest.raises(CommandError, match="timed out after 1 s"):
        commands.run(["mount"], timeout=1)
    assert time.monotonic() - started < 10


def test_an_lvm_command_is_never_killed_at_its_timeout(tools, tmp_path):
    tools("lvcreate", f"sleep 3; echo done > {tmp_path}/finished; echo made it")
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        commands.run(["lvcreate", "x"], timeout=1)
    assert time.monotonic() - started >= 3
    assert (tmp_path / "finished").read_text() == "done\n"
    assert "timed out" in str(caught.value) and "never killed" in str(caught.value)
    assert "exited 0" in str(caught.value)


@pytest.fixture
def interrupt_after():
    """SIGALRM raising KeyboardInterrupt, as the CLI's SIGTERM/SIGHUP handler does."""
    def handler(signum, frame):
        raise KeyboardInterrupt("signal SIGTERM")
    old = signal.signal(signal.SIGALRM, handler)
    yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def test_a_signal_during_an_lvm_command_waits_for_it_then_interrupts(tools, tmp_path, interrupt_after):
    tools("lvremove", f"sleep 2; echo done > {tmp_path}/finished")
    interrupt_after(0.5)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        commands.run(["lvremove", "--yes", "vg/x"])
    assert time.monotonic() - started >= 2
    assert (tmp_path / "finished").read_text() == "done\n"


def test_a_signal_during_another_tool_kills_it(tools, tmp_path, interrupt_after):
    tools("losetup", f"sleep 5; echo done > {tmp_path}/finished")
    interrupt_after(0.5)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        commands.run(["losetup", "--find"])
    assert time.monotonic() - started < 4
    time.sleep(5)
    assert not (tmp_path / "finished").exists()


def test_input_and_output_survive_a_deferred_signal(tools, interrupt_after):
    tools("dmsetup", 'read line; sleep 1; echo "got $line"')
    interrupt_after(0.3)
    with pytest.raises(KeyboardInterrupt):
        commands.run(["dmsetup"], input_text="hello\n")
    interrupt_after(0)
    assert commands.run(["dmsetup"], input_text="again\n").stdout == "got again\n"


def test_planted_modules_in_cwd_and_pythonpath_do_not_run_in_the_probe(tmp_path, monkeypatch):
    marker = tmp_path / "planted-ran"
    planted = tmp_path / "planted"
    planted.mkdir()
    for where in (tmp_path, planted):
        for module in ("json", "parted", "struct"):
            (where / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write('{module}')\n")
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    os.truncate(image, 8 * 1024 * 1024)
    commands.run(["mkfs.ext4", "-q", "-F", str(image)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(planted))
    probed = partitions.probe_isolated(str(image))
    assert not marker.exists(), marker.read_text()
    assert probed["label"] == "loop" and probed["partitions"][0]["fs"] == "ext4"
    argv = partitions.probe_argv(str(image))
    assert argv[1] == "-I" and "-m" not in argv


def test_the_probe_finds_the_package_without_pythonpath_from_another_cwd(tmp_path, monkeypatch):
    """As in bareos-fd: the package lives in a directory that is not on the child's sys.path."""
    monkeypatch.chdir("/")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    argv = partitions.probe_argv("/nonexistent")
    assert argv[0].startswith("/") and os.path.basename(argv[0]).startswith("python")
    proc = commands.run(argv + ["two devices"], check=False)  # main() answers with its usage
    assert proc.returncode == 2 and "usage: python -m domu_snapshot.partitions" in proc.stderr


def test_inside_bareos_fd_the_probe_runs_a_python_not_the_daemon(monkeypatch):
    monkeypatch.delenv("DOMU_SNAPSHOT_PROBE_PYTHON", raising=False)
    monkeypatch.setattr(sys, "executable", "/usr/sbin/bareos-fd")
    assert os.path.basename(partitions.probe_argv("/dev/x")[0]).startswith("python3")


@pytest.fixture
def progress(monkeypatch):
    """The front end's hooks, recording; progress due after 0.3 s (then 0.9, 2.1 ...)."""
    lines, traced = [], []
    monkeypatch.setattr(commands, "PROGRESS_FIRST", 0.3)
    commands.set_hooks(trace=traced.append, progress=lines.append)
    yield lines, traced
    commands.set_hooks()


def test_a_long_command_says_so_while_it_runs_without_flooding(tools, progress):
    lines, traced = progress
    tools("e2fsck", "sleep 3; echo replayed")
    with commands.doing("domu-web01"):
        proc = commands.run(["e2fsck", "-p", "/dev/loop9"])
    assert proc.stdout == "replayed\n"
    assert traced == [["e2fsck", "-p", "/dev/loop9"]]
    # due at 0.3, 0.9, 2.1 (then 4.5) s: doubling intervals, a few lines in 3 s, not one per tick
    assert 2 <= len(lines) <= 3, lines
    assert {line.rsplit(" ... ", 1)[0] for line in lines} == {"domu-web01: e2fsck -p /dev/loop9 still running"}
    seconds = [float(line.rsplit(" ... ", 1)[1].rstrip(" s")) for line in lines]
    assert seconds == sorted(seconds)


def test_progress_goes_on_while_an_lvm_command_is_waited_for_past_its_timeout(tools, progress):
    lines, _traced = progress
    tools("lvremove", "sleep 1.5")
    with pytest.raises(CommandError, match="never killed"):
        commands.run(["lvremove", "vg/x-dsnap"], timeout=0.5)
    assert 1 <= len(lines) <= 3 and all("lvremove vg/x-dsnap still running" in line for line in lines), lines


def test_a_quick_command_reports_no_progress(tools, progress):
    lines, _traced = progress
    tools("losetup", "echo /dev/loop3")
    assert commands.run(["losetup", "--find"]).stdout == "/dev/loop3\n"
    assert lines == []
