"""The models shipped in models/: all ten zoo models and the step graphs of the recurrent ones, each loads, matches
its config, and reaches its bar."""

from __future__ import annotations

import types

import numpy as np
import onnxruntime as ort
import pytest

from service import artifact
from service.runtime import load_model
from tests.conftest import SHIPPED_MODELS
from training.config import load_config
from training.export import predictor_metrics
from training.prepare import prepare
from training.stream import STREAM_SUFFIX, stream_predictor
from training.verify import metric_matches, ort_predictor
from training.texttasks import TEXT_ARCHS
from training.zoo import ZOO, stream_names, target_met

ALL_SHIPPED = [(name, version) for name in artifact.list_models(SHIPPED_MODELS)
               for version in artifact.list_versions(SHIPPED_MODELS / name)]
SHIPPED = [(name, version) for name, version in ALL_SHIPPED if name not in stream_names()]  # the window models
STREAMS = [(name, version) for name, version in ALL_SHIPPED if name in stream_names()]  # their step graphs


def test_every_zoo_model_is_shipped_and_nothing_else():
    assert sorted(name for name, _ in ALL_SHIPPED) == sorted([*ZOO, *stream_names()])
    assert all(version == 1 for _, version in ALL_SHIPPED)


def test_check_finds_nothing_wrong_with_the_shipped_repository():
    from training.repository import check_repository

    assert check_repository(SHIPPED_MODELS) == []


def _feed(spec: dict, batch: int, steps: int | None, rng) -> np.ndarray:
    shape = [batch] + [steps if d == -1 else d for d in spec["shape"][1:]]
    if spec["datatype"] == "INT64":
        return rng.integers(0, 10, shape).astype(np.int64)
    if spec["datatype"] == "BYTES":  # sentences of different lengths, in several scripts
        words = ["the", "Hund", "très", "кот", "日本語", "😀", "día", "ŻÓŁW"]
        return np.array([" ".join(rng.choice(words, int(rng.integers(0, 80)))) for _ in range(batch)], dtype=object)
    return rng.uniform(0, 16, shape).astype(np.float32)


@pytest.mark.parametrize("name, version", SHIPPED, ids=[f"{n}/{v}" for n, v in SHIPPED])
def test_shipped_model_takes_any_batch_and_sequence_length(name, version):
    """ONNX Runtime runs batch 1, 5 and 33 (and other sequence lengths); parity with torch was recorded there."""
    version_dir = SHIPPED_MODELS / name / str(version)
    meta = artifact.read_metadata(version_dir)
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    window = meta.get("task_params", {}).get("window")
    sequence = any(-1 in t["shape"][1:] for t in meta["inputs"])
    rng = np.random.default_rng(0)
    for batch in (1, 5, 33):
        for steps in ((window or 8) - 3, (window or 8) + 7) if sequence else (None,):
            outputs = session.run(None, {t["name"]: _feed(t, batch, steps, rng) for t in meta["inputs"]})
            for spec, value in zip(meta["outputs"], outputs):
                assert value.shape[0] == batch
                assert all(isinstance(v, str) for v in value.flat) if spec["datatype"] == "BYTES" else \
                    np.isfinite(value).all()
                assert list(value.shape[1:]) == [steps if d == -1 else d for d in spec["shape"][1:]]
    parity = meta["export"]["parity"]
    if "atol" not in parity:  # a text generator: every text equal, request by request
        assert {1, 5, 33} <= {c["batch"] for c in parity["checks"]}
        assert all(c["equal_texts"] == c["batch"] for c in parity["checks"])
        return
    batches = {c["input_shapes"][0][0] for c in parity["checks"]}
    assert {1, 5, 33} <= batches
    assert all(c["max_scaled_diff"] <= parity["atol"] for c in parity["checks"])
    if sequence:
        lengths = {c["input_shapes"][0][1] for c in parity["checks"]}
        assert len(lengths) >= 3, "parity was checked at sequence lengths other than the training window"


