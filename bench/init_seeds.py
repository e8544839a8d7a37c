"""How much of a test metric is the weight initialization: fit configs on their own split with several init seeds.

A config's seed decides its split, its batch order and its initial weights. This keeps the split and the batch
order and changes only the seed fit gives torch's global generator before it builds the network (the initial
weights and the dropout masks), so that two configs can be compared on the same test rows over many
initializations instead of one. docs/tuning.md uses it to compare tune's best
diabetes-mlp config with the config as written.

    .venv-dev/bin/python -m bench.init_seeds diabetes-mlp runs/tune/diabetes-mlp-cv5/best_config.toml --seeds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fit_with_init_seed(config, init_seed: int) -> dict:
    """fit(config) on the config's split, with torch seeded by `init_seed` where fit seeds it."""
    import torch

    from training.trainer import fit

    manual_seed = torch.manual_seed
    torch.manual_seed = lambda _seed: manual_seed(init_seed)  # fit's only call: before it builds the network
    try:
        with tempfile.TemporaryDirectory(prefix="nnserve-init-seeds-") as tmp:
            return fit(config, Path(tmp) / "run", log=lambda _m: None, quiet=True)
    finally:
        torch.manual_seed = manual_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.init_seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="zoo names or TOML files")
    parser.add_argument("--seeds", type=int, default=10, help="init seeds 1000..1000+N-1 (default 10)")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    from training.config import load_config

    configs = [load_config(c) for c in args.configs]
    results: dict[str, list[float]] = {c: [] for c in args.configs}
    for i in range(args.seeds):
        for name, config in zip(args.configs, configs):
            summary = fit_with_init_seed(config, 1000 + i)
            results[name].append(summary["metrics"][f"test_{summary['headline_metric']}"])
        print(f"init seed {1000 + i}: " + "  ".join(f"{results[n][-1]:.4f}" for n in args.configs), flush=True)
    for name, values in results.items():
        print(f"{name}: mean {statistics.mean(values):.4f}  median {statistics.median(values):.4f}  "
              f"sd {statistics.stdev(values) if len(values) > 1 else 0:.4f}  min {min(values):.4f}  "
              f"max {max(values):.4f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
