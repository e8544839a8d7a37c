#!/usr/bin/env python3
"""`make test-gpu`: the CUDA path, proven in one call on a machine with an NVIDIA GPU.

Steps, each recorded pass/fail/skip with its reason and duration (a later step still runs where it can):

  venv      .venv-gpu: the serve lock with onnxruntime-gpu[cuda,cudnn] at the lock's onnxruntime version, the train
            extra with torch==2.13.0 (PyPI's Linux wheel, the CUDA build), tritonclient; requirements/dev.lock pins
            the rest (constraints). GPU_WHEELS=DIR (or --wheels DIR) installs from a wheel folder, no registry.
  ort-cuda  ONNX Runtime offers and creates CUDAExecutionProvider; torch sees the GPU
  serve     `python -m service --device cuda`: every zoo model in models/ runs on CUDAExecutionProvider and answers
            over HTTP and gRPC (tritonclient) equal to CPU ONNX Runtime within its export tolerance
  refuse    `--device cuda` refuses a model none of whose nodes run on CUDA, and every model when the session
            falls back to the CPU (the GPU hidden)
  train     digits-cnn for a few epochs under `torchrun --nproc_per_node=1`: NCCL, CUDA, the fused optimizer
  bench     digits-cnn, binary V2 bodies, concurrency 1/8/64: --device cpu against --device cuda in one run

It writes build/gpu/summary.json and summary.md (logs in build/gpu/logs/). The orchestration needs only the
standard library; the checks run in .venv-gpu (tests/gpu/checks.py).

Exit codes: 0 every step passed; 1 a step failed (see the summary); 2 usage error; 77 no NVIDIA GPU here, nothing
was run (one line says why; --force, or NNSERVE_GPU_FORCE=1, runs the steps anyway).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "gpu"
VENV = ROOT / ".venv-gpu"
TORCH_VERSION = "2.13.0"
ORT_GPU_EXTRAS = "cuda,cudnn"  # onnxruntime-gpu's extras: the CUDA runtime, cuFFT, cuRAND, NVRTC and cuDNN wheels
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU = 0, 1, 2, 77
STEPS = ["venv", "ort-cuda", "serve", "refuse", "train", "bench"]
BUDGET_SECONDS = 8 * 60
STEP_TIMEOUTS = {"venv": 420, "ort-cuda": 120, "serve": 240, "refuse": 240, "train": 240, "bench": 240}
PLAN_MARKER = ".nnserve-gpu-plan"


# ---------------------------------------------------------------- the GPU

def detect_gpu(nvidia_smi: str = "nvidia-smi", dev_dir: str = "/dev") -> tuple[list[str], str]:
    """(the GPUs `nvidia-smi -L` lists, '') or ([], why there is none). Without nvidia-smi, a /dev/nvidiaN
    device node counts as a GPU (containers may hold the device and the driver's libraries but not the tool)."""
    nodes = sorted(p for p in glob.glob(os.path.join(dev_dir, "nvidia*")) if os.path.basename(p)[6:].isdigit())
    tool = shutil.which(nvidia_smi)
    if tool is None:
        if nodes:
            return [f"{node} (nvidia-smi not found)" for node in nodes], ""
        return [], f"{nvidia_smi}: not found; {dev_dir}/nvidia[0-9]*: none"
    try:
        result = subprocess.run([tool, "-L"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"{nvidia_smi} -L did not run: {exc}"
    gpus = [line.strip() for line in result.stdout.splitlines() if line.startswith("GPU ")]
    if result.returncode != 0 or not gpus:
        said = (result.stderr or result.stdout).strip().splitlines()
        return [], f"{nvidia_smi} -L exited {result.returncode} listing no GPU ({said[0][:160] if said else 'no output'})"
    return gpus, ""


# ---------------------------------------------------------------- .venv-gpu: what it installs

def _lock(path: Path) -> dict[str, str]:
    """name (normalized) -> the lock's line."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pins[_normalize(line.split("==")[0])] = line
    return pins


def _normalize(name: str) -> str:
    return name.split("[")[0].strip().lower().replace("_", "-").replace(".", "-")


def _name(requirement: str) -> str:
    for sep in ("==", ">=", "<=", "~=", "<", ">", ";", " "):
        requirement = requirement.split(sep)[0]
    return _normalize(requirement)


def venv_plan(root: Path = ROOT, wheels: str | None = None, venv: Path | None = None, out: Path | None = None) -> dict:
    """What .venv-gpu gets: the requirement lines, the constraint lines and the pip commands (nothing is run).

    onnxruntime (the CPU wheel) is never installed beside onnxruntime-gpu: both provide the `onnxruntime` module, so
    the `serve`/`train` extras are not installed as such (they name onnxruntime); their pins are, one by one."""
    venv = venv or root / ".venv-gpu"
    serve = _lock(root / "requirements" / "serve.lock")
    dev = _lock(root / "requirements" / "dev.lock")
    if "onnxruntime" not in serve:
        raise ValueError("requirements/serve.lock pins no onnxruntime")
    ort_version = serve["onnxruntime"].split("==", 1)[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    skip = {"onnxruntime", "torch", "nnserve"}
    requirements = [line for name, line in serve.items() if name not in skip]
    have = {_name(r) for r in requirements}
    for requirement in extras["train"] + [r for r in extras["dev"] if _name(r) == "tritonclient"]:
        if _name(requirement) not in skip | have:
            requirements.append(requirement)
            have.add(_name(requirement))
    requirements += [f"onnxruntime-gpu[{ORT_GPU_EXTRAS}]=={ort_version}", f"torch=={TORCH_VERSION}"]
    constraints = [line for name, line in dev.items() if name not in {"onnxruntime", "onnxruntime-gpu"}]
    out = out or root / "build" / "gpu"
    python = str(venv / "bin" / "python")
    source = ["--no-index", "--find-links", str(wheels)] if wheels else []
    commands = [
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile", *source,
         "-r", str(out / "requirements.txt"), "-c", str(out / "constraints.txt")],
    ]
    digest = hashlib.sha256("\n".join(requirements + ["--"] + constraints + source).encode()).hexdigest()
    return {"onnxruntime_version": ort_version, "torch_version": TORCH_VERSION, "requirements": requirements,
            "constraints": constraints, "commands": commands, "wheels": wheels, "venv": str(venv), "digest": digest}


def write_plan_files(plan: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "requirements.txt").write_text("# .venv-gpu (tests/gpu/run_gpu.py)\n" + "\n".join(plan["requirements"]) + "\n")
    (out / "constraints.txt").write_text("# requirements/dev.lock without onnxruntime\n"
                                         + "\n".join(plan["constraints"]) + "\n")


# ---------------------------------------------------------------- results and the summary

@dataclass
class StepResult:
    name: str
    status: str  # pass, fail or skip
    seconds: float = 0.0
    reason: str = ""
    details: dict = field(default_factory=dict)


def exit_code(results: list[StepResult]) -> int:
    return EXIT_FAILED if any(r.status == "fail" for r in results) else EXIT_OK


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_summary(out: Path, results: list[StepResult], meta: dict) -> dict:
    """build/gpu/summary.json and summary.md from the step results; returns the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    code = exit_code(results)
    doc = {**meta, "exit_code": code, "passed": code == EXIT_OK,
           "total_seconds": round(sum(r.seconds for r in results), 1),
           "steps": [asdict(r) for r in results]}
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [f"# make test-gpu: {'passed' if code == EXIT_OK else 'FAILED'}", ""]
    for key in ("started_at", "commit", "host", "gpus", "forced"):
        if key in meta:
            value = ", ".join(meta[key]) if isinstance(meta[key], list) else meta[key]
            lines.append(f"- {key.replace('_', ' ')}: {value}")
    lines += [f"- total: {doc['total_seconds']} s (budget {BUDGET_SECONDS} s)", f"- exit code: {code}", "",
              "| step | result | seconds | reason |", "|---|---|---:|---|"]
    lines += [f"| {r.name} | {r.status.upper() if r.status == 'fail' else r.status} | {r.seconds:.1f} | {_cell(r.reason)} |"
              for r in results]
    for r in results:
        for title, rows in r.details.get("tables", {}).items():
            if rows:
                keys = list(rows[0])
                lines += ["", f"## {r.name}: {title}", "", "| " + " | ".join(keys) + " |",
                          "|" + "---|" * len(keys)]
                lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return doc


# ---------------------------------------------------------------- the steps

def _tail(text: str, lines: int = 6) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())[:600]


def _run_logged(argv: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Run argv with its output in `log`; (exit code, output). 124 when it ran past `timeout`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        handle.write("$ " + " ".join(argv) + "\n")
        handle.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the group this script started for the step
            proc.wait()
            code = 124
    return code, log.read_text(errors="replace")


def step_venv(plan: dict, out: Path, dry_run: bool) -> StepResult:
    write_plan_files(plan, out)
    venv = Path(plan["venv"])
    marker = venv / PLAN_MARKER
    if dry_run:
        return StepResult("venv", "skip", reason="dry run: would run " + " ; ".join(
            " ".join(c) for c in plan["commands"]), details={"plan": plan})
    details = {"requirements": plan["requirements"], "wheels": plan["wheels"]}
    if marker.is_file() and marker.read_text().strip() == plan["digest"]:
        details["reused"] = True
    else:
        marker.unlink(missing_ok=True)
        for i, command in enumerate(plan["commands"]):
            if i == 0 and (venv / "bin" / "python").exists():
                continue
            code, text = _run_logged(command, out / "logs" / "venv.log", STEP_TIMEOUTS["venv"])
            if code:
                return StepResult("venv", "fail", reason=f"{' '.join(command[:4])} ... exited {code}: {_tail(text)}",
                                  details=details)
    probe = ("import importlib.metadata as m, json\n"
             "def v(n):\n"
             "    try:\n        return m.version(n)\n"
             "    except m.PackageNotFoundError:\n        return None\n"
             "names = ['onnxruntime-gpu', 'onnxruntime', 'torch', 'tritonclient', 'numpy']\n"
             "names += sorted(d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].startswith('nvidia-'))\n"
             "print(json.dumps({n: v(n) for n in names}))\n")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", probe], check=False, capture_output=True, text=True, timeout=60)
    if result.returncode:
        return StepResult("venv", "fail", reason=f"the venv's python failed: {_tail(result.stderr)}", details=details)
    versions = json.loads(result.stdout.strip().splitlines()[-1])
    details["versions"] = versions
    problems = []
    if versions["onnxruntime-gpu"] != plan["onnxruntime_version"]:
        problems.append(f"onnxruntime-gpu is {versions['onnxruntime-gpu']}, the lock says {plan['onnxruntime_version']}")
    if versions["onnxruntime"]:
        problems.append(f"the CPU onnxruntime {versions['onnxruntime']} is installed beside onnxruntime-gpu")
    torch_version = versions["torch"] or ""
    if torch_version.split("+")[0] != TORCH_VERSION or torch_version.endswith("+cpu"):
        problems.append(f"torch is {torch_version or 'missing'}, expected the CUDA build of {TORCH_VERSION} "
                        "(a find-links or index offering the +cpu wheel first wins over PyPI's)")
    if problems:
        return StepResult("venv", "fail", reason="; ".join(problems), details=details)
    marker.write_text(plan["digest"] + "\n")
    cuda_libs = [f"{n} {v}" for n, v in versions.items() if n.startswith("nvidia-")]
    return StepResult("venv", "pass", details=details, reason=(
        f"{'reused' if details.get('reused') else 'built'}: onnxruntime-gpu {versions['onnxruntime-gpu']}, "
        f"torch {torch_version}, {len(cuda_libs)} nvidia-* wheels"))


def step_check(name: str, out: Path, env: dict, extra: list[str] | None = None) -> StepResult:
    """One check of tests/gpu/checks.py, run in .venv-gpu; it writes its verdict to build/gpu/<name>.json."""
    result_path = out / f"{name}.json"
    result_path.unlink(missing_ok=True)
    argv = [str(VENV / "bin" / "python"), "-m", "tests.gpu.checks", name, "--result", str(result_path),
            *(extra or [])]
    code, text = _run_logged(argv, out / "logs" / f"{name}.log", STEP_TIMEOUTS[name], env)
    if not result_path.is_file():
        why = "timed out" if code == 124 else f"exited {code}"
        return StepResult(name, "fail", reason=f"{why} without a verdict: {_tail(text)}")
    verdict = json.loads(result_path.read_text())
    status = "pass" if verdict.get("ok") and code == 0 else "fail"
    return StepResult(name, status, reason=verdict.get("reason", ""), details=verdict.get("details", {}))


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tests/gpu/run_gpu.py", description=__doc__.split("\n\n")[0],
                                     epilog="Exit codes: 0 passed, 1 a step failed, 2 usage, 77 no GPU (nothing run).")
    parser.add_argument("--force", action="store_true", default=os.environ.get("NNSERVE_GPU_FORCE") == "1",
                        help="run the steps without a GPU, as far as they go (also NNSERVE_GPU_FORCE=1)")
    parser.add_argument("--dry-run", action="store_true", help="write build/gpu/requirements.txt and constraints.txt, "
                        "print the pip commands and the steps; run nothing")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--wheels", default=os.environ.get("GPU_WHEELS") or None,
                        help="install .venv-gpu from this wheel folder only (pip --no-index --find-links; "
                             "also GPU_WHEELS)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the summary and logs go (default build/gpu)")
    parser.add_argument("--nvidia-smi", default="nvidia-smi", help=argparse.SUPPRESS)
    parser.add_argument("--dev-dir", default="/dev", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; the steps are {STEPS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpus, why = detect_gpu(args.nvidia_smi, args.dev_dir)
    if not gpus and not (args.force or args.dry_run):
        print(f"test-gpu: no NVIDIA GPU on this machine ({why}); nothing was run "
              f"(exit {EXIT_NO_GPU}; --force runs the steps anyway)", flush=True)
        return EXIT_NO_GPU
    out = args.out.resolve()
    plan = venv_plan(ROOT, args.wheels, VENV, out)
    if args.dry_run:
        write_plan_files(plan, out)
        print(f"test-gpu: dry run; GPUs: {gpus or why}")
        print(f"test-gpu: wrote {out / 'requirements.txt'} and {out / 'constraints.txt'}")
        for command in plan["commands"]:
            print("  $ " + " ".join(command))
        for name in args.steps:
            if name != "venv":
                print(f"  step {name}: {VENV / 'bin/python'} -m tests.gpu.checks {name} --result {out / (name + '.json')}")
        return EXIT_OK
    started = time.monotonic()
    meta = {"started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": (_git("rev-parse", "HEAD") or "unknown") + (" (with uncommitted changes)"
                                                                  if _git("status", "--porcelain") else ""),
            "host": f"{platform.node()} {platform.machine()}, Python {platform.python_version()}",
            "gpus": gpus or [f"none ({why})"], "forced": bool(args.force and not gpus)}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    results: list[StepResult] = []
    venv_ok = (VENV / "bin" / "python").exists()
    for name in STEPS:
        if name not in args.steps:
            continue
        t0 = time.monotonic()
        print(f"test-gpu: {name} ...", flush=True)
        if name == "venv":
            result = step_venv(plan, out, dry_run=False)
            venv_ok = result.status == "pass"
        elif not venv_ok:
            result = StepResult(name, "skip" if "venv" not in args.steps else "fail",
                                reason="needs .venv-gpu, which the venv step did not make")
        else:
            result = step_check(name, out, env)
            if name == "ort-cuda" and result.details.get("service_env"):
                env.update(result.details["service_env"])  # the later steps run with what made CUDA load
        result.seconds = round(time.monotonic() - t0, 1)
        results.append(result)
        print(f"test-gpu: {name}: {result.status} ({result.seconds:.1f} s) {result.reason}", flush=True)
    meta["wall_seconds"] = round(time.monotonic() - started, 1)
    doc = write_summary(out, results, meta)
    print(f"test-gpu: {'passed' if doc['passed'] else 'FAILED'} in {meta['wall_seconds']} s; "
          f"summary in {out / 'summary.md'} and summary.json", flush=True)
    return doc["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
