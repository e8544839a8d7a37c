"""The OpenAPI description of nnserve's HTTP API (service/openapi.json): a valid OpenAPI 3 document, in step with
the app's routes and with the V2 specification in ../shared, and true of the real server, which schemathesis fuzzes
against it with every default check (no 5xx, no status, content type, header or body the description does not allow).

To fuzz a running server by hand with the same settings:
    .venv-dev/bin/schemathesis --config-file tests/service/schemathesis.toml run service/openapi.json \\
        --url http://127.0.0.1:8080 -H 'Authorization: Bearer <NNSERVE_REPOSITORY_TOKEN>'
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

from service import __version__
from service.app import create_app
from service.fastpath import FastPath
from service.settings import Settings
from tests.conftest import ROOT, SHIPPED_MODELS, start_server
from tests.service.test_server import sample_value

DOCUMENT_PATH = ROOT / "service" / "openapi.json"
V2_SPEC_PATH = ROOT.parent / "shared" / "reference" / "open_inference_rest.yaml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SCHEMATHESIS_CONFIG = ROOT / "tests" / "service" / "schemathesis.toml"
TOKEN = "openapi-fuzz-token"
SEED = 20261121
MIN_REQUESTS = 3000
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Where nnserve's schema requires more than the V2 yaml's schema of the same name: the server always sends it.
EXTRA_REQUIRED = {"inference_error_response": {"error"}}


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(DOCUMENT_PATH.read_text())


@pytest.fixture(scope="module")
def v2_spec() -> dict:
    assert V2_SPEC_PATH.is_file(), f"the V2 specification is missing: {V2_SPEC_PATH} (../shared beside the clone)"
    return yaml.safe_load(V2_SPEC_PATH.read_text())


def operations(doc: dict) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item if method in HTTP_METHODS}


def deref(doc: dict, node):
    """`node` with its local `$ref` (if any) followed, repeatedly."""
    while isinstance(node, dict) and "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_validator(doc: dict, schema: dict) -> jsonschema.Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references resolve in `doc`."""
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


# -- the document itself ------------------------------------------------------------------------------------------
def test_the_document_is_valid_openapi_3(document):
    from schemathesis.specs.openapi.definitions import OPENAPI_30  # the OpenAPI 3.0 JSON Schema

    errors = sorted(jsonschema.Draft4Validator(OPENAPI_30).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message[:300]}" for e in errors)
    assert document["openapi"].startswith("3.0.") and document["info"]["version"] == __version__


def test_every_reference_resolves_and_every_schema_is_valid_json_schema(document):
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(document)))
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        deref(document, {"$ref": ref})  # KeyError when it points nowhere
    for name, schema in document["components"]["schemas"].items():
        jsonschema.Draft4Validator.check_schema(schema)
        assert schema.get("title", name) == name


