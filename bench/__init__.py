"""nnserve's benchmark suite: `make bench` or `python -m bench.run` (see bench/run.py)."""
