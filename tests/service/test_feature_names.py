"""A table model's feature names: in its metadata, in the model metadata answer, and accepted by name on /v1,
against the real server; a wrong shape's 400 says what one sample holds."""

from __future__ import annotations

import json

import pytest

from service import artifact
from tests.conftest import start_server
from tests.training.test_user_data import TINY_MLP, make_wine_csv, train_and_publish


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    """(server, feature names, one real sample, repository) for a tiny MLP trained on a wine CSV and published as
    wine-mlp."""
    base = tmp_path_factory.mktemp("wine")
    csv, names = make_wine_csv(base / "data" / "wine.csv")
    _, path = train_and_publish(csv, [*TINY_MLP, "data.target='cultivar'"], base / "run", base / "repo", "wine-mlp")
    sample = [float(v) for v in csv.read_text().splitlines()[1].split(",")[:-1]]
    srv = start_server(base / "repo", base, "--workers", "1")
    yield srv, names, sample, base / "repo"
    srv.stop()


def test_feature_names_are_in_the_metadata_and_the_model_metadata_answer(wine):
    srv, names, _, repo = wine
    status, answer = srv.json("GET", "/v2/models/wine-mlp")
    assert status == 200 and json.loads(answer["parameters"]["features"]) == names
    assert json.loads(answer["parameters"]["labels"]) == ["0", "1", "2"]
    assert artifact.read_metadata(repo / "wine-mlp" / "1")["features"] == names


def test_v1_accepts_instances_by_feature_name(wine):
    srv, names, sample, _ = wine
    by_name = dict(zip(reversed(names), reversed(sample)))  # any key order
    status, answer = srv.json("POST", "/v1/models/wine-mlp:predict", {"instances": [by_name, sample,
                                                                                    {"input": sample}]})
    assert status == 200, answer
    first, second, third = answer["predictions"]
    assert first == second == third and first["label"] in ("0", "1", "2")


@pytest.mark.parametrize("change, fragments", [
    (lambda row: {**row, "alcohl": 13.0}, ["instances[0]: unknown feature(s) ['alcohl']", "the model's features are"]),
    (lambda row: {k: v for k, v in row.items() if k != "ash"}, ["instances[0]: missing feature(s) ['ash']"]),
    (lambda row: {**row, "ash": "high"}, ["instances[0].ash: expected a number, got 'high'"]),
    (lambda row: {**row, "ash": True}, ["instances[0].ash: expected a number, got True"]),
])
def test_v1_by_name_names_unknown_missing_and_bad_values(wine, change, fragments):
    srv, names, sample, _ = wine
    status, answer = srv.json("POST", "/v1/models/wine-mlp:predict", {"instances": [change(dict(zip(names, sample)))]})
    assert status == 400
    for fragment in fragments:
        assert fragment in answer["error"], answer["error"]
    if "unknown" in fragments[0]:
        assert str(names) in answer["error"]


def test_a_wrong_shape_says_what_one_sample_holds(wine):
    srv, _, sample, _ = wine
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 12], "data": sample[:12]}]}
    status, answer = srv.json("POST", "/v2/models/wine-mlp/infer", body)
    assert status == 400 and "\n" not in answer["error"]
    assert ("input 'input': expected shape [-1, 13], got [1, 12] (each sample: 13 features in their own units, "
            "in the order of `features`)") in answer["error"]