def test_the_examples_are_valid_for_their_schemas(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            media_types = {**operation.get("requestBody", {}).get("content", {})}
            for status, response in operation["responses"].items():
                media_types.update({f"{status} {k}": v for k, v in response.get("content", {}).items()})
            for where, media in media_types.items():
                examples = [e["value"] for e in media.get("examples", {}).values()]
                if "example" in media:
                    examples.append(media["example"])
                for example in examples:
                    errors = list(schema_validator(document, media["schema"]).iter_errors(example))
                    assert not errors, f"{method.upper()} {path} {where}: {errors[0].message[:300]}"
    for name, parameter in document["components"]["parameters"].items():
        if "example" in parameter:
            schema_validator(document, parameter["schema"]).validate(parameter["example"])


def test_every_route_of_the_app_is_described_and_nothing_else(tmp_path, document):
    app = create_app(Settings(models=tmp_path, background_load=False, poll_seconds=0))
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>", r"{\1}", rule.rule)
        routes |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    described = operations(document)
    assert routes - described == set(), "routes the description lacks"
    assert described - routes == set(), "operations the app does not have"


def test_every_operation_documents_its_errors_as_json(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["operationId"] and operation["summary"], (method, path)
            path_params = set(re.findall(r"{(\w+)}", path))
            declared = {deref(document, p)["name"] for p in operation.get("parameters", [])
                        if deref(document, p)["in"] == "path"}
            assert declared == path_params, (method, path)
            for status, response in operation["responses"].items():
                assert "X-Request-ID" in response.get("headers", {}), (method, path, status)
                if status.startswith(("4", "5")) and not (path == "/v2/health/ready" and status == "503"):
                    schema = deref(document, response["content"]["application/json"]["schema"])
                    assert schema["required"] == ["error"], (method, path, status)
            if any(p["$ref"].endswith("/Content-Encoding") for p in operation.get("parameters", []) if "$ref" in p):
                assert {"400", "413", "415"} <= set(operation["responses"]), (method, path)
            if "security" in operation:
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            if "requestBody" in operation:
                assert "413" in operation["responses"], (method, path)


# -- consistency with the V2 specification ------------------------------------------------------------------------
def v2_path(path: str) -> str:
    """The V2 yaml's path in nnserve's spelling: `${MODEL_NAME}` -> `{name}`; its `/v2/` is `GET v2` in the
    protocol's text (a trailing slash makes tritonclient's `GET /v2` a redirect)."""
    path = path.replace("${MODEL_NAME}", "{name}").replace("${MODEL_VERSION}", "{version}")
    return path.rstrip("/") or "/"


def test_every_v2_operation_is_implemented_with_the_same_method(document, v2_spec):
    ours = operations(document)
    theirs = {(v2_path(path), method.upper()) for path, item in v2_spec["paths"].items()
              for method in item if method in HTTP_METHODS}
    assert len(theirs) == 6
    assert theirs - ours == set()
    # nnserve also serves each of them without a version (the protocol's `[/versions/{v}]`)
    for path, method in theirs:
        assert (path.replace("/versions/{version}", ""), method) in ours


def test_v2_operations_use_the_v2_schemas(document, v2_spec):
    """Each V2 operation's request and success bodies are the V2 schemas of the same name."""
    for path, item in v2_spec["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            for version_path in {v2_path(path), v2_path(path).replace("/versions/{version}", "")}:
                ours = document["paths"][version_path][method]
                theirs_body = operation.get("requestBody", {}).get("content", {})
                for media, content in theirs_body.items():
                    assert ours["requestBody"]["content"][media]["schema"] == content["schema"], (path, media)
                for status, response in operation["responses"].items():
                    for media, content in response.get("content", {}).items():
                        if status == "200" or status in ours["responses"]:
                            ours_schema = ours["responses"][status]["content"][media]["schema"]
                            assert ours_schema == content["schema"], (method, path, status)


def test_shared_schemas_keep_the_v2_shape(document, v2_spec):
    """Every schema nnserve shares with the V2 yaml has its type, its properties (with their types) and exactly
    its required properties (plus the few nnserve always sends, EXTRA_REQUIRED)."""
    ours, theirs = document["components"]["schemas"], v2_spec["components"]["schemas"]
    referenced = set(re.findall(r"#/components/schemas/(\w+)", json.dumps(v2_spec["paths"])))
    assert referenced <= set(ours)
    shared = set(ours) & set(theirs)
    assert shared >= {"metadata_server_response", "metadata_model_response", "metadata_tensor", "inference_request",
                      "inference_response", "request_input", "request_output", "response_output", "tensor_data",
                      "parameters", "inference_error_response"}
    for name in sorted(shared):
        mine, spec = ours[name], theirs[name]
        assert mine.get("type") == spec.get("type"), name
        assert set(mine.get("required", [])) == set(spec.get("required", [])) | EXTRA_REQUIRED.get(name, set()), name
        for prop, prop_spec in spec.get("properties", {}).items():
            assert prop in mine["properties"], (name, prop)
            mine_prop = deref(document, mine["properties"][prop])
            assert mine_prop.get("type") == deref(v2_spec, prop_spec).get("type"), (name, prop)
            if "items" in prop_spec:
                assert mine_prop["items"].get("$ref") == prop_spec["items"].get("$ref") or \
                    mine_prop["items"].get("type") == prop_spec["items"].get("type"), (name, prop)


# -- the real server ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """One worker serving the shipped models, with the repository extension on."""
    srv = start_server(SHIPPED_MODELS, tmp_path_factory.mktemp("openapi-logs"), "--workers", "1",
                       env={"NNSERVE_REPOSITORY_TOKEN": TOKEN})
    yield srv
    srv.stop()


def http_requests_answered(server) -> int:
    """Requests the server has answered, by its own counter (the fast path and Flask both count)."""
    return int(sample_value(server.metrics(), "nnserve_http_requests_total"))


def test_the_server_serves_the_document(fuzz_server):
    status, headers, body = fuzz_server.request("GET", "/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body == DOCUMENT_PATH.read_bytes()


def test_the_fast_path_leaves_the_document_to_flask():
    reached = []

    def flask_app(environ, start_response):
        reached.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        return [b""]

    fast_path = FastPath(flask_app, SimpleNamespace(settings=SimpleNamespace(max_body_bytes=1024)))
    for method in ("GET", "HEAD", "OPTIONS"):
        fast_path({"REQUEST_METHOD": method, "PATH_INFO": "/openapi.json"}, None)
    assert reached == [("GET", "/openapi.json"), ("HEAD", "/openapi.json"), ("OPTIONS", "/openapi.json")]


def schemathesis_run(server, workdir: Path, name: str, *selection: str, max_examples: int) -> int:
    """Run `st run` on the document against the server with every default check; return the test cases generated."""
    report = workdir / f"{name}.ndjson"
    command = [str(SCHEMATHESIS), "--config-file", str(SCHEMATHESIS_CONFIG), "run", str(DOCUMENT_PATH),
               "--url", f"http://{server.url}", "--header", f"Authorization: Bearer {TOKEN}",
               "--seed", str(SEED), "--generation-database", "none", "--max-examples", str(max_examples),
               "--request-timeout", "30", "--workers", "1", "--suppress-health-check", "too_slow",  # timing: flaky
               "--report", "ndjson", "--report-ndjson-path", str(report), "--no-color", *selection]
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"schemathesis ({name}) found problems:\n{output[-20000:]}"
    generated = 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        if "ScenarioFinished" in event:
            generated += len(event["ScenarioFinished"]["recorder"].get("interactions", {}))
    return generated


@pytest.mark.timeout(600)
def test_schemathesis_finds_nothing(fuzz_server, tmp_path):
    """Examples, coverage, fuzzing and stateful phases with every default check, in two runs: everything but unload
    first (an unloaded model rightly answers 503), then the repository extension with unload."""
    assert SCHEMATHESIS.is_file(), f"no schemathesis beside {sys.executable}"
    before = http_requests_answered(fuzz_server)
    started = time.monotonic()
    data_plane = schemathesis_run(fuzz_server, tmp_path, "data-plane", "--exclude-path",
                                  "/v2/repository/models/{name}/unload", max_examples=100)
    repository = schemathesis_run(fuzz_server, tmp_path, "repository", "--include-tag", "Model repository",
                                  max_examples=100)
    elapsed = time.monotonic() - started
    answered = http_requests_answered(fuzz_server) - before - 1
    print(f"schemathesis: {data_plane} + {repository} test cases, {answered} requests answered by the server "
          f"in {elapsed:.1f} s")
    assert answered >= MIN_REQUESTS and data_plane + repository >= MIN_REQUESTS
    status, _ = fuzz_server.json("GET", "/v2/health/live")
    assert status == 200
