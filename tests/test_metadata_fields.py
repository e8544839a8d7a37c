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
