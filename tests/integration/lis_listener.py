"""A real MLLP listener on loopback, as a lab's LIS would run one: python-hl7's asyncio server
(``hl7.mllp.start_hl7_server``) parsing every message and answering with an ACK it builds."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import hl7
from hl7.mllp import start_hl7_server


class LisListener:
    def __init__(self, port: int, ack_code: str = "AA") -> None:
        self.port = port
        self.ack_code = ack_code  # what it answers: AA, AE, AR
        self.answer: Any = None  # or a function: control id -> ack code (a LIS choking on one message)
        self.received: list[hl7.Message] = []
        self.raw: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _client(self, reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(message)
                self.raw.append(str(message))
                code = self.answer(str(message.segment("MSH")[10])) if self.answer else self.ack_code
                writer.writemessage(message.create_ack(code))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    def start(self) -> LisListener:
        async def serve() -> Any:
            return await start_hl7_server(self._client, "127.0.0.1", self.port)

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            asyncio.run_coroutine_threadsafe(self._server.wait_closed(), self._loop).result(timeout=10)
            self._server = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def wait_for(self, n: int, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.received) >= n:
                return True
            time.sleep(0.05)
        return False
