"""QEMU's line-based JSON sockets: the guest agent (qemu-ga) on a VM's .qga socket.

The guest agent is run by the guest: whatever it sends is hostile. Every connect, write and read
is bounded by a deadline (not per recv: a trickle of bytes cannot stretch it), a line is at most
MAX_LINE bytes, and a connection reads at most MAX_READ bytes (stale output is skipped within it).
One connection per operation (the socket serves one client at a time; Proxmox's own tools use
it too), each starting with guest-sync so that a stale reply of an earlier client is never
taken for ours. stdlib only.
"""

import json
import random
import socket
import time

MAX_LINE = 64 * 1024
MAX_READ = 1024 * 1024  # per connection: replies are small


class ProtocolError(Exception):
    """The peer did not answer as the protocol says (or not in time); the message says how."""


class ErrorReply(ProtocolError):
    """The peer answered {"error": {...}}."""

    def __init__(self, command, error):
        self.error_class = str(error.get("class", "")) if isinstance(error, dict) else ""
        desc = error.get("desc", error) if isinstance(error, dict) else error
        super().__init__(f"{command}: {_short(desc)}")


def _short(value, limit=200):
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


class LineSocket:
    """A unix stream socket read as JSON lines, every operation within `deadline` (monotonic)."""

    def __init__(self, path, timeout):
        self.path = path
        self.deadline = time.monotonic() + timeout
        self._buffer = b""
        self._read = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(self._left())
            self._sock.connect(path)
        except (OSError, ProtocolError) as exc:
            self._sock.close()
            raise ProtocolError(f"cannot connect to {path}: {_oserror(exc)}") from None

    def _left(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProtocolError(f"no answer on {self.path} in time")
        return left

    def close(self):
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def send(self, message):
        data = json.dumps(message).encode() + b"\n"
        try:
            while data:
                self._sock.settimeout(self._left())
                sent = self._sock.send(data)
                data = data[sent:]
        except OSError as exc:
            raise ProtocolError(f"writing to {self.path}: {_oserror(exc)}") from None

    def read_line(self):
        """The next line (bytes, without the newline); bounded in length and time."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise ProtocolError(f"{self.path}: a line longer than {MAX_LINE} bytes")
            try:
                self._sock.settimeout(self._left())
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise ProtocolError(f"reading from {self.path}: {_oserror(exc)}") from None
            if not chunk:
                raise ProtocolError(f"{self.path}: the peer closed the connection")
            self._read += len(chunk)
            if self._read > MAX_READ:
                raise ProtocolError(f"{self.path}: more than {MAX_READ} bytes without the expected reply")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        if len(line) > MAX_LINE:
            raise ProtocolError(f"{self.path}: a line longer than {MAX_LINE} bytes")
        return line

    def read_message(self):
        """The next line that is a JSON object; other lines (garbage, 0xff sync bytes) are skipped."""
        while True:
            line = self.read_line()
            try:
                message = json.loads(line.strip(b"\xff \t\r").decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                message = None
            if isinstance(message, dict):
                return message


def _oserror(exc):
    if isinstance(exc, socket.timeout):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class Agent:
    """The QEMU guest agent on a unix socket (Proxmox: /var/run/qemu-server/<vmid>.qga)."""

    def __init__(self, path, timeout):
        self.path = path
        self.timeout = float(timeout)

    def command(self, name, arguments=None, timeout=None):
        """Connect, guest-sync, run one command; its "return" value. Raises ProtocolError."""
        with LineSocket(self.path, self.timeout if timeout is None else timeout) as conn:
            self._sync(conn)
            message = {"execute": name}
            if arguments is not None:
                message["arguments"] = arguments
            conn.send(message)
            while True:
                reply = conn.read_message()
                if "return" in reply:
                    return reply["return"]
                if "error" in reply:
                    raise ErrorReply(name, reply["error"])
                # neither (an event, a stale line): not ours, skipped (bounded by MAX_READ)

    @staticmethod
    def _sync(conn):
        # A random id: a reply left in the channel by an earlier client (or made up by the guest
        # beforehand) cannot match. Lines before the matching reply are stale and discarded.
        token = random.SystemRandom().randrange(1, 2 ** 31)
        conn.send({"execute": "guest-sync", "arguments": {"id": token}})
        while True:
            reply = conn.read_message()
            if reply.get("return") == token and not isinstance(reply.get("return"), bool):
                return

    def freeze(self, timeout=None):
        """Freeze the guest's filesystems; the number frozen."""
        return self.command("guest-fsfreeze-freeze", timeout=timeout)

    def thaw(self, timeout=None):
        return self.command("guest-fsfreeze-thaw", timeout=timeout)

    def status(self, timeout=None):
        """"frozen" or "thawed" (what the agent says; anything else is returned as it came)."""
        return self.command("guest-fsfreeze-status", timeout=timeout)
