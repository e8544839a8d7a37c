"""The cost of one step's table work for a stateful model: find the sequence's slot, lock it, read and write its
state (service/sequences.py), without the model. Prints microseconds per step.

    .venv/bin/python -m bench.sequence_table [--live 500] [--capacity 1024] [--state-bytes 512] [--steps 5000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from service.sequences import SequenceId, SequenceTable, table_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--live", type=int, default=500)
    parser.add_argument("--capacity", type=int, default=1024)
    parser.add_argument("--state-bytes", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        table = SequenceTable(table_path(folder, "m", 1, args.capacity, args.state_bytes), "m", args.capacity,
                              args.state_bytes, 3600)
        for i in range(args.live):
            with table.step(SequenceId(str(i)), True, False):
                pass
        state = np.zeros(args.state_bytes, np.uint8)
        for kind, sid in (("integer id", None), ("string id", SequenceId(str(args.live // 2)))):
            if sid is None:
                with table.step(SequenceId(7), True, False):
                    pass
                sid = SequenceId(7)
            started = time.perf_counter()
            for _ in range(args.steps):
                with table.step(sid, False, False) as step:
                    step.state.copy()
                    step.save(state)
            print(f"{kind}: {(time.perf_counter() - started) / args.steps * 1e6:.1f} µs per step "
                  f"({args.live} live of {args.capacity}, {args.state_bytes} state bytes)")


if __name__ == "__main__":
    main()
