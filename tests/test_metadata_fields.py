"""The artifact contract's optional fields: features, preprocessing.before_graph and input_shapes, dataset_source."""

from __future__ import annotations

import pytest

from service import artifact
from tests.test_artifact import VALID, with_change

WITH_FIELDS = {**VALID, "features": ["a", "b", "c", "d"],
               "preprocessing": {"in_graph": True, "before_graph": ["keep the four columns as float32"],
                                 "input_shapes": {"input": "4 features in their own units"}},
               "training": {**VALID["training"], "dataset_source": "file"}}


def test_the_optional_fields_are_valid_and_optional():
    assert artifact.validate_metadata(WITH_FIELDS) == []
    assert artifact.validate_metadata(VALID) == []  # every shipped model has none of them


@pytest.mark.parametrize("change, fragment", [
    ({"features": "a,b,c,d"}, "features: expected a non-empty list of non-empty strings"),
    ({"features": ["a", "b", "c"]}, "features: 3 names, but input 'input' has shape [-1, 4] (expected [batch, 3])"),
    ({"features": ["a", "b", "a", "d"]}, "features: ['a'] appear more than once"),
    ({"features": ["a", "b", "c", ""]}, "features: expected a non-empty list of non-empty strings"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 2, 2]}]},
     "features: expected a model with one input of shape [batch, F]"),
    ({"preprocessing": {"before_graph": "resize"}}, "preprocessing.before_graph: expected a list of non-empty strings"),
    ({"preprocessing": {"input_shapes": {"input": 4}}},
     "preprocessing.input_shapes: expected an object of input name -> non-empty string"),
    ({"training": {**VALID["training"], "dataset_source": "url"}},
     "training.dataset_source: expected one of ['bundled', 'file', 'folder'], got 'url'"),
])
def test_a_bad_optional_field_is_named(change, fragment):
    problems = artifact.validate_metadata({**WITH_FIELDS, **change})
    assert any(fragment in p for p in problems), problems


def test_check_metadata_reports_the_field_in_one_line():
    with pytest.raises(artifact.MetadataError) as info:
        artifact.check_metadata(with_change("labels", ["a", "b", "c"]) | {"features": ["x"]}, "tiny version 1")
    assert "\n" not in str(info.value) and "features: 1 names" in str(info.value)


BOUNDED = {**VALID, "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [-1], "max_bytes": 4096},
                               {"name": "temperature", "datatype": "FP32", "shape": [-1], "minimum": 0.0,
                                "maximum": 10, "default": 0.8}]}


def test_input_bounds_and_defaults_are_valid():
    assert artifact.validate_metadata(BOUNDED) == []


@pytest.mark.parametrize("spec, fragment", [
    ({"name": "t", "datatype": "FP32", "shape": [-1], "minimum": "0"}, "inputs[0].minimum: expected a finite number"),
    ({"name": "t", "datatype": "FP32", "shape": [-1], "maximum": float("nan")}, "inputs[0].maximum: expected a finite"),
    ({"name": "t", "datatype": "FP32", "shape": [-1], "minimum": 2, "maximum": 1}, "minimum 2 is above maximum 1"),
    ({"name": "t", "datatype": "BYTES", "shape": [-1], "minimum": 0}, "inputs[0].minimum: expected a finite number "
                                                                      "bounding a numeric input"),
    ({"name": "t", "datatype": "BYTES", "shape": [-1], "max_bytes": 0}, "inputs[0].max_bytes: expected a positive"),
    ({"name": "t", "datatype": "FP32", "shape": [-1], "max_bytes": 10}, "max_bytes: expected a positive integer "
                                                                        "bounding a BYTES input"),
    ({"name": "t", "datatype": "INT64", "shape": [-1], "default": "3"}, "inputs[0].default: expected a number"),
    ({"name": "t", "datatype": "BYTES", "shape": [-1], "default": 3}, "inputs[0].default: expected a string"),
])
def test_a_bad_input_bound_is_named(spec, fragment):
    problems = artifact.validate_metadata({**VALID, "inputs": [spec]})
    assert any(fragment in p for p in problems), problems
