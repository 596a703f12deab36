"""Per-guest snapshot hooks (issue 16, "any other toolstack"): how a hook line becomes an argument
list, the configuration keys, and the order and failure handling around the snapshots, with real
hook programs (small scripts written here). The VM suite runs them around real snapshots
(tests/vm/test_hooks.py)."""

import os
import sys

import pytest

from domu_snapshot import commands, hooks
from domu_snapshot.config import Config, load_config
from domu_snapshot.errors import DomuError, GuestError
from domu_snapshot.lifecycle import Disk, Guest, GuestResult, Runner


def guest(name="web", domain=None, lvs=("domu-web",)):
    return Guest(name, [Disk("vg0", lv, f"/nonexistent/mnt/vg0/{lv}") for lv in lvs], domain)


# ------------------------------------------------------------------ parse and expand

def test_a_hook_line_is_split_like_a_shell_would_but_never_run_by_one():
    assert hooks.parse("/usr/local/bin/pause --name '{guest}' \"a b\" c\\ d") == [
        "/usr/local/bin/pause", "--name", "{guest}", "a b", "c d"]
    # shell syntax is just words: no pipe, no redirection, no expansion
    assert hooks.parse("/bin/echo $HOME | tee >x ; {{x}}") == ["/bin/echo", "$HOME", "|", "tee", ">x", ";", "{{x}}"]


@pytest.mark.parametrize("line, why", [
    ("", "empty command"),
    ("   ", "empty command"),
    ("pause {guest}", "absolute path"),
    ("./pause {guest}", "absolute path"),
    ("/usr/bin/{guest}", "absolute path"),
    ("/bin/pause {name}", "unknown placeholder {name}"),
    ("/bin/pause {}", "unknown placeholder {}"),
    ("/bin/pause {guest", "unmatched brace"),
    ("/bin/pause guest}", "unmatched brace"),
    ("/bin/pause 'open", "cannot split"),
])
def test_bad_hook_lines_are_refused_saying_why(line, why):
    with pytest.raises(ValueError, match=why.replace("{", r"\{").replace("}", r"\}")):
        hooks.parse(line)


def test_placeholders_are_substituted_after_the_split():
    g = guest("db", "db-domain", ("domu-db-root", "domu-db-data"))
    words = hooks.parse("/opt/hook --guest={guest} {domain} {vg} {lv} {lvs} all={lvs} {{literal}}")
    assert hooks.expand(words, hooks.values(g)) == [
        "/opt/hook", "--guest=db", "db-domain", "vg0", "domu-db-root", "vg0/domu-db-root", "vg0/domu-db-data",
        "all=vg0/domu-db-root,vg0/domu-db-data", "{literal}"]


def test_a_name_with_spaces_quotes_or_braces_stays_one_argument():
    g = guest("we b'; rm -rf / {lv}", None, ("domu-x",))
    assert hooks.expand(hooks.parse("/opt/hook {guest} {domain}"), hooks.values(g)) == [
        "/opt/hook", "we b'; rm -rf / {lv}", ""]


# ------------------------------------------------------------------ configuration

def test_hook_keys_have_defaults_that_run_nothing():
    cfg = Config()
    assert (cfg.before_snapshot_hook, cfg.after_snapshot_hook, cfg.hook_timeout, cfg.before_hook_failure) == (
        "", "", 60.0, "fail")


