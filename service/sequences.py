"""The live sequences of a stateful model version, in a table every worker process maps (Triton's sequence batcher).

A request of a sequence may reach any worker: HTTP connections are spread over the workers by the kernel, and a
client may use several. So a sequence's state is not kept in a worker but in a file under the state folder,
`<state_dir>/sequences/<model>/<version>`, mapped by every worker: a header with the counters, a ring of ids that
ended abnormally (so a later request can be told why), then one slot per live sequence: its id, version of the
slot, last use, steps, and the state's bytes.

A step holds the table lock only to find or claim the slot (microseconds), then the slot's lock for the whole
step: read the state, run the model, write the state back. So the steps of one sequence run one at a time, in
any worker, and different sequences run in parallel. A lock is a `threading.Lock` (threads of one worker) and
a POSIX record lock on the bytes of the slot (other workers); the kernel releases a dead process's record locks.

Semantics, Triton's: a request without START for an id that is not live is refused; START on a live id starts it
again from the initial state; END frees the slot after the step; a sequence idle longer than the model's
`max_sequence_idle_microseconds` is dropped, found lazily when the table is used. The number of live sequences is
bounded by the table's capacity; a START beyond it is refused with 503 (Triton queues it instead).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from service.errors import BadRequest, ServiceError

MAX_STRING_ID = 128  # bytes of a string sequence id (UTF-8)
MAX_INT_ID = 2**64 - 1
RING = 256  # ids remembered after they ended abnormally (expired, dropped)
INT_ID, STRING_ID = 1, 2
EXPIRED, DROPPED = 1, 2

HEADER = np.dtype([("magic", "<u8"), ("capacity", "<u8"), ("state_nbytes", "<u8"), ("started", "<u8"),
                   ("ended", "<u8"), ("expired", "<u8"), ("ring_next", "<u8"), ("pad", "<u8")])
GONE = np.dtype([("kind", "u1"), ("reason", "u1"), ("pad", "u1", 6), ("number", "<u8"), ("text", f"S{MAX_STRING_ID}"),
                 ("idle_ns", "<u8"), ("detail", "S64")])
SLOT = np.dtype([("kind", "u1"), ("writing", "u1"), ("pad", "u1", 6), ("number", "<u8"), ("text", f"S{MAX_STRING_ID}"),
                 ("generation", "<u8"), ("last_ns", "<u8"), ("steps", "<u8")])
MAGIC = 0x6E6E73657173310A  # "nnseqs1\n"


class SequenceUnavailable(ServiceError):
    """The live-sequence limit is reached (503: retry later)."""

    status_code = 503


@dataclass(frozen=True)
class SequenceId:
    """A correlation id as Triton types it: the integer 1000 and the string "1000" are different sequences."""

    value: int | str

    @classmethod
    def parse(cls, value: object, model: str) -> SequenceId | None:
        """The request's `sequence_id` parameter; None when absent, 0 or "" (not part of a sequence)."""
        if value is None or value == 0 or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise BadRequest(f"sequence_id: expected an unsigned integer or a string, got {type(value).__name__}")
        if isinstance(value, int) and not 0 < value <= MAX_INT_ID:
            raise BadRequest(f"sequence_id: expected an unsigned 64-bit integer, got {value}")
        if isinstance(value, str) and len(value.encode()) > MAX_STRING_ID:
            raise BadRequest(f"sequence_id: a string id has at most {MAX_STRING_ID} bytes, got "
                             f"{len(value.encode())}")
        return cls(value)

    def __str__(self) -> str:
        return str(self.value)

    def fields(self) -> tuple[int, int, bytes]:
        """(kind, number, text) as a slot stores them: a string id's number is a hash of it, to find it fast."""
        if isinstance(self.value, int):
            return INT_ID, self.value, b""
        text = self.value.encode()
        return STRING_ID, int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little"), text


_OTHERS: dict[Path, "SequenceTable"] = {}  # other versions' tables, opened to say why an id is unknown here


def table_path(state_dir: str | Path, model: str, version: int, capacity: int, state_nbytes: int) -> Path:
    """Where the workers share a model version's table; the name carries the layout, so a table of another
    capacity or state size (a changed config.pbtxt) is another file."""
    return Path(state_dir) / "sequences" / model / f"{version}-{capacity}x{state_nbytes}"


