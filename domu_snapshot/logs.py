"""One logger for the whole tool ("domu_snapshot"), with the handlers its front ends attach:
the console and syslog/journald for the CLI and helpers, Bareos job messages for the plugin.

The core reports through a `log(level, message)` callable (Runner(log=...)); `emit` is that
callable for this logger. Every message is made one line and escaped first: a tool's multi-line
stderr would break the one-line-per-guest output job logs rely on, and guest-controlled text
(names, agent replies) must not forge lines or send escape sequences to a terminal.
"""

import logging
import sys
import syslog

from .errors import one_line

NAME = "domu_snapshot"
SYSLOG_IDENT = "domu-snapshot"  # `journalctl -t domu-snapshot` finds a run's lines
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
          "error": logging.ERROR}


def logger():
    log = logging.getLogger(NAME)
    log.setLevel(logging.DEBUG)
    log.propagate = False  # an embedding program's root handlers (bareos-fd has none) stay out of it
    return log


def emit(level, message):
    """The core's log callable: `level` is "debug", "info", "warning" or "error"."""
    logger().log(LEVELS.get(str(level).lower(), logging.INFO), one_line(str(message)))


def use(*handlers):
    """Make `handlers` the logger's only ones (a front end owns the process's output)."""
    log = logger()
    for handler in list(log.handlers):
        log.removeHandler(handler)
    for handler in handlers:
        log.addHandler(handler)
    return log


class ConsoleHandler(logging.Handler):
    """Lines for people: info on stdout, warnings and errors on stderr with their level in front.
    quiet: no info lines; verbose: also debug lines (each command); json_mode: every line on
    stderr, so stdout holds only the JSON document."""

    _PREFIX = {logging.ERROR: "error: ", logging.WARNING: "warning: ", logging.DEBUG: "debug: "}

    def __init__(self, quiet=False, verbose=False, json_mode=False):
        super().__init__(logging.DEBUG)
        self.quiet, self.verbose, self.json_mode = quiet, verbose, json_mode

    def emit(self, record):
        if record.levelno < logging.INFO and not self.verbose:
            return
        if record.levelno == logging.INFO and self.quiet:
            return
        loud = record.levelno != logging.INFO
        stream = sys.stderr if loud or self.json_mode else sys.stdout  # looked up now: tests swap them
        print(self._PREFIX.get(record.levelno, "") + record.getMessage(), file=stream, flush=True)


class SyslogHandler(logging.Handler):
    """Every line but debug to syslog (journald reads it), through libc's syslog(3): it waits for
    no daemon and drops lines quietly when there is none, as a backup tool's logging must."""

    _PRIORITY = {logging.ERROR: syslog.LOG_ERR, logging.WARNING: syslog.LOG_WARNING}

    def __init__(self):
        super().__init__(logging.INFO)
        syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)

    def emit(self, record):
        syslog.syslog(self._PRIORITY.get(record.levelno, syslog.LOG_INFO), record.getMessage())
