"""Dependency direction: service never loads torch or training; training never loads the web stack."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def loaded_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_service_loads_neither_torch_nor_training():
    modules = loaded_modules("import service.app, service.server, service.__main__")
    assert "flask" in modules  # the check sees what was loaded
    assert not {"torch", "training", "sklearn", "onnx"} & modules


def test_artifact_contract_is_standard_library_only():
    modules = loaded_modules("import service.artifact")
    assert not {"flask", "numpy", "onnxruntime", "prometheus_client", "torch"} & modules


def test_training_loads_no_web_stack():
    modules = loaded_modules("import training.__main__, training.trainer, training.export, training.config")
    assert "torch" in modules
    assert not {"flask", "gunicorn", "granian", "werkzeug", "prometheus_client"} & modules


def test_the_server_master_does_not_load_onnxruntime():
    """granian and gunicorn fork workers from the master; a worker that uses an onnxruntime the master imported
    aborts (SIGABRT, 'std::system_error') when it exits. Only workers import it, after the fork."""
    modules = loaded_modules("import service.__main__, service.server, service.settings, service.control")
    assert "gunicorn" in modules
    assert "onnxruntime" not in modules


# -- layers inside training/ ----------------------------------------------------------------------------------
# The lower modules know nothing of the loop that drives them: the trainer imports them, never the reverse.
LOWER = ("training.config", "training.config_toml", "training.data", "training.datafiles", "training.imagefiles",
         "training.prepare", "training.tasks", "training.network", "training.predict", "training.plots",
         "training.baselines", "training.runs", "training.optim", "training.distributed", "training.gan",
         "training.architectures")
UPPER = ("training.trainer", "training.loop", "training.export", "training.publish", "training.tune",
         "training.zoo", "training.retrain", "training.__main__")


def training_imports() -> dict[str, set[str]]:
    """Module -> the training modules it imports, read with ast from every file under training/, imports inside
    functions included (a lazy import is still a dependency)."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "training").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from training import gan`
        graph[module] = {name for name in found if name.startswith("training")}
    return graph


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_lower_training_modules_never_import_the_loop_or_what_drives_it():
    graph = training_imports()
    assert "training.loop" in graph["training.trainer"]  # the check sees imports...
    assert "training.tasks" in graph["training.data"]  # ...those inside functions too
    lower = [m for m in graph if _within(m, LOWER)]
    assert len(lower) >= len(LOWER)
    upward = sorted((m, target) for m in lower for target in graph[m] if _within(target, UPPER))
    assert upward == [], f"lower modules import the trainer or above: {upward}"


def test_training_has_no_import_cycle():
    graph = training_imports()
    edges = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(edges[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])


MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 350


def test_no_function_over_60_lines_and_no_module_over_350_in_training_and_service():
    """A newcomer reads any module in one sitting and any function on one screen."""
    import ast

    from tests.conftest import ROOT

    too_long = []
    for path in sorted([*(ROOT / "service").rglob("*.py"), *(ROOT / "training").rglob("*.py")]):
        text = path.read_text()
        where = path.relative_to(ROOT)
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{where}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}:{node.lineno} {node.name}: {lines} lines")
    assert too_long == []
