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