def test_hooks_are_set_for_the_run_and_per_guest_by_name_or_domain(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("[domu-snapshot]\nbefore_snapshot_hook = /opt/pause {guest}\nhook_timeout = 5\n"
                    "[guest domu-db]\nbefore_snapshot_hook = /opt/db-flush {lv}\nbefore_hook_failure = continue\n"
                    "[guest dom-mail]\nafter_snapshot_hook = /opt/mail-resume\n")
    cfg = load_config(str(path))
    assert cfg.hook_timeout == 5.0
    assert cfg.for_guest_of(guest("domu-web"), "before_snapshot_hook") == "/opt/pause {guest}"
    assert cfg.for_guest_of(guest("domu-db"), "before_snapshot_hook") == "/opt/db-flush {lv}"
    assert cfg.for_guest_of(guest("domu-db"), "before_hook_failure") == "continue"
    assert cfg.for_guest_of(guest("domu-web"), "before_hook_failure") == "fail"
    mail = guest("mail", "dom-mail", ("domu-mail-a", "domu-mail-b"))
    assert cfg.for_guest_of(mail, "after_snapshot_hook") == "/opt/mail-resume"


@pytest.mark.parametrize("text, key", [
    ("[domu-snapshot]\nbefore_snapshot_hook = relative/hook\n", "before_snapshot_hook"),
    ("[guest domu-x]\nafter_snapshot_hook = /opt/h {nope}\n", "after_snapshot_hook"),
    ("[guest domu-x]\nbefore_hook_failure = ignore\n", "before_hook_failure"),
    ("[domu-snapshot]\nhook_timeout = 0\n", "hook_timeout"),
    ("[domu-snapshot]\nhook_timeout = nan\n", "hook_timeout"),
])
def test_bad_hook_configuration_is_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "c.conf"
    path.write_text(text)
    with pytest.raises(DomuError, match=key):
        load_config(str(path))


# ------------------------------------------------------------------ around the snapshots

@pytest.fixture
def hook(tmp_path):
    """hook(name, exit_code=0, sleep=0) -> a hook line running a real script that appends
    "name arg..." to the log; log() reads it."""
    log = tmp_path / "hooks.log"

    def make(name, exit_code=0, sleep=0):
        script = tmp_path / f"{name}.py"
        script.write_text(
            f"#!{sys.executable} -I\nimport sys, time\n"
            f"open({str(log)!r}, 'a').write(' '.join(['{name}'] + sys.argv[1:]) + '\\n')\n"
            f"time.sleep({sleep})\n"
            f"if {exit_code}: print('{name} refused: domain busy', file=sys.stderr)\n"
            f"sys.exit({exit_code})\n")
        os.chmod(script, 0o755)
        return f"{script} {{guest}} {{lvs}}"

    make.log = lambda: log.read_text().splitlines() if log.exists() else []
    return make


def run_hooked(cfg, action, g=None):
    g = g or guest()
    result = GuestResult(g, "mount")
    Runner(cfg).hooked(g, result, action)
    return result


def test_hooks_run_before_and_after_the_snapshots_in_order(hook):
    cfg = Config(before_snapshot_hook=hook("before"), after_snapshot_hook=hook("after"))
    seen = []
    result = run_hooked(cfg, lambda: seen.append(hook.log()))
    assert seen == [["before web vg0/domu-web"]]  # the snapshots come after the before-hook, before the after-hook
    assert hook.log() == ["before web vg0/domu-web", "after web vg0/domu-web"]
    assert result.notes == []


def test_a_failing_before_hook_fails_the_guest_before_any_snapshot_and_the_after_hook_still_runs(hook):
    cfg = Config(before_snapshot_hook=hook("before", exit_code=3), after_snapshot_hook=hook("after"))
    called = []
    with pytest.raises(GuestError) as caught:
        run_hooked(cfg, lambda: called.append("snapshots"))
    assert called == []
    assert caught.value.step == "before-snapshot hook" and caught.value.guest == "web"
    assert "before refused: domain busy" in caught.value.message
    assert "run the hook by hand" in caught.value.hint
    assert hook.log() == ["before web vg0/domu-web", "after web vg0/domu-web"]


def test_with_continue_a_failing_before_hook_is_a_note_and_the_snapshots_are_made(hook):
    cfg = Config(before_snapshot_hook=hook("before", exit_code=1), after_snapshot_hook=hook("after"),
                 before_hook_failure="continue")
    called = []
    result = run_hooked(cfg, lambda: called.append("snapshots"))
    assert called == ["snapshots"]
    assert any("before-snapshot hook failed" in n and "before_hook_failure = continue" in n for n in result.notes)
    assert hook.log() == ["before web vg0/domu-web", "after web vg0/domu-web"]


@pytest.mark.parametrize("raised", [GuestError("web", "snapshot", "lvcreate failed"), KeyboardInterrupt()])
def test_the_after_hook_runs_when_the_snapshots_fail_or_a_signal_comes(hook, raised):
    cfg = Config(before_snapshot_hook=hook("before"), after_snapshot_hook=hook("after"))

    def fail():
        raise raised
    with pytest.raises(type(raised)):
        run_hooked(cfg, fail)
    assert hook.log() == ["before web vg0/domu-web", "after web vg0/domu-web"]


def test_a_failing_after_hook_fails_the_guest_and_says_to_check_it(hook):
    cfg = Config(after_snapshot_hook=hook("after", exit_code=2))
    with pytest.raises(GuestError) as caught:
        run_hooked(cfg, lambda: None)
    assert caught.value.step == "after-snapshot hook"
    assert "after refused: domain busy" in caught.value.message
    assert "check the guest now" in caught.value.hint


def test_a_failing_after_hook_during_another_failure_is_a_note_and_the_first_error_stays(hook):
    cfg = Config(after_snapshot_hook=hook("after", exit_code=2))
    g = guest()
    result = GuestResult(g, "mount")

    def fail():
        raise GuestError("web", "snapshot", "lvcreate failed")
    with pytest.raises(GuestError) as caught:
        Runner(cfg).hooked(g, result, fail)
    assert caught.value.step == "snapshot"
    assert any("after-snapshot hook failed" in n for n in result.notes)


def test_a_hook_that_hangs_is_killed_after_hook_timeout(hook):
    cfg = Config(before_snapshot_hook=hook("before", sleep=60), hook_timeout=0.5)
    with pytest.raises(GuestError) as caught:
        run_hooked(cfg, lambda: None)
    assert caught.value.step == "before-snapshot hook" and "timed out" in caught.value.message


def test_hooks_apply_only_to_the_guests_whose_section_sets_them(hook, tmp_path):
    path = tmp_path / "c.conf"
    path.write_text(f"[guest db]\nbefore_snapshot_hook = {hook('before')}\n")
    cfg = load_config(str(path))
    run_hooked(cfg, lambda: None, guest("web"))
    assert hook.log() == []
    run_hooked(cfg, lambda: None, guest("db", lvs=("domu-db",)))
    assert hook.log() == ["before db vg0/domu-db"]


def test_in_dry_run_hooks_are_printed_not_run(hook):
    printed = []
    commands.set_dry_run(True, printed.append)
    try:
        run_hooked(Config(before_snapshot_hook=hook("before"), after_snapshot_hook=hook("after")), lambda: None)
    finally:
        commands.set_dry_run(False)
    assert hook.log() == []
    assert [p.split()[:2] for p in printed] == [["would", "run:"]] * 2
    assert printed[0].endswith("before.py web vg0/domu-web") and printed[1].endswith("after.py web vg0/domu-web")
