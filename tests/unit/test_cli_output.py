"""The CLI's messages: one line each, whatever the tools printed."""
from domu_snapshot.cli import Output


def test_a_multi_line_tool_message_becomes_one_line(capsys):
    out = Output(use_syslog=False)
    out("error", "FAILED  domu-web01: fsck: e2fsck exited 4:\n/dev/loop3: UNEXPECTED INCONSISTENCY;\n\n"
                 "\tRUN fsck MANUALLY.\n  (1.2s)")
    out("info", "OK      domu-db01: torn down  (0.4s)")
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "error: FAILED  domu-web01: fsck: e2fsck exited 4: / /dev/loop3: UNEXPECTED INCONSISTENCY; / "
        "RUN fsck MANUALLY. / (1.2s)"]
    assert captured.out == "OK      domu-db01: torn down  (0.4s)\n"


def test_guest_controlled_text_cannot_forge_lines_or_reach_the_terminal_raw(capsys, monkeypatch):
    """A guest names its files and answers through its agent: an escape sequence or a bidi override
    in such text is shown escaped on the console and in syslog, a carriage return or new line
    becomes the " / " separator (one line per message), and a byte that is not UTF-8 (which
    syslog could not even encode) is shown as \\xNN."""
    import syslog
    logged = []
    monkeypatch.setattr(syslog, "openlog", lambda *args: None)
    monkeypatch.setattr(syslog, "syslog", lambda priority, message: logged.append(message))
    out = Output(use_syslog=True)
    out("warning", "domu-web01: agent said: \x1b[2Jfrozen\rOK      domu-db01: done\u202e\udcff")
    captured = capsys.readouterr()
    line = "warning: domu-web01: agent said: \\x1b[2Jfrozen / OK      domu-db01: done\\u202e\\xff"
    assert captured.err == line + "\n"
    assert logged == [line[len("warning: "):]]
