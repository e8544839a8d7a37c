"""Before and after, in one run: the request path of this checkout against another commit's, on the same machine.

    .venv-dev/bin/python -m bench.ab --before REV [--model digits-mlp] [--seconds 6] [--rounds 3]

Both servers serve the same repository (the benchmarked model, copied from this checkout's models/), each with its
own code: the other commit is checked out as a git worktree under build/ab/. wrk (JSON and binary bodies as `make bench` sends them) runs at
c=64 and c=1 against one server, then the other, alternating which goes first in each round, so that drift in
the machine's load falls on both alike. It prints the median requests per second, p50 and server CPU per request
of each, and their ratios (after / before), and writes them to build/ab/result.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.run import Server, tree_cpu_seconds, write_script, wrk

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "ab"


def worktree(rev: str) -> Path:
    """A checkout of `rev` beside this one (made once, reused)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True,
                            check=True).stdout.strip()
    path = OUT / f"tree-{commit}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                       capture_output=True)
    return path


def serve(name: str, tree: Path, models: Path) -> Server:
    """`python -m service` of `tree`'s own code (its folder is the working directory), ready."""
    argv = lambda port, grpc_port: [sys.executable, "-m", "service", "--port", str(port), "--grpc-port", "0",
                                    "--models", str(models)]
    server = Server(name, {"argv": argv, "env": {}, "cwd": tree}, OUT)
    server.wait_ready()
    return server


def measure(servers: dict, scripts: dict, model: str, seconds: float, rounds: int) -> list[dict]:
    rows = []
    for round_ in range(rounds):
        for encoding, script in scripts.items():
            for connections in (64, 1):
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for name in order:
                    server = servers[name]
                    cpu = tree_cpu_seconds(server.proc.pid)
                    stats, _ = wrk(f"http://127.0.0.1:{server.port}/v2/models/{model}/infer", script, connections,
                                   seconds, 2)
                    cpu = tree_cpu_seconds(server.proc.pid) - cpu
                    wall = stats["duration_us"] / 1e6
                    errors = sum(stats[k] for k in ("status", "connect", "read", "write", "timeout"))
                    rows.append({"round": round_, "tree": name, "encoding": encoding, "c": connections,
                                 "rps": stats["requests"] / wall, "p50_ms": stats["p50_us"] / 1000,
                                 "cpu_us": cpu * 1e6 / max(1, stats["requests"]), "errors": errors})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    table = []
    for encoding in ("json", "binary"):
        for connections in (64, 1):
            cell = {"encoding": encoding, "c": connections}
            for tree in ("before", "after"):
                mine = [r for r in rows if (r["tree"], r["encoding"], r["c"]) == (tree, encoding, connections)]
                for key in ("rps", "p50_ms", "cpu_us"):
                    cell[f"{tree}_{key}"] = statistics.median(r[key] for r in mine)
            for key in ("rps", "p50_ms", "cpu_us"):
                cell[f"ratio_{key}"] = cell[f"after_{key}"] / cell[f"before_{key}"]
            table.append(cell)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit to compare with (any git revision)")
    parser.add_argument("--model", default="digits-mlp")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    trees = {"before": worktree(args.before), "after": ROOT}
    repo = OUT / "repo"  # the benchmarked model alone: an older tree may not serve every model of this one
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(ROOT / "models" / args.model, repo / args.model)
    servers = {}
    try:
        for name, tree in trees.items():
            servers[name] = serve(name, tree, repo)
        scripts = {encoding: write_script(OUT, args.model, encoding)[0] for encoding in ("json", "binary")}
        for server in servers.values():  # warm-up
            for script in scripts.values():
                wrk(f"http://127.0.0.1:{server.port}/v2/models/{args.model}/infer", script, 64, 2, 2)
        rows = measure(servers, scripts, args.model, args.seconds, args.rounds)
    finally:
        for server in servers.values():
            server.stop(OUT)
    table = summary(rows)
    (OUT / "result.json").write_text(json.dumps({"before": args.before, "rows": rows, "summary": table}, indent=1))
    print(f"\n{args.model}, median of {args.rounds} rounds of {args.seconds:g} s; after / before:")
    print("| body | c | req/s before | req/s after | ratio | p50 ratio | CPU per request ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cell in table:
        print(f"| {cell['encoding']} | {cell['c']} | {cell['before_rps']:,.0f} | {cell['after_rps']:,.0f} | "
              f"{cell['ratio_rps']:.3f} | {cell['ratio_p50_ms']:.3f} | {cell['ratio_cpu_us']:.3f} |")
    errors = sum(r["errors"] for r in rows)
    if errors:
        print(f"{errors} errors: see build/ab/*.log.tail")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
