"""systemd's notify protocol (READY, WATCHDOG, STATUS) without a dependency: the capture daemon
and the count pipeline are Type=notify units with a watchdog; pages served until SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable


def sd_notify(message: str) -> bool:
    """Tell systemd (``$NOTIFY_SOCKET``); False when not run by systemd. No dependency needed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec for this process, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def serve_until_terminated(line: str, stop: Callable[[], None]) -> int:
    """A page server already started: say where (``line``, the first line of stdout, which tests and
    scripts read), then wait for SIGTERM or Ctrl-C and ``stop`` it. Exit status 0."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    try:
        while not done.wait(0.5):
            pass
    finally:
        stop()
    return 0
