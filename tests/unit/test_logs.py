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


def test_one_logger_for_the_tool_whose_front_end_owns_its_handlers(capsys, monkeypatch):
    """The core logs through the `domu_snapshot` logger: a second Output replaces the first's
    handlers (no line twice), debug lines never reach syslog, and nothing goes to the root logger."""
    import logging
    import syslog
    from domu_snapshot import logs
    logged = []
    monkeypatch.setattr(syslog, "openlog", lambda *args: None)
    monkeypatch.setattr(syslog, "syslog", lambda priority, message: logged.append((priority, message)))
    root_records = []
    root = logging.getLogger()
    catcher = logging.Handler()
    catcher.emit = root_records.append
    root.addHandler(catcher)
    try:
        Output(use_syslog=True)
        Output(use_syslog=True, verbose=True)
        logs.emit("debug", "run: lvs")
        logs.emit("info", "OK      domu-web01: mounted")
        logs.emit("error", "FAILED  domu-db01: fsck")
    finally:
        root.removeHandler(catcher)
    captured = capsys.readouterr()
    assert captured.out == "OK      domu-web01: mounted\n"
    assert captured.err == "debug: run: lvs\nerror: FAILED  domu-db01: fsck\n"
    assert logged == [(syslog.LOG_INFO, "OK      domu-web01: mounted"), (syslog.LOG_ERR, "FAILED  domu-db01: fsck")]
    assert root_records == []


def test_a_guest_status_is_its_word_in_json_and_text():
    import json
    from domu_snapshot.status import Status
    assert json.dumps({"status": Status.FAILED}) == '{"status": "failed"}'
    assert f"{Status.HELD} {Status.SKIPPED!s}" == "held skipped" and Status.OK == "ok"
