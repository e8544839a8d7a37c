"""A user's own data, end to end: image folders train at their own size and record every preprocessing step, a CSV
records its feature names, published files hold no local path, and a changed signature is refused unless forced."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service import artifact
from tests.conftest import ROOT
from training.config import RunConfig, apply_overrides
from training.data import dataset_label, load_dataset
from training.export import export_run
from training.publish import SignatureChanged, publish
from training.trainer import fit

TINY_CNN = ["arch='cnn'", "train.epochs=2", "model.channels=[4]", "model.kernel_sizes=[3]", "model.hidden_dim=8"]
TINY_MLP = ["arch='mlp'", "train.epochs=3", "model.hidden_dims=[16]"]


def make_image_folder(root: Path, size: tuple[int, int] = (32, 32), per_class: int = 10) -> Path:
    """Two classes of grayscale PNGs, dark and light noise, so that a tiny model can tell them apart."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 100, (size[1], size[0])) + 150 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def make_wine_csv(path: Path) -> tuple[Path, list[str]]:
    """scikit-learn's wine data as a user's CSV: the feature columns, then `cultivar`."""
    from sklearn.datasets import load_wine

    bunch = load_wine()
    names = list(bunch.feature_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [",".join(names + ["cultivar"])]
    rows += [",".join([f"{v:g}" for v in x] + [str(t)]) for x, t in zip(bunch.data, bunch.target)]
    path.write_text("\n".join(rows) + "\n")
    return path, names


def train_and_publish(dataset: Path, overrides: list[str], run: Path, repo: Path, name: str, **publish_args):
    config = apply_overrides(RunConfig(), [f"dataset={str(dataset)!r}", *overrides])
    fit(config, run, log=lambda _m: None)
    exported, resolved, summary = export_run(run)
    return publish(exported, resolved, summary, name, repo, run, **publish_args)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("private-data") / "shapes")


@pytest.fixture(scope="module")
def shapes_v1(image_folder, tmp_path_factory) -> tuple[Path, Path]:
    """(repository, version folder) of a tiny CNN trained on the 32x32 folder with no image_size given."""
    base = tmp_path_factory.mktemp("shapes")
    version, path = train_and_publish(image_folder, TINY_CNN, base / "run", base / "repo", "shapes")
    assert version == 1
    return base / "repo", path


def test_an_image_folder_trains_at_its_own_size_and_records_its_preprocessing(shapes_v1):
    repo, version_dir = shapes_v1
    meta = artifact.read_metadata(version_dir)
    assert meta["inputs"][0]["shape"] == [-1, 1, 32, 32]
    assert meta["training"]["hyperparameters"]["network"]["image_size"] == 32
    assert meta["training"]["dataset"] == "shapes/" and meta["training"]["dataset_source"] == "folder"
    steps = meta["preprocessing"]["before_graph"]
    for fragment in ("EXIF", "grayscale", "no resize: every training image was 32x32", "0-255",
                     "[C, H, W] = [1, 32, 32]", "the graph itself does the standardization"):
        assert any(fragment in step for step in steps), (fragment, steps)
    assert meta["preprocessing"]["steps"] == ["standardize each channel with the training split's mean and std"]
    assert "32x32 pixels, values 0-255" in meta["preprocessing"]["input_shapes"]["input"]
    card = (version_dir / "model_card.md").read_text()
    assert "## Preprocessing" in card and "| input | `input` | FP32 | [-1, 1, 32, 32] |" in card
    for step in steps:
        assert step in card


def test_an_explicit_image_size_resizes_and_says_from_what(image_folder):
    data = load_dataset(str(image_folder), {"image_size": 16})
    assert data.X.shape[1:] == (1, 16, 16)
    assert any("resize from 32x32 (width x height) to 16x16" in step for step in data.loading), data.loading


