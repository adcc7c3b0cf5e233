"""Finding a broker for development and demos, or starting an embedded mosquitto on loopback."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edge.errors import PublishError

log = logging.getLogger(__name__)

_SEARCH = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in _SEARCH if Path(p).is_file()), None)


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections there (a cheap probe, not an MQTT handshake)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A private mosquitto on 127.0.0.1, stopped with ``stop()``.

    ``persistence``: sessions and queued messages survive ``stop(keep_state=True)`` and a
    ``start()`` on the same port (the fault tests restart the broker mid-slide).
    """

    def __init__(self, port: int | None = None, binary: str | None = None, persistence: bool = False) -> None:
        self.binary = binary or find_mosquitto()
        if not self.binary:
            raise PublishError(
                "no MQTT broker: none is configured, none answers on localhost:1883, and mosquitto "
                "is not installed (apt-get install mosquitto), or pass --broker mqtt://HOST:PORT"
            )
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="marrow-mosquitto-")
        self._process: subprocess.Popen[bytes] | None = None
        self.persistence = persistence

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        conf = Path(self._dir.name) / "mosquitto.conf"
        persistence = (
            f"persistence true\npersistence_location {self._dir.name}/\nautosave_interval 1\n"
            if self.persistence
            else "persistence false\n"
        )
        conf.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous true\n{persistence}"
            "log_dest stderr\nlog_type error\nlog_type warning\n",
            encoding="utf-8",
        )
        self._process = subprocess.Popen(
            [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while not answers(self.host, self.port, timeout=0.2):
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise PublishError(f"embedded mosquitto exited at start: {err.strip()[-300:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise PublishError(f"embedded mosquitto did not listen on {self.url} within {timeout:g} s")
            time.sleep(0.05)
        log.info("started embedded mosquitto on %s (%s)", self.url, self.binary)
        return self

    def stop(self, keep_state: bool = False) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
        if self._process and self._process.stderr:
            self._process.stderr.close()
        if not keep_state:
            self._dir.cleanup()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
