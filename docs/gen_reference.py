"""Write the documentation's generated tables from the code, so that they cannot drift from it.

    .venv-dev/bin/python docs/gen_reference.py           # rewrite every generated block in docs/*.md
    .venv-dev/bin/python docs/gen_reference.py --check   # exit 1, naming each block that differs

A block sits between `<!-- generated: NAME -->` and `<!-- end -->` in a page. The blocks written here:

- `settings` (serving.md): every field of `service.settings.Settings`, its flag of `python -m service`, its
  NNSERVE_* variable, its default and its docstring;
- `metrics` (serving.md): the collectors of `service.metrics.Metrics`: name, type, labels and help;
- `endpoints` (serving.md): method, path and summary of every operation in `service/openapi.json`;
- `modules` (architecture.md): every module of service/ and training/ with the first sentence of its docstring.

The `zoo` block (training.md) is `python -m training zoo`'s table; tests/test_shipped_models.py checks it against
the shipped models. This script imports service modules only: never torch, never training.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z]+) -->\n)(?P<body>.*?)(<!-- end -->)", re.S)
PAGES = {"settings": "serving.md", "metrics": "serving.md", "endpoints": "serving.md", "modules": "architecture.md"}
PACKAGES = ("service", "training")
SKIPPED_FOLDERS = {"__pycache__", "configs", "triton"}  # data, and Triton's generated protobuf modules


def cell(text: str) -> str:
    """Text fit for one Markdown table cell: one line, pipes and angle brackets escaped."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source with ast."""
    source = Path(sys.modules[cls.__module__].__file__).read_text()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs, body = {}, node.body
    for stmt, following in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[stmt.target.id] = following.value.value
    return docs


def service_flags() -> dict[str, list[str]]:
    """Settings field -> its option strings in `python -m service` (the argparse destination is the field)."""
    from service import __main__ as cli

    if hasattr(cli, "build_parser"):
        parser = cli.build_parser()
    else:  # parse_args builds its parser inside: catch it on its way through argparse
        caught = []
        original = argparse.ArgumentParser.parse_args

        def catch(self, args=None, namespace=None):
            caught.append(self)
            return original(self, [], namespace)

        argparse.ArgumentParser.parse_args = catch
        try:
            cli.parse_args([])
        finally:
            argparse.ArgumentParser.parse_args = original
        parser = caught[0]
    return {action.dest: list(action.option_strings) for action in parser._actions if action.dest != "help"}


def show_default(name: str, value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "empty"
    if isinstance(value, int) and name.endswith("_bytes") and value >= 1 << 20:
        unit, size = ("GiB", value >> 30) if value % (1 << 30) == 0 else ("MiB", value >> 20)
        return f"`{value}` ({size} {unit})"
    return f"`{value}`"


def settings_table() -> str:
    from service.settings import ENV_PREFIX, Settings

    docs, flags, rows = field_docs(Settings), service_flags(), []
    for f in dataclasses.fields(Settings):
        if f.name == "extra":  # free-form overrides for tests; neither a flag nor a variable
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        variable = f"`{ENV_PREFIX}{f.name.upper()}`" + (" (`1`/`0`)" if isinstance(default, bool) else "")
        flag = ", ".join(f"`{o}`" for o in flags.get(f.name, [])) or "-"
        rows.append([f"`{f.name}`", flag, variable, show_default(f.name, default), cell(docs.get(f.name, ""))])
    return table(["Setting", "Flag", "Variable", "Default", "Meaning"], rows)


def metrics_table() -> str:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from service.metrics import Metrics

    rows = []
    for collector in vars(Metrics()).values():  # a fresh app's collectors, on their own CollectorRegistry
        if isinstance(collector, MetricWrapperBase):
            name = collector._name + ("_total" if collector._type == "counter" else "")
            labels = ", ".join(f"`{label}`" for label in collector._labelnames) or "-"
            rows.append([f"`{name}`", collector._type, labels, cell(collector._documentation)])
        elif hasattr(collector, "collect") and not isinstance(collector, CollectorRegistry):  # a custom collector
            for family in collector.collect():
                name = family.name + ("_total" if family.type == "counter" else "")
                labels = ", ".join(f"`{label}`" for label in getattr(family, "_labelnames", ())) or "-"
                rows.append([f"`{name}`", family.type, labels, cell(family.documentation)])
    return table(["Metric", "Type", "Labels", "Help"], rows)


def endpoints_table() -> str:
    spec = json.loads((ROOT / "service" / "openapi.json").read_text())
    rows = [[method.upper(), f"`{path}`", cell(operation.get("summary", ""))]
            for path, operations in spec["paths"].items() for method, operation in operations.items()
            if isinstance(operation, dict) and "responses" in operation]
    return table(["Method", "Path", "Summary"], rows)


def first_sentence(doc: str | None) -> str:
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    match = re.search(r"(?<=[a-z0-9)`'])\. ", paragraph)
    return cell(paragraph[:match.start() + 1] if match else paragraph)


def modules_table() -> str:
    rows = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if SKIPPED_FOLDERS & set(relative.parts[:-1]):
                continue
            rows.append([f"`{relative.as_posix()}`", first_sentence(ast.get_docstring(ast.parse(path.read_text())))])
    return table(["Module", "What it holds"], rows)


GENERATORS = {"settings": settings_table, "metrics": metrics_table, "endpoints": endpoints_table,
              "modules": modules_table}


def render(text: str, blocks: dict[str, str]) -> str:
    """`text` with every generated block whose name is in `blocks` replaced by its new body."""
    return BLOCK.sub(lambda m: m.group(1) + blocks.get(m.group("name"), m.group("body")) + m.group(4), text)


def stale_pages() -> dict[Path, str]:
    """Page -> its text with fresh blocks, for every page whose blocks differ from the code."""
    fresh = {name: make() for name, make in GENERATORS.items()}
    changed = {}
    for page in sorted(set(PAGES.values())):
        path = DOCS / page
        text = path.read_text()
        missing = [n for n, p in PAGES.items() if p == page and f"<!-- generated: {n} -->" not in text]
        if missing:
            raise SystemExit(f"docs/{page}: no <!-- generated: {missing[0]} --> block")
        new = render(text, fresh)
        if new != text:
            changed[path] = new
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs")
    args = parser.parse_args(argv)
    changed = stale_pages()
    for path, text in changed.items():
        if args.check:
            print(f"{path.relative_to(ROOT)}: generated tables differ from the code; run python docs/gen_reference.py")
        else:
            path.write_text(text)
            print(f"{path.relative_to(ROOT)}: generated tables rewritten")
    return 1 if changed and args.check else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
