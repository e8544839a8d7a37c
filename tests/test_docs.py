"""The documentation: generated tables match the code, the site builds strictly, and nothing links outside the
repository."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
MKDOCS = Path(sys.executable).with_name("mkdocs")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Phrases that tell a story instead of the present state; history belongs in git.
HISTORY = re.compile(r"\bissue \d|an earlier version|no GPU was lent|fixed on the way|before this work", re.I)


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_tables_match_the_code():
    """Settings, metrics, endpoints and modules, regenerated in memory, equal what the pages hold."""
    stale = load_generator().stale_pages()
    assert not stale, (f"{sorted(p.name for p in stale)}: generated tables differ from the code; "
                       "run .venv-dev/bin/python docs/gen_reference.py")


def test_every_settings_field_and_metric_is_documented():
    """The generated tables are not empty: every Settings field and every collector has its row."""
    import dataclasses

    from service.settings import Settings

    text = (DOCS / "serving.md").read_text()
    for field in dataclasses.fields(Settings):
        if field.name != "extra":
            assert f"| `{field.name}` |" in text, f"serving.md: no row for the setting {field.name}"
    assert text.count("| `nnserve_") >= 10


def test_the_generator_imports_neither_torch_nor_training():
    code = ("import runpy, sys; g = runpy.run_path('docs/gen_reference.py'); "
            "[g[n]() for n in ('settings_table', 'metrics_table', 'endpoints_table', 'modules_table')]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing anchor or a page missing from the nav fails."""
    if not MKDOCS.exists():
        pytest.fail(f"{MKDOCS} is missing: install the dev extra (pip install -c requirements/dev.lock -e '.[dev]')")
    result = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "serving" / "index.html").exists()


def test_nothing_links_outside_the_repository():
    found = [(page.name, link) for page in PAGES for link in LINK.findall(page.read_text())
             if link.startswith(("http:", "https:", "//")) or "../" in link]
    assert found == []
    assert [p.name for p in PAGES if "../shared" in p.read_text()] == []


def test_the_readme_links_resolve():
    """The README is not part of the site, so its links are checked here: every target exists (anchors aside)."""
    links = [link.split("#")[0] for link in LINK.findall((ROOT / "README.md").read_text())]
    missing = [link for link in links if link and not (ROOT / link).exists()]
    assert missing == []
    assert {"docs/architecture.md", "docs/training.md", "docs/serving.md"} <= set(links)


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines; reference material belongs under docs/"


def test_docs_describe_the_present():
    found = [(page.name, m.group(0)) for page in PAGES for m in HISTORY.finditer(page.read_text())]
    assert found == []


def test_the_readme_prediction_is_what_the_server_answers(tmp_path):
    """The README's curl body, sent through the real app, gets the answer the README prints: the same JSON but for
    the last digits of the probabilities, which vary with the CPU's float kernels (1e-5 relative)."""
    import json
    import shutil

    from service.app import create_app
    from service.settings import Settings

    shutil.copytree(ROOT / "models" / "digits-mlp", tmp_path / "digits-mlp")
    text = (ROOT / "README.md").read_text()
    body = re.search(r"/v2/models/digits-mlp/infer -d '([^']+)'", text).group(1)
    shown = re.search(r'```json\n(\{"model_name":"digits-mlp".*?)\n```', text, re.S).group(1)
    app = create_app(Settings(models=tmp_path, background_load=False, poll_seconds=0))
    answer = app.test_client().post("/v2/models/digits-mlp/infer", data=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    got, expected = json.loads(answer.get_data()), json.loads(shown)
    got_data, expected_data = got["outputs"][0].pop("data"), expected["outputs"][0].pop("data")
    assert got == expected
    assert got_data == pytest.approx(expected_data, rel=1e-5, abs=1e-9)
    assert re.fullmatch(r'\{"model_name":"digits-mlp","model_version":"1","outputs":\[\{"name":"probabilities",'
                        r'"datatype":"FP32","shape":\[1,10\],"data":\[[-0-9.e,]+\]\}\]\}', shown)
