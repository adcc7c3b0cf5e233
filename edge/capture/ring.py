"""The frame ring: the capture daemon writes, the pipeline reads, in POSIX shared memory.

Why not a library: the stdlib's ``multiprocessing.shared_memory`` gives the segment; what a
camera ring needs on top (a writer that never waits, a newest-frame read that detects a
frame overwritten mid-copy, counting of overwritten frames, crash cleanup and a single
writer) is a hundred lines, where maintained alternatives (e.g. ring buffers for IPC on
PyPI) bring a compiled dependency and none of the capture-specific bookkeeping.

Layout: a header, then N slots of (slot header + pixel bytes sized for the current
resolution). Each slot header is a seqlock: the writer sets ``begin = seq``, writes the
pixels, then sets ``end = seq``; a reader copies and accepts the copy only if begin and end
both still equal the sequence it wanted. The writer never blocks; a reader that falls
behind skips to the newest frame, and the writer counts frames overwritten unread.
One writer per ring, enforced with ``flock`` on a lock file (released by the kernel when the
writer dies, so a crashed writer's segment is recognised as stale and replaced at start).
On a resolution change the writer retires the segment and creates a new one; readers follow.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

from edge.errors import CameraError

log = logging.getLogger(__name__)

MAGIC = b"MRWRING1"
if struct.calcsize("<8sIQq") != 28 or struct.calcsize("<8sIQqQQ") != 44:  # the offsets below depend on it
    raise ImportError("unexpected struct sizes: the frame ring layout would be wrong on this platform")
# magic, slots, slot_bytes, writer_pid, write_seq, overwritten, last_read_seq, retired, generation
HEADER = struct.Struct("<8sIQqQQQII")
HEADER_BYTES = 128
# Each side writes only its own fields, so neither overwrites the other's updates.
WRITER_FIELDS = struct.Struct("<QQ")  # write_seq, overwritten
WRITER_OFFSET = 28
READER_FIELD = struct.Struct("<Q")  # last_read_seq
READER_OFFSET = 44
# begin, end, timestamp_ns, height, width, channels
SLOT = struct.Struct("<QQQIII")
SLOT_HEADER_BYTES = 64
LOCK_DIR = Path(os.environ.get("MARROW_EDGE_RUN_DIR", "/dev/shm"))


def _segment_name(name: str) -> str:
    return f"marrow-edge-{name}"


@dataclass(frozen=True)
class RingFrame:
    seq: int
    timestamp: float  # monotonic seconds at capture
    image: np.ndarray  # (H, W, C) uint8, a private copy
    skipped: int  # frames written since the reader's previous frame that it never saw


_CREATED_HERE: set[str] = set()  # segments this process's writer made (and the tracker must keep)


def _attach(segment: str) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(name=segment, create=False)
    # Python < 3.13 registers attached segments with the resource tracker, which unlinks them
    # when the reader exits: the writer's ring would vanish under it. A reader in the writer's
    # own process (`run --camera`) shares the writer's registration, which must stay.
    if segment not in _CREATED_HERE:
        with contextlib.suppress(Exception):
            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


class FrameRing:
    """The writer side. ``write`` never waits for a reader."""

    def __init__(self, name: str, slots: int = 8, lock_dir: Path | None = None) -> None:
        if slots < 2:
            raise ValueError("a ring needs at least 2 slots")
        self.name = name
        self.slots = slots
        self.segment = _segment_name(name)
        lock_dir = LOCK_DIR if lock_dir is None else lock_dir
        lock_dir.mkdir(parents=True, exist_ok=True)
        self._lock_path = lock_dir / f"{self.segment}.lock"
        self._lock = self._lock_path.open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            raise CameraError(
                f"frame ring {name!r} already has a writer (pid {holder}): one capture daemon per ring"
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        self._remove_stale()
        self._shm: shared_memory.SharedMemory | None = None
        self._shape: tuple[int, int, int] | None = None
        self.seq = 0
        self.generation = 0
        self.overwritten = 0
        self.recreated = 0

    def _remove_stale(self) -> None:
        """We hold the lock, so any segment of this name is left from a writer that died."""
        try:
            stale = _attach(self.segment)
        except FileNotFoundError:
            return
        pid = HEADER.unpack_from(stale.buf, 0)[3] if len(stale.buf) >= HEADER.size else -1
        stale.close()
        stale.unlink()
        log.warning("removed the stale frame ring %s left by pid %s", self.segment, pid)

    def _create(self, shape: tuple[int, int, int]) -> None:
        slot_bytes = SLOT_HEADER_BYTES + int(np.prod(shape))
        self._shm = shared_memory.SharedMemory(
            name=self.segment, create=True, size=HEADER_BYTES + self.slots * slot_bytes
        )
        _CREATED_HERE.add(self.segment)
        self._shape = shape
        self._slot_bytes = slot_bytes
        self.generation += 1
        self._write_header(retired=0)

    def _memory(self) -> memoryview:
        """The segment's buffer; a closed ring is an error even under ``python -O``."""
        if self._shm is None:
            raise CameraError(f"frame ring {self.name} is closed")
        return self._shm.buf

    def _write_header(self, retired: int) -> None:
        HEADER.pack_into(
            self._memory(),
            0,
            MAGIC,
            self.slots,
            self._slot_bytes,
            os.getpid(),
            self.seq,
            self.overwritten,
            self._last_read(),
            retired,
            self.generation,
        )

    def _last_read(self) -> int:
        if self._shm is None:
            return 0
        return int(HEADER.unpack_from(self._shm.buf, 0)[6]) if self.generation else 0

    def _retire(self) -> None:
        if self._shm is None:
            return
        self._write_header(retired=1)
        self._shm.close()
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()
        _CREATED_HERE.discard(self.segment)
        self._shm = None

    def write(self, image: np.ndarray, timestamp: float | None = None) -> int:
        """Store ``image`` as the newest frame; returns its sequence number (1, 2, ...)."""
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"the ring holds (H, W, C) uint8 frames, got {image.dtype} {image.shape}")
        shape = (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
        if shape != self._shape:
            if self._shape is not None:
                log.warning("frame size changed %s -> %s: frame ring re-created", self._shape, shape)
                self.recreated += 1
            self._retire()
            self._create(shape)
        self.seq += 1
        slot = self.seq % self.slots
        offset = HEADER_BYTES + slot * self._slot_bytes
        buf = self._memory()
        previous = SLOT.unpack_from(buf, offset)[1]
        if previous and previous > self._last_read():
            self.overwritten += 1  # that frame was never read
        stamp = int((time.monotonic() if timestamp is None else timestamp) * 1e9)
        SLOT.pack_into(buf, offset, self.seq, 0, stamp, *shape)  # begin: being written
        pixels = np.ndarray(shape, np.uint8, buffer=buf, offset=offset + SLOT_HEADER_BYTES)
        pixels[...] = image
        SLOT.pack_into(buf, offset, self.seq, self.seq, stamp, *shape)  # end: complete
        WRITER_FIELDS.pack_into(buf, WRITER_OFFSET, self.seq, self.overwritten)
        return self.seq

    def close(self) -> None:
        self._retire()
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock_path.unlink()

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RingReader:
    """The reader side: the newest frame, never a torn one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.segment = _segment_name(name)
        self._shm: shared_memory.SharedMemory | None = None
        self._generation = 0
        self.last_seq = 0
        self.skipped = 0

    def _open(self) -> bool:
        if self._shm is not None:
            return True
        try:
            self._shm = _attach(self.segment)
        except FileNotFoundError:
            return False
        magic, *_ = HEADER.unpack_from(self._shm.buf, 0)
        if magic != MAGIC:
            self._shm.close()
            self._shm = None
            if magic == bytes(len(MAGIC)):
                return False  # just created, header not written yet: look again on the next call
            raise CameraError(f"shared memory {self.segment} is not a marrow-edge frame ring")
        return True

    def _header(self) -> tuple:
        if self._shm is None:
            raise CameraError(f"frame ring {self.name} is not attached")
        return HEADER.unpack_from(self._shm.buf, 0)

    def latest(self) -> RingFrame | None:
        """The newest complete frame not yet returned, or None (no writer yet, nothing new)."""
        for _ in range(4):  # a torn copy means the writer lapped us: the next try gets a newer frame
            if not self._open():
                return None
            _, slots, slot_bytes, _, write_seq, _, _, retired, generation = self._header()
            if retired:
                self.close()  # the writer re-created the ring (new frame size); follow it
                continue
            if generation != self._generation:
                self._generation = generation
                self.last_seq = 0  # sequence numbers carry on, but slots were re-laid out
            if write_seq == 0 or write_seq == self.last_seq:
                return None
            offset = HEADER_BYTES + (write_seq % slots) * slot_bytes
            buf = self._shm.buf  # type: ignore[union-attr]
            begin, end, stamp, height, width, channels = SLOT.unpack_from(buf, offset)
            if begin != write_seq or end != write_seq:
                continue
            view = np.ndarray((height, width, channels), np.uint8, buffer=buf, offset=offset + SLOT_HEADER_BYTES)
            image = view.copy()
            if SLOT.unpack_from(buf, offset)[0] != write_seq:
                continue  # overwritten while we copied
            skipped = max(0, write_seq - self.last_seq - 1) if self.last_seq else 0
            self.skipped += skipped
            self.last_seq = write_seq
            READER_FIELD.pack_into(buf, READER_OFFSET, write_seq)
            return RingFrame(write_seq, stamp / 1e9, image, skipped)
        return None

    def wait(self, timeout: float, poll: float = 0.002) -> RingFrame | None:
        deadline = time.monotonic() + timeout
        while True:
            frame = self.latest()
            if frame is not None or time.monotonic() >= deadline:
                return frame
            time.sleep(poll)

    @property
    def writer_overwritten(self) -> int:
        """Frames the writer overwrote before any reader took them."""
        if not self._open():
            return 0
        return int(self._header()[5])

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None
