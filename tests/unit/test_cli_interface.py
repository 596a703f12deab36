"""The everyday interface (issue 17): --version, --help of every command, config, -q, --json
documents. Commands that need LVM are run for real in the VM suite (tests/vm/test_core.py)."""
import json
import subprocess
import sys

import pytest

from domu_snapshot import __version__, cli

COMMANDS = ("list", "mount", "unmount", "status", "cleanup", "check", "config")


def run_cli(*args, module="domu_snapshot.cli", env=None):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)


def test_version():
    proc = run_cli("--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"domu-snapshot {__version__}")
    assert cli.foreach_main(["--version"]) == 0


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_options_an_example_and_the_exit_codes(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert cli._COMMANDS[command][0].split()[0] in text                      # its description
    assert "examples:\n  domu-snapshot" in text and "exit codes: 0" in text
    assert "--config" in text and "--quiet" in text and "--json" in text


def test_foreach_domu_help_and_usage(capsys):
    assert cli.foreach_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: foreach-domu") and "exit codes: 0" in out and "foreach-domu mount" in out
    assert cli.foreach_main([]) == 2


def test_config_prints_the_effective_values_and_where_they_came_from(tmp_path):
    conf = tmp_path / "d.conf"
    conf.write_text("[domu-snapshot]\nprefix = vm-\nvg = pve\n\n[guest vm-100-disk-0]\npartition = 2\n")
    proc = run_cli("--config", str(conf), "--mount-root", "/srv/m", "config")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("=")[0].strip(): line for line in proc.stdout.splitlines() if "=" in line}
    assert lines["prefix"].split("#")[1].strip() == f"{conf} [domu-snapshot]"
    assert "= pve" in lines["vgs"] and str(conf) in lines["vgs"]
    assert lines["mount_root"].split("#")[1].strip() == "command line"
    assert lines["lock_timeout"].split("#")[1].strip() == "default"
    assert "[guest vm-100-disk-0]" in proc.stdout and lines["partition"].startswith("partition")
    document = json.loads(run_cli("--config", str(conf), "config", "--json").stdout)
    assert document["values"]["guest vm-100-disk-0"]["partition"] == {
        "value": "2", "from": f"{conf} [guest vm-100-disk-0]"}
    assert document["summary"] == {"exit_code": 0, "meaning": cli.EXIT_MEANING[0]}


def test_config_refuses_a_bad_value_naming_the_key(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[domu-snapshot]\nbusy_retries = 0\n")
    proc = run_cli("--config", str(conf), "config")
    assert proc.returncode == 2 and "busy_retries" in proc.stderr
    proc = run_cli("--config", str(conf), "config", "--json")
    document = json.loads(proc.stdout)
    assert proc.returncode == 2 and document["summary"]["exit_code"] == 2 and "busy_retries" in document["error"]


def test_quiet_keeps_warnings_and_json_mode_keeps_stdout_for_the_document(capsys):
    out = cli.Output(use_syslog=False, quiet=True)
    out("info", "OK      domu-web01: mounted")
    out("warning", "SKIPPED domu-swap: holds only swap")
    out("debug", "run: lvs")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "warning: SKIPPED domu-swap: holds only swap\n"
    out = cli.Output(use_syslog=False, verbose=True, json_mode=True)
    out("info", "OK      domu-web01: mounted")
    out("debug", "run: lvs --reportformat json")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "OK      domu-web01: mounted\ndebug: run: lvs --reportformat json\n"