def test_the_repository_is_small_enough_for_git():
    total = sum(p.stat().st_size for p in SHIPPED_MODELS.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024, f"models/ holds {total / 1e6:.1f} MB"  # 15 models; the writer's LSTM is 1.4 MB


@pytest.mark.parametrize("name, version", SHIPPED, ids=[f"{n}/{v}" for n, v in SHIPPED])
def test_shipped_model_loads_matches_its_config_and_reaches_its_bar(name, version, tmp_path):
    version_dir = SHIPPED_MODELS / name / str(version)
    assert {"metadata.json", "model.onnx", "model_card.md", "plots"} <= {p.name for p in version_dir.iterdir()}
    model = load_model(version_dir, device="cpu")  # checks schema, hash, graph and embedded metadata
    meta = model.metadata
    config = load_config(name)
    assert meta["training"]["config_sha256"] == config.sha256(), (
        f"{name} was built from a config that has changed since; retrain it with `python -m training zoo`")

    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    if meta["task"] == "generation" and meta["outputs"][0]["datatype"] == "BYTES":
        # a text generator: its graph writes text, so its bits per character were measured on the torch model it
        # equals (the export compared their texts); here it must still write the samples its card shows
        _writes_its_samples(meta, session)
        summary = {"task": meta["task"], "metrics": meta["training"]["metrics"],
                   "baseline": meta["training"]["baseline"], "headline_metric": meta["training"]["headline_metric"]}
        assert target_met(name, summary), f"{name}: {summary['metrics']} misses the zoo's bar"
        return
    if config.arch in TEXT_ARCHS:
        metrics = _text_metrics(config, meta, session)
    else:
        prepared = prepare(config)
        assert prepared.split.describe() == meta["training"]["split"]
        plan = types.SimpleNamespace(inputs=meta["inputs"], outputs=meta["outputs"])
        metrics = predictor_metrics(ort_predictor(session, plan), config, prepared, tmp_path)
    recorded = meta["training"]["metrics"]
    headline = meta["training"]["headline_metric"]
    assert metric_matches(headline, metrics[headline], recorded[f"onnx_test_{headline}"])
    summary = {"task": meta["task"], "metrics": {f"test_{k}": v for k, v in metrics.items()},
               "baseline": meta["training"]["baseline"]}
    assert target_met(name, summary), f"{name}: {headline} {metrics[headline]:.4f} misses the zoo's bar"
    assert np.isfinite(list(metrics.values())).all()


@pytest.mark.parametrize("name, version", STREAMS, ids=[f"{n}/{v}" for n, v in STREAMS])
def test_shipped_stream_model_streams_as_its_window_model_and_reaches_its_bar(name, version, tmp_path):
    """Its graph takes the client's input plus config.pbtxt's START and states; the parity with the window graph
    was recorded at several lengths, the training window among them; streamed, it meets the zoo's bar."""
    from training.repository import triton_config

    version_dir = SHIPPED_MODELS / name / str(version)
    assert {"metadata.json", "model.onnx", "model_card.md"} <= {p.name for p in version_dir.iterdir()}
    meta = artifact.read_metadata(version_dir)
    assert (SHIPPED_MODELS / name / "config.pbtxt").read_text() == triton_config(meta)
    sequence = meta["sequence"]
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [n.name for n in session.get_inputs()] == ["input", sequence["start"], *[s["input_name"] for s in
                                                                                    sequence["states"]]]
    assert [n.name for n in session.get_outputs()] == ["forecast", *[s["output_name"] for s in sequence["states"]]]
    config = load_config(name.removesuffix(STREAM_SUFFIX))
    assert meta["training"]["config_sha256"] == config.sha256()
    stream = meta["export"]["parity"]["stream"]
    assert stream["max_scaled_diff"] <= stream["atol"]
    assert config.data["window"] in {c["length"] for c in stream["checks"]} and len(stream["checks"]) >= 6
    prepared = prepare(config)
    metrics = predictor_metrics(stream_predictor(session, sequence), config, prepared, tmp_path)
    headline = meta["training"]["headline_metric"]
    assert metric_matches(headline, metrics[headline], meta["training"]["metrics"][f"onnx_test_{headline}"])
    summary = {"task": meta["task"], "metrics": {f"test_{k}": v for k, v in metrics.items()},
               "baseline": meta["training"]["baseline"]}
    assert target_met(name, summary), f"{name}: streamed {headline} {metrics[headline]:.4f} misses the zoo's bar"


def _writes_its_samples(meta: dict, session) -> None:
    samples = meta["samples"]
    assert len(samples) >= 3 and all(s["text"] for s in samples)
    written = session.run(None, {"prompt": np.array([s["prompt"] for s in samples], dtype=object),
                                 "max_new_tokens": np.array([len(s["text"]) for s in samples], dtype=np.int64),
                                 "temperature": np.array([s["temperature"] for s in samples], dtype=np.float32),
                                 "seed": np.array([s["seed"] for s in samples], dtype=np.int64)})[0]
    assert list(written) == [s["text"] for s in samples]


def _text_metrics(config, meta: dict, session) -> dict:
    """A text model's test accuracy through ONNX Runtime on its own split (its data: Debian's fortune packages)."""
    from training.textdata import FORTUNE_PACKAGES, _installed
    from training.textfit import classification_metrics, load_text

    if config.dataset == "fortunes" and not all(_installed(p) for p in FORTUNE_PACKAGES.values()):
        pytest.skip("the fortune packages are not installed (python -m training zoo --only fortunes-language "
                    "installs them)")
    texts = load_text(config)
    assert texts.describe(config.seed) == meta["training"]["split"]
    test = np.array(texts.texts("test"), dtype=object)
    probs = np.concatenate([session.run(None, {"text": test[i:i + 512]})[0] for i in range(0, len(test), 512)])
    return {"accuracy": classification_metrics(probs, texts.y("test"), len(meta["labels"]))["accuracy"]}


def _pages_with(marker: str) -> list[Path]:
    from tests.conftest import ROOT

    return [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))] if marker in p.read_text()]


def test_the_documented_zoo_table_is_what_the_shipped_models_measured():
    """The zoo table in the docs is `python -m training zoo`'s own table, built from the shipped models' metadata."""
    from training.zoo import markdown_table, table_rows

    summaries = {}
    for name in ZOO:
        meta = artifact.read_metadata(SHIPPED_MODELS / name / "1")
        training = meta["training"]
        summaries[name] = {"task": meta["task"], "headline_metric": training["headline_metric"],
                           "metrics": training["metrics"], "baseline": training["baseline"],
                           "train_seconds": training["train_seconds"]}
    pages = _pages_with("<!-- generated: zoo -->")
    assert len(pages) == 1, f"one page holds the zoo table, found {pages}"
    text = pages[0].read_text()
    documented = text.split("<!-- generated: zoo -->\n", 1)[1].split("<!-- end -->", 1)[0]
    assert documented == markdown_table(table_rows(summaries))


def test_no_shipped_file_names_a_local_path():
    """The exporter's per-node stack traces (absolute source paths) are removed; no file holds the author's paths."""
    from tests.conftest import ROOT

    local = [str(ROOT).encode(), b"pkg.torch.onnx.stack_trace", b"/home/", b"/tmp/", b"/root/", b"site-packages"]
    found = [(str(p.relative_to(SHIPPED_MODELS)), m.decode()) for p in SHIPPED_MODELS.rglob("*") if p.is_file()
             for m in local if m in p.read_bytes()]
    assert found == []
