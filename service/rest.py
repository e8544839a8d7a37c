"""HTTP routes of the Open Inference Protocol (V2): turn requests into DataPlane calls and results into HTTP."""

from __future__ import annotations

import json
from importlib import resources

from flask import Blueprint, Response, current_app, g, request

from service import handlers
from service.auth import authorize
from service.compression import decompress
from service.dataplane import DataPlane
from service.errors import BadRequest
from service.protocol import HEADER_LENGTH, PARAMETER_TYPES, brief

bp = Blueprint("v2", __name__)
OPENAPI = resources.files(__package__).joinpath("openapi.json").read_bytes()
"""The OpenAPI 3 description of this HTTP API, served as is at /openapi.json (tests keep it in step with the routes)."""


def _plane() -> DataPlane:
    return current_app.extensions["nnserve"]


def json_response(payload, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":"), allow_nan=False), status=status,
                    mimetype="application/json")


@bp.get("/v2")
def server_metadata():
    return json_response(_plane().server_metadata())


@bp.get("/v2/health/live")
@bp.get("/v2/health/ready")
def health():
    """Reached only for what the fast path passes on (HEAD): the same handler."""
    status, payload = handlers.health(_plane(), request.path)
    return Response(payload, status=status, mimetype="application/json")


@bp.get("/v2/models")
def model_index():
    return json_response(_plane().model_index())


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    return json_response(_plane().model_metadata(name, version))


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    return json_response(_plane().model_ready(name, version))


def _request_body() -> bytes:
    """The body, decompressed per Content-Encoding within the body-size limit (a zip bomb gets 413)."""
    return decompress(request.get_data(cache=False), request.headers.get("Content-Encoding"),
                      _plane().settings.max_body_bytes)


def _note_model(model) -> None:
    g.model, g.version = model.name, model.version_str  # for the request's log line


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    """Reached only where the fast path passes (no Content-Length and not chunked, or a body over the limit,
    which get_data refuses with 413): the same handler."""
    sent = request.headers
    payload, headers, model = handlers.infer(_plane(), name, version, request.get_data(cache=False),
                                             sent.get(HEADER_LENGTH), sent.get("Content-Encoding"),
                                             sent.get("Accept-Encoding"))
    _note_model(model)
    response = Response(payload)
    for key, value in headers:
        response.headers[key] = value
    return response


@bp.get("/v2/models/<name>/config")
@bp.get("/v2/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None):
    return json_response(_plane().model_config(name, version))


@bp.get("/v2/models/stats")
@bp.get("/v2/models/<name>/stats")
@bp.get("/v2/models/<name>/versions/<version>/stats")
def model_statistics(name: str | None = None, version: str | None = None):
    return json_response(_plane().model_statistics(name, version))


@bp.post("/v1/models/<name>:predict")
def predict(name: str):
    """Convenience endpoint for people and simple scripts: {"instances": [...]} -> {"predictions": [...]}."""
    payload, model = _plane().predict(name, _request_body())
    _note_model(model)
    return Response(payload, mimetype="application/json")


def _authorize() -> None:
    """The repository calls change what is served: they need the operator's bearer token."""
    authorize(request.headers.get("Authorization", ""), _plane().settings.repository_token,
              "the repository extension needs the header 'Authorization: Bearer <token>' with the operator's token")


def _json_body(optional: bool = True) -> dict:
    body = request.get_data(cache=False)
    if not body.strip() and optional:
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(f"request body: expected a JSON object, got {type(value).__name__}")
    return value


def _repository_parameters(body: dict) -> dict:
    """A load/unload body's `parameters`: an object of strings, numbers and booleans, as everywhere in V2."""
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest(f"parameters: expected an object, got {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(value, PARAMETER_TYPES):
            raise BadRequest(f"parameters.{key[:64]}: expected a string, number or boolean, "
                             f"got {type(value).__name__}")
    return params


@bp.post("/v2/repository/index")
def repository_index():
    _authorize()
    ready = _json_body().get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest(f"ready: expected a boolean, got {brief(ready)}")
    return json_response(_plane().repository_index(ready))


@bp.post("/v2/repository/models/<name>/load")
def repository_load(name: str):
    _authorize()
    _plane().load_model(name, _repository_parameters(_json_body()))
    return json_response({})


@bp.post("/v2/repository/models/<name>/unload")
def repository_unload(name: str):
    _authorize()
    _repository_parameters(_json_body())
    _plane().unload_model(name)
    return json_response({})


@bp.get("/metrics")
def metrics():
    body, content_type = _plane().metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    return Response(OPENAPI, mimetype="application/json")