def test_mixed_image_sizes_are_refused_with_the_sizes_and_the_fix(tmp_path):
    root = make_image_folder(tmp_path / "mixed", per_class=2)
    Image.new("L", (16, 16), 0).save(root / "light" / "small.png")
    proc = subprocess.run([sys.executable, "-m", "training", "fit", "--arch", "cnn", "--dataset", str(root),
                           "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(root) in lines[0] and "16x16 (light/small.png)" in lines[0] and "32x32 (dark/0.png)" in lines[0]
    assert "--set data.image_size=N" in lines[0]


def test_a_changed_signature_is_refused_unless_forced(image_folder, shapes_v1, tmp_path):
    repo, _ = shapes_v1
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    config = apply_overrides(RunConfig(), [f"dataset={str(image_folder)!r}", "data.image_size=16", *TINY_CNN])
    fit(config, tmp_path / "run16", log=lambda _m: None)
    exported, resolved, summary = export_run(tmp_path / "run16")
    with pytest.raises(SignatureChanged) as info:
        publish(exported, resolved, summary, "shapes", copy, tmp_path / "run16")
    message = str(info.value)
    assert "input 'input': dims [1, 32, 32] -> [1, 16, 16]" in message and "--force" in message
    assert info.value.changes == ["input 'input': dims [1, 32, 32] -> [1, 16, 16]"]
    assert artifact.list_versions(copy / "shapes") == [1]
    assert not [p for p in (copy / "shapes").iterdir() if p.name.startswith(artifact.TMP_PREFIX)]
    assert "dims: [ 1, 32, 32 ]" in (copy / "shapes" / "config.pbtxt").read_text()

    said = []
    version, path = publish(exported, resolved, summary, "shapes", copy, tmp_path / "run16", force=True,
                            log=said.append)
    assert version == 2 and artifact.read_metadata(path)["inputs"][0]["shape"] == [-1, 1, 16, 16]
    assert len(said) == 1 and "dims [1, 32, 32] -> [1, 16, 16]" in said[0]
    assert "dims: [ 1, 16, 16 ]" in (copy / "shapes" / "config.pbtxt").read_text()
    # the same signature again: no refusal, nothing to force
    assert publish(exported, resolved, summary, "shapes", copy, tmp_path / "run16", log=said.append)[0] == 3
    assert len(said) == 1


def published_texts(version_dir: Path) -> dict[str, bytes]:
    files = {p.relative_to(version_dir).as_posix(): p.read_bytes() for p in version_dir.rglob("*") if p.is_file()}
    files["../config.pbtxt"] = (version_dir.parent / "config.pbtxt").read_bytes()
    return files


def assert_no_local_path(version_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    forbidden = [str(tmp_path), str(data_dir), f"/{data_dir.name}", str(ROOT) + "/"]  # ROOT: the training code
    home = str(Path.home())
    if len(home) > 1:
        forbidden.append(home + "/")
    for filename, data in published_texts(version_dir).items():
        for text in forbidden:
            assert text.encode() not in data, f"{filename} holds {text!r}"


def test_no_published_file_holds_a_local_path(shapes_v1, image_folder, tmp_path):
    _, version_dir = shapes_v1
    assert_no_local_path(version_dir, image_folder.parent, image_folder.parent.parent)


def test_a_csv_is_named_by_its_file_and_records_its_feature_names(tmp_path):
    data_dir = tmp_path / "home-of-the-author" / "private-data"
    csv, names = make_wine_csv(data_dir / "wine.csv")
    data = load_dataset(str(csv), {"target": "cultivar"})
    assert (data.name, data.source, data.features) == ("wine.csv", "file", names)
    version, path = train_and_publish(csv, [*TINY_MLP, "data.target='cultivar'"], tmp_path / "run",
                                      tmp_path / "repo", "wine-mlp")
    meta = artifact.read_metadata(path)
    assert meta["features"] == names and meta["inputs"][0]["shape"] == [-1, 13]
    assert meta["training"]["dataset"] == "wine.csv" and meta["training"]["dataset_source"] == "file"
    assert meta["training"]["dataset_description"].startswith("wine.csv: features")
    assert "in the order of `features`" in meta["preprocessing"]["input_shapes"]["input"]
    card = (path / "model_card.md").read_text()
    assert "Features, in input order (13): `alcohol`, `malic_acid`" in card
    assert "/v1/models/wine-mlp:predict" in card and '"alcohol": ' in card
    assert_no_local_path(path, data_dir, tmp_path)


def test_bundled_datasets_keep_their_names_and_bring_their_feature_names():
    from sklearn.datasets import load_wine

    data = load_dataset("wine")
    assert (data.name, data.source, data.features) == ("wine", "bundled", list(load_wine().feature_names))
    digits = load_dataset("digits")
    assert digits.features is None and digits.loading and "0-16" in digits.sample


@pytest.mark.parametrize("dataset, label", [
    ("wine", "wine"), ("digits", "digits"), ("/home/me/data/wine.csv", "wine-csv"), ("data/My Set.NPZ", "My-Set-npz"),
    ("/srv/images/pets/", "pets"), ("../pets", "pets"),
])
def test_dataset_label_is_short_and_safe_for_run_folders(dataset, label):
    assert dataset_label(dataset) == label
    assert artifact.is_valid_name(dataset_label(dataset))
