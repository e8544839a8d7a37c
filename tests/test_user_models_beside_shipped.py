"""A user who publishes into the checkout's models/ (`export --models models`, `zoo --models models`) still gets a
green test suite.

The tests check the repository as git ships it (tests.conftest.shipped_models), not whatever models/ holds."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from service import artifact
from tests.conftest import ROOT


def _checkout_copy(target) -> None:
    """The project's tracked files, as in a fresh clone (with the working tree's edits), in a git repository."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True)


def test_models_a_user_published_into_models_leave_the_shipped_repository_tests_green(trained_run, tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the shipped repository is models/ as it is")
    clone = tmp_path / "clone"
    _checkout_copy(clone)
    for name in ("my-digits-mlp", "digits-mlp"):  # a new model, and a new version of a shipped one
        subprocess.run([sys.executable, "-m", "training", "export", str(trained_run), "--name", name,
                        "--models", "models"], cwd=clone, check=True, capture_output=True, timeout=300)
    assert artifact.list_versions(clone / "models" / "my-digits-mlp") == [1]
    assert artifact.list_versions(clone / "models" / "digits-mlp") == [1, 2]

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_shipped_models.py",
         "tests/test_artifact.py", "-k", "shipped or publisher"],
        cwd=clone, capture_output=True, text=True, timeout=600)
    assert f"rootdir: {clone}" in result.stdout, result.stdout[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
