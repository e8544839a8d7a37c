"""The shared table of live sequences (service/sequences.py), used by several real processes and threads."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

from service.errors import BadRequest
from service.sequences import SequenceId, SequenceTable, SequenceUnavailable, table_path


def _table(tmp_path, capacity=4, state_nbytes=8, idle=60.0) -> SequenceTable:
    return SequenceTable(table_path(tmp_path, "acc", 1, capacity, state_nbytes), "acc", capacity, state_nbytes, idle)


def _add(table: SequenceTable, sid: SequenceId, value: int, start=False, end=False) -> int:
    """One step of an accumulator whose state is one int64: returns the new total."""
    with table.step(sid, start, end) as step:
        total = int(step.state.view(np.int64)[0]) + value
        step.save(np.array([total], np.int64).tobytes())
    return total


def _hammer(path_dir, rounds: int, threads: int) -> None:
    table = _table(path_dir)
    workers = [threading.Thread(target=lambda: [_add(table, SequenceId(7), 1) for _ in range(rounds)])
               for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_steps_of_one_sequence_from_processes_and_threads_never_lose_an_update(tmp_path):
    table = _table(tmp_path)
    assert _add(table, SequenceId(7), 0, start=True) == 0
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(tmp_path, 150, 3)) for _ in range(2)]
    for p in procs:
        p.start()
    _hammer(tmp_path, 150, 2)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert _add(table, SequenceId(7), 0, end=True) == 2 * 150 * 3 + 150 * 2
    assert table.counts() == {"live": 0, "started": 1, "ended": 1, "expired": 0}


def test_interleaved_sequences_keep_their_own_state_and_ids_are_typed(tmp_path):
    table = _table(tmp_path)
    one, text = SequenceId(1000), SequenceId("1000")
    assert _add(table, one, 5, start=True) == 5
    assert _add(table, text, 100, start=True) == 100
    assert _add(table, one, 1) == 6 and _add(table, text, 1) == 101
    other = _table(tmp_path)  # another process's mapping of the same file sees the same sequences
    assert _add(other, one, 1) == 7
    assert table.counts()["live"] == 2


def test_a_step_without_start_for_an_unknown_id_is_refused_with_tritons_words(tmp_path):
    table = _table(tmp_path)
    with pytest.raises(BadRequest, match=r"^inference request for sequence 5 to model 'acc' must specify the START "
                                         r"flag on the first request of the sequence$"):
        _add(table, SequenceId(5), 1)


def test_start_on_a_live_id_starts_again_and_end_frees_the_slot(tmp_path):
    table = _table(tmp_path)
    _add(table, SequenceId(1), 10, start=True)
    assert _add(table, SequenceId(1), 1, start=True) == 1  # the state starts again from zeros
    assert _add(table, SequenceId(1), 1, end=True) == 2
    with pytest.raises(BadRequest, match="must specify the START flag"):
        _add(table, SequenceId(1), 1)
    assert table.counts() == {"live": 0, "started": 2, "ended": 1, "expired": 0}


def test_the_live_sequence_limit_answers_503_and_an_idle_sequence_expires_and_says_so(tmp_path):
    table = _table(tmp_path, capacity=2, idle=0.2)
    _add(table, SequenceId(1), 1, start=True)
    _add(table, SequenceId(2), 1, start=True)
    with pytest.raises(SequenceUnavailable, match="model 'acc' has 2 live sequences, its limit") as refused:
        _add(table, SequenceId(3), 1, start=True)
    assert refused.value.status_code == 503
    time.sleep(0.3)
    assert _add(table, SequenceId(3), 1, start=True) == 1  # the idle ones were reaped to make room
    with pytest.raises(BadRequest, match=r"\(sequence 1 expired: idle for more than 200000 µs, the model's "
                                         r"max_sequence_idle_microseconds\)$"):
        _add(table, SequenceId(1), 1)
    assert table.counts() == {"live": 1, "started": 3, "ended": 0, "expired": 2}


def test_dropped_sequences_say_why(tmp_path):
    table = _table(tmp_path)
    _add(table, SequenceId("a-b"), 1, start=True)
    assert table.drop_all("version 1 of model 'acc' was unloaded") == 1
    with pytest.raises(BadRequest, match=r"\(sequence a-b was dropped: version 1 of model 'acc' was unloaded\)$"):
        _add(table, SequenceId("a-b"), 1)


@pytest.mark.parametrize("value, message", [
    (-1, "sequence_id: expected an unsigned 64-bit integer, got -1"),
    (2**64, "sequence_id: expected an unsigned 64-bit integer, got 18446744073709551616"),
    (1.5, "sequence_id: expected an unsigned integer or a string, got float"),
    (True, "sequence_id: expected an unsigned integer or a string, got bool"),
    ("x" * 129, "sequence_id: a string id has at most 128 bytes, got 129"),
])
def test_hostile_ids_are_refused(value, message):
    with pytest.raises(BadRequest, match=f"^{message}$"):
        SequenceId.parse(value, "acc")


def test_zero_and_empty_ids_mean_no_sequence():
    assert SequenceId.parse(0, "m") is None and SequenceId.parse("", "m") is None and SequenceId.parse(None, "m") is None
    assert SequenceId.parse(2**64 - 1, "m") == SequenceId(2**64 - 1)