class SequenceTable:
    """The live sequences of one model version. `path`: the shared file (created if missing, by the first process
    to open it); None keeps the table in this process's memory."""

    def __init__(self, path: Path | None, model: str, capacity: int, state_nbytes: int, idle_seconds: float):
        self.path, self.model, self.capacity, self.state_nbytes = path, model, capacity, state_nbytes
        self.idle_ns = int(idle_seconds * 1e9)
        slot_bytes = -(-(SLOT.itemsize + max(state_nbytes, 1)) // 8) * 8
        self._slot_dtype = np.dtype({"names": ["head", "state"], "formats": [SLOT, ("u1", max(state_nbytes, 1))],
                                     "offsets": [0, SLOT.itemsize], "itemsize": slot_bytes})
        self._slots_at = HEADER.itemsize + RING * GONE.itemsize
        size = self._slots_at + capacity * slot_bytes
        self._fd = None
        if path is None:
            self._map = mmap.mmap(-1, size)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 8, 0)  # creation: one process sizes and stamps the file
            try:
                found = os.fstat(self._fd).st_size
                if found == 0:
                    os.ftruncate(self._fd, size)  # zeros: every slot free
                elif found != size:  # the file name carries the layout (table_path), so this is not one of ours
                    raise OSError(f"{path}: {found} bytes, a sequence table of this layout has {size}")
                self._map = mmap.mmap(self._fd, size)
                header = np.frombuffer(self._map, HEADER, 1, 0)[0]  # the layout, for whoever reads the file
                header["magic"], header["capacity"], header["state_nbytes"] = MAGIC, capacity, state_nbytes
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 8, 0)
        self._header_view = np.frombuffer(self._map, HEADER, 1, 0)
        self._gone = np.frombuffer(self._map, GONE, RING, HEADER.itemsize)
        self._slots = np.frombuffer(self._map, self._slot_dtype, capacity, self._slots_at)
        self._seen: dict[SequenceId, int] = {}  # a hint: the slot where this process last found an id
        self._table_lock = threading.Lock()
        self._slot_locks = [threading.Lock() for _ in range(capacity)]

    # -- cross-process locks: a thread lock for this process, a record lock on the bytes for the others. Open file
    # description locks, not POSIX ones: those belong to the process, so the kernel would see a thread waiting for
    # the table while another thread of the same process holds a slot as a deadlock, and refuse (EDEADLK).
    @contextmanager
    def _locked(self, thread_lock: threading.Lock, start: int, length: int) -> Iterator[None]:
        with thread_lock:
            if self._fd is not None:
                fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start,
                                                                       length, 0))
            try:
                yield
            finally:
                if self._fd is not None:
                    fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_UNLCK, os.SEEK_SET,
                                                                          start, length, 0))

    def _table_locked(self):
        return self._locked(self._table_lock, 0, HEADER.itemsize)

    def _slot_locked(self, index: int):
        return self._locked(self._slot_locks[index], self._slots_at + index * self._slot_dtype.itemsize, 8)

    # -- the table, under its lock
    def _holds(self, index: int, kind: int, number: int, text: bytes) -> bool:
        head = self._slots[index]["head"]
        return head["kind"] == kind and head["number"] == number and head["text"] == text

    def _find(self, sid: SequenceId) -> int | None:
        kind, number, text = sid.fields()
        index = self._seen.get(sid)  # where this process last found it: one slot to check, not the table
        if index is not None and self._holds(index, kind, number, text):
            return index
        head = self._slots["head"]
        for hit in np.flatnonzero((head["number"] == number) & (head["kind"] == kind)):
            if self._holds(int(hit), kind, number, text):
                if len(self._seen) > 4 * self.capacity:
                    self._seen.clear()
                self._seen[sid] = int(hit)
                return int(hit)
        return None

    def _remember(self, index: int, reason: int, detail: str = "") -> None:
        """Free a slot whose sequence ended abnormally, and keep its id in the ring to say why later."""
        header = self._header_view[0]
        slot = self._slots[index]["head"]
        gone = self._gone[int(header["ring_next"]) % RING]
        gone["kind"], gone["reason"], gone["number"], gone["text"] = slot["kind"], reason, slot["number"], slot["text"]
        gone["idle_ns"], gone["detail"] = self.idle_ns, detail.encode()[:64]
        header["ring_next"] += 1
        if reason == EXPIRED:
            header["expired"] += 1
        slot["kind"] = 0

    def _why_gone(self, sid: SequenceId) -> str:
        kind, number, text = sid.fields()
        hits = [i for i in np.flatnonzero((self._gone["number"] == number) & (self._gone["kind"] == kind))
                if self._gone[i]["text"] == text]
        if not hits:
            return ""
        newest = max(hits, key=lambda i: (i - int(self._header_view[0]["ring_next"])) % RING)
        gone = self._gone[newest]
        if gone["reason"] == EXPIRED:
            return (f" (sequence {sid} expired: idle for more than {int(gone['idle_ns']) // 1000} µs, the model's "
                    "max_sequence_idle_microseconds)")
        return f" (sequence {sid} was dropped: {gone['detail'].decode(errors='replace')})"

    def _reap(self, now: int) -> None:
        head = self._slots["head"]
        for index in np.flatnonzero((head["kind"] != 0) & (now - head["last_ns"].astype(np.int64) > self.idle_ns)):
            self._remember(int(index), EXPIRED)

    def _claim(self, sid: SequenceId, start: bool, now: int) -> tuple[int, int]:
        """(slot index, its generation) for this step; raises when the sequence cannot take it."""
        why = ""
        with self._table_locked():
            index = self._find(sid)
            if index is not None and now - int(self._slots[index]["head"]["last_ns"]) > self.idle_ns:
                self._remember(index, EXPIRED)
                index = None
            if index is None and not start:
                why = self._why_gone(sid)
            elif index is None:
                index = self._free_slot(now)
                head = self._slots[index]["head"]
                head["kind"], head["number"], head["text"] = sid.fields()
                self._header_view[0]["started"] += 1
            elif start:  # START on a live id: Triton ends the old sequence and starts again
                self._header_view[0]["started"] += 1
            if index is not None:
                head = self._slots[index]["head"]
                if start:
                    head["generation"] += 1
                    head["steps"] = 0
                head["last_ns"] = now
                return index, int(head["generation"])
        raise BadRequest(f"inference request for sequence {sid} to model '{self.model}' must specify the START flag "
                         f"on the first request of the sequence{why or self._elsewhere(sid)}")

    def _elsewhere(self, sid: SequenceId) -> str:
        """Why another version of the model knows the id: it is live there, or was dropped when it was unloaded.
        Read with this table unlocked, so that two tables are never locked at once."""
        if self.path is None:
            return ""
        for path in sorted(self.path.parent.iterdir()):
            version, _, layout = path.name.partition("-")
            capacity, _, nbytes = layout.partition("x")
            if path == self.path or not (version.isdigit() and capacity.isdigit() and nbytes.isdigit()):
                continue
            other = _OTHERS.get(path)
            if other is None:
                other = _OTHERS[path] = SequenceTable(path, self.model, int(capacity), int(nbytes), self.idle_ns / 1e9)
            with other._table_locked():
                if other._find(sid) is not None:
                    return f" (sequence {sid} is live on version {version} of model '{self.model}': ask that version)"
                why = other._why_gone(sid)
            if why:
                return why
        return ""
    def _free_slot(self, now: int) -> int:
        free = np.flatnonzero(self._slots["head"]["kind"] == 0)
        if not free.size:
            self._reap(now)
            free = np.flatnonzero(self._slots["head"]["kind"] == 0)
        if not free.size:
            raise SequenceUnavailable(f"model '{self.model}' has {self.capacity} live sequences, its limit "
                                      "(NNSERVE_MAX_SEQUENCES, --max-sequences); end one or retry later")
        return int(free[0])

    # -- a step
    @contextmanager
    def step(self, sid: SequenceId, start: bool, end: bool) -> Iterator[Step]:
        """Hold the sequence's slot for one step. The Step's `state` holds the state bytes (zeros after START); the
        caller writes the new state with `step.save(bytes)` once the model ran. END frees the slot afterwards."""
        now = time.monotonic_ns()
        index, generation = self._claim(sid, start, now)
        with self._slot_locked(index):
            slot = self._slots[index]
            head = slot["head"]
            if int(head["generation"]) != generation or head["kind"] == 0:  # expired or restarted while waiting
                raise BadRequest(f"sequence {sid} of model '{self.model}' was started again or expired while this "
                                 "request waited for its previous step")
            if start:
                slot["state"][:] = 0
                head["writing"] = 0
            elif head["writing"]:  # a worker died while it wrote the state back: the state is not whole
                with self._table_locked():
                    self._remember(index, DROPPED, "a worker stopped while saving its state")
                raise BadRequest(f"sequence {sid} of model '{self.model}' lost its state (a worker stopped while "
                                 "saving it); start it again")
            step = Step(slot, self.state_nbytes)
            yield step
            head["steps"] += 1
            head["last_ns"] = time.monotonic_ns()
            if end:
                with self._table_locked():
                    if int(head["generation"]) == generation:
                        head["kind"] = 0
                        self._header_view[0]["ended"] += 1

    def reap(self) -> None:
        """Drop the sequences idle for longer than the limit now (they are otherwise found when the table is used)."""
        with self._table_locked():
            self._reap(time.monotonic_ns())

    def drop_all(self, detail: str) -> int:
        """Drop every live sequence (the version is unloaded); a later request is told `detail`."""
        with self._table_locked():
            live = np.flatnonzero(self._slots["head"]["kind"] != 0)
            for index in live:
                self._remember(int(index), DROPPED, detail)
        return int(live.size)

    def counts(self) -> dict[str, int]:
        """live (not yet idle too long), started, ended, expired (found so far)."""
        now = time.monotonic_ns()
        head = self._slots["head"]
        live = int(np.count_nonzero((head["kind"] != 0) & (now - head["last_ns"].astype(np.int64) <= self.idle_ns)))
        header = self._header_view[0]
        return {"live": live, "started": int(header["started"]), "ended": int(header["ended"]),
                "expired": int(header["expired"])}


class Step:
    """One step's view of its sequence's slot: `state` (uint8 bytes, zeros after START), `save(bytes)` to keep the
    new state, `steps` done before this one."""

    __slots__ = ("_slot", "_nbytes")

    def __init__(self, slot, nbytes: int):
        self._slot, self._nbytes = slot, nbytes

    @property
    def state(self) -> np.ndarray:
        return self._slot["state"][:self._nbytes]

    @property
    def steps(self) -> int:
        return int(self._slot["head"]["steps"])

    def save(self, state: bytes | np.ndarray) -> None:
        head = self._slot["head"]
        head["writing"] = 1
        self._slot["state"][:self._nbytes] = (np.frombuffer(state, np.uint8) if isinstance(state, bytes)
                                              else state.view(np.uint8))
        head["writing"] = 0
