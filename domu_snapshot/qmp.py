"""QEMU's monitor protocol (QMP) on a VM's .qmp socket (Proxmox: /var/run/qemu-server/<vmid>.qmp).

One connection per operation (greeting, qmp_capabilities, the command), as Proxmox's own tools
use the socket; every step bounded (qga.LineSocket). Used to pause (`stop`) and resume (`cont`)
a VM around its snapshots, and for SysRq-S (`send-key`).
"""

from .qga import ErrorReply, LineSocket, ProtocolError

# The SysRq "emergency sync" chord as QEMU key codes.
SYSRQ_SYNC_KEYS = ("alt", "sysrq", "s")


class Monitor:
    def __init__(self, path, timeout):
        self.path = path
        self.timeout = float(timeout)
        self._id = 0

    def command(self, name, arguments=None, timeout=None):
        """Connect, negotiate, run one command: its "return" value. Raises ProtocolError."""
        with LineSocket(self.path, self.timeout if timeout is None else timeout) as conn:
            greeting = conn.read_message()
            if "QMP" not in greeting:
                raise ProtocolError(f"{self.path}: no QMP greeting (got {str(greeting)[:100]})")
            self._call(conn, "qmp_capabilities", None)
            return self._call(conn, name, arguments)

    def _call(self, conn, name, arguments):
        self._id += 1
        ident = f"domu-snapshot-{self._id}"
        message = {"execute": name, "id": ident}
        if arguments is not None:
            message["arguments"] = arguments
        conn.send(message)
        while True:
            reply = conn.read_message()
            if reply.get("id") != ident:
                continue  # an event ({"event": ...}) or someone else's reply
            if "error" in reply:
                raise ErrorReply(name, reply["error"])
            if "return" in reply:
                return reply["return"]

    def status(self, timeout=None):
        """query-status: e.g. "running", "paused" (QEMU's RunState names)."""
        reply = self.command("query-status", timeout=timeout)
        if not isinstance(reply, dict):
            raise ProtocolError(f"{self.path}: query-status returned {str(reply)[:100]}")
        return str(reply.get("status", ""))

    def stop(self, timeout=None):
        self.command("stop", timeout=timeout)

    def cont(self, timeout=None):
        self.command("cont", timeout=timeout)

    def sysrq_sync(self, timeout=None):
        keys = [{"type": "qcode", "data": key} for key in SYSRQ_SYNC_KEYS]
        self.command("send-key", {"keys": keys}, timeout=timeout)


__all__ = ["Monitor", "ProtocolError", "ErrorReply", "SYSRQ_SYNC_KEYS"]
