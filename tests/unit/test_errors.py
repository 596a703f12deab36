"""Text made safe for one log line (errors.shown, errors.one_line)."""
import pytest

from domu_snapshot.errors import GuestError, one_line, shown


@pytest.mark.parametrize("raw, escaped", [
    ("plain name.txt", "plain name.txt"),
    ("caf\u00e9 \u2603", "caf\u00e9 \u2603"),                 # printable UTF-8 stays as it is
    ("new\nline", "new\\nline"),
    ("tab\there", "tab\\there"),
    ("cr\rhere", "cr\\rhere"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
    ("sep\u2028par\u2029", "sep\\u2028par\\u2029"),
    ("rtl\u202eexe.txt", "rtl\\u202eexe.txt"),
    ("latin1-\udce9t\udce9", "latin1-\\xe9t\\xe9"),           # os.fsdecode of b"latin1-\xe9t\xe9"
])
def test_shown_escapes_what_could_forge_a_line_or_move_a_cursor(raw, escaped):
    assert shown(raw) == escaped
    assert shown(raw).encode("utf-8")                        # always encodable (syslog, job log)


def test_one_line_joins_a_tools_lines_and_escapes_the_rest():
    assert one_line("e2fsck exited 4:\n  /dev/loop3: BAD\r\n\n\x1b[0m") == "e2fsck exited 4: / /dev/loop3: BAD / \\x1b[0m"
    assert "\n" not in one_line(str(GuestError("g", "fsck", "a\nb", "c\x1bd")))
