"""The /v1 convenience endpoint's request: {"instances": [...]} turned into a V2 request, one sample each."""

from __future__ import annotations

import json

import numpy as np

from service.errors import BadRequest
from service.protocol import InferRequest, RequestInput, brief, clip
from service.runtime import LoadedModel
from service.tensordata import ACCEPTED_JSON_KINDS, NUMPY_DTYPES, contains_bool, element_types


def instances_request(model: LoadedModel, body: bytes) -> InferRequest:
    """Turn {"instances": [...]} into a checked-form V2 request: one instance per sample.

    An instance is the sample itself (nested lists) for a single-input model, or an object by input name. A
    single-input model whose metadata names its features also takes an object by feature name, every feature given
    ({"alcohol": 13.2, ...}). An input the metadata names as `task_params.noise_input` (the GAN's latent vector) may
    be left out: it is drawn from a standard normal (optional "seed"), so {"label": 3} is enough. An input with a
    `default` in the metadata may be left out too; when one input alone has none, a bare instance is its value
    ("a prompt" for the text generator).
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise BadRequest('request body: expected {"instances": [...]} with at least one instance')
    specs = model.input_specs
    seed = doc.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise BadRequest(f"seed: expected a non-negative integer, got {brief(seed)}")
    columns = _instance_columns(model, instances, np.random.default_rng(seed))
    inputs = []
    problems = []
    for spec in specs:
        try:
            array = np.asarray(columns[spec["name"]])
        except ValueError:
            raise BadRequest(f"instances: every '{spec['name']}' must have the same shape {spec['shape'][1:]}") from None
        kinds = ACCEPTED_JSON_KINDS.get(spec["datatype"], "U")  # BYTES: strings
        if array.dtype.kind not in kinds or (array.dtype.kind in "iuf" and array.size and contains_bool(
                columns[spec["name"]], array.ndim)) or (  # [true, 0] reads as [1, 0]
                array.dtype.kind == "U" and not element_types(columns[spec["name"]], array.ndim) <= {str}):
            problems.append(f"input '{spec['name']}': expected {spec['datatype']} values")
            inputs.append(RequestInput(spec["name"], spec["datatype"], list(array.shape), None))
            continue
        if spec["datatype"] == "BYTES":
            value = np.empty(array.shape, dtype=object)
            value[...] = array.tolist() if array.ndim else str(array)
        else:
            value = array.astype(NUMPY_DTYPES[spec["datatype"]])
        inputs.append(RequestInput(spec["name"], spec["datatype"], list(array.shape), value))
    return InferRequest(inputs, None, problems=problems)


def _instance_columns(model: LoadedModel, instances: list, rng) -> dict[str, list]:
    """Input name -> its value in each instance (see `instances_request`)."""
    specs = model.input_specs
    columns: dict[str, list] = {t["name"]: [] for t in specs}
    features = model.features if len(specs) == 1 else None
    # the inputs an instance must give: a bare instance (not an object) is the value of the only one
    needed = [t["name"] for t in specs if t["name"] not in model.input_defaults and t["name"] != model.noise_input]
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            if len(specs) != 1 and len(needed) != 1:
                raise BadRequest(f"instances[{i}]: expected an object with {[t['name'] for t in specs]}")
            instance = {specs[0]["name"] if len(specs) == 1 else needed[0]: instance}
        elif features and set(instance) != {specs[0]["name"]}:
            instance = {specs[0]["name"]: _by_feature_name(instance, features, f"instances[{i}]")}
        unknown = [clip(str(k)) for k in instance if k not in columns]
        if unknown:
            raise BadRequest(f"instances[{i}]: unknown input(s) {unknown[:10]}; the model's inputs are {list(columns)}")
        for spec in specs:
            if spec["name"] not in instance:
                if spec["name"] == model.noise_input:  # drawn when an instance leaves it out
                    instance = {**instance, spec["name"]: rng.standard_normal(spec["shape"][1:]).tolist()}
                elif spec["name"] in model.input_defaults:  # the metadata's default
                    instance = {**instance, spec["name"]: model.input_defaults[spec["name"]]}
                else:
                    raise BadRequest(f"instances[{i}]: missing '{spec['name']}' ({spec['datatype']} "
                                     f"{spec['shape'][1:]})")
            columns[spec["name"]].append(instance[spec["name"]])
    return columns


def _by_feature_name(instance: dict, features: list[str], where: str) -> list:
    """One sample as the model's feature vector, from an object with a number for every feature name."""
    unknown = [name for name in instance if name not in features]
    missing = [name for name in features if name not in instance]
    if unknown or missing:
        said = ([f"unknown feature(s) {[clip(n) for n in unknown[:10]]}"] if unknown else []) + \
               ([f"missing feature(s) {missing[:10]}" + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")]
                if missing else [])
        listed = f"{features}" if len(features) <= 50 else f"{features[:50]} and {len(features) - 50} more"
        raise BadRequest(f"{where}: {' and '.join(said)}; the model's features are {listed}")
    row = [instance[name] for name in features]
    for name, value in zip(features, row):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadRequest(f"{where}.{name}: expected a number, got {brief(value)}")
    return row
