"""Security properties of the service, each a test that fails if the property is lost.

- The repository calls (index, load, unload) need the operator's bearer token, compared in constant time; with no
  token configured they are refused (403). (test_repository.py checks the basic 401/200/403 on a two-worker server.)
- Nothing is ever unpickled: the sources load ONNX and JSON only, checkpoints with weights_only=True, and a version
  folder holding a pickle instead of model.onnx is refused without the pickle being opened.
- Model names and versions are checked before they touch the filesystem: no path outside the repository is opened,
  whatever the name.
- The body-size, decompressed-size, per-model batch-size and element limits exist and are enforced. (Also:
  test_server.py, an oversized JSON body, Content-Length and chunked body; test_protocol_features.py, a gzip body
  over the limit; test_hostile_catalogue.py, gigabyte gzip and deflate bombs; test_settings_and_startup.py, the
  parsing of per-model batch limits.)
- No response carries a stack trace or a filesystem path: test_hostile_catalogue.py checks every error it provokes;
  here, the load errors of corrupt versions (their text reaches clients in the index, metadata and load answers).
"""

from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import hmac
import json
import os
import pickle
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from service import artifact, rest
from service.app import create_app
from service.errors import BadRequest, ModelNotFound
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings
from tests.conftest import ROOT, SHIPPED_MODELS, send, start_server

TOKEN = "s3cret-Token_42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 100_000  # the module server's body limit, bytes


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict[str, Path]:
    """A repository (digits-mlp, digits-cnn) and, beside it, a valid model that must never be served."""
    root = tmp_path_factory.mktemp("security")
    repo, outside = root / "repo", root / "outside"
    for name in ("digits-mlp", "digits-cnn"):
        shutil.copytree(SHIPPED_MODELS / name, repo / name)
    shutil.copytree(SHIPPED_MODELS / "breast-cancer-mlp", outside / "breast-cancer-mlp")
    return {"root": root, "repo": repo, "outside": outside}


@pytest.fixture(scope="module")
def server(layout):
    srv = start_server(layout["repo"], layout["root"], "--workers", "1", "--max-body-bytes", str(LIMIT),
                       "--max-batch-size", "256,digits-cnn=4", env={"NNSERVE_REPOSITORY_TOKEN": TOKEN})
    yield srv
    srv.stop()


# -- the repository token --------------------------------------------------------------------------------------------

REFUSED = {
    "no header": None,
    "wrong token": "Bearer wrong",
    "empty token": "Bearer",
    "empty token, trailing space": "Bearer ",
    "scheme only, lower case": "bearer",
    "Basic scheme": "Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode(),
    "Token scheme": f"Token {TOKEN}",
    "no scheme": TOKEN,
    "scheme glued to the token": f"Bearer{TOKEN}",
    "tab instead of a space": f"Bearer\t{TOKEN}",
    "token with a suffix": f"Bearer {TOKEN}x",
    "token with a prefix": f"Bearer x{TOKEN}",
    "token cut short": f"Bearer {TOKEN[:-1]}",
    "token twice": f"Bearer {TOKEN} {TOKEN}",
    "whitespace inside the token": f"Bearer {TOKEN[:4]} {TOKEN[4:]}",
    "token in another case": f"Bearer {TOKEN.upper()}",
    "non-ASCII token": "Bearer t\xf6k\xe9n",
}
# Whitespace that is HTTP syntax, not part of the token: RFC 7235 allows 1*SP after the scheme (which is
# case-insensitive) and RFC 9110 strips whitespace around a field value. Accepting it is no weaker: the token
# itself must still match exactly.
ACCEPTED = {
    "exact": f"Bearer {TOKEN}",
    "scheme in lower case": f"bearer {TOKEN}",
    "scheme in upper case": f"BEARER {TOKEN}",
    "two spaces after the scheme": f"Bearer  {TOKEN}",
    "trailing spaces": f"Bearer {TOKEN}   ",
}
REPOSITORY_CALLS = [("/v2/repository/index", b""), ("/v2/repository/models/digits-mlp/load", b"{}"),
                    ("/v2/repository/models/digits-mlp/unload", b"{}")]


@pytest.mark.parametrize("path, data", REPOSITORY_CALLS, ids=["index", "load", "unload"])
@pytest.mark.parametrize("header", list(REFUSED.values()), ids=list(REFUSED))
def test_repository_calls_refuse_anything_but_the_token(server, path, data, header):
    status, headers, answer = send(server.port, "POST", path, data, {} if header is None else {"Authorization": header})
    assert status == 401 and headers["content-type"] == "application/json"
    assert headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <token>" in json.loads(answer)["error"]
    assert TOKEN not in answer.decode("utf-8", "replace")
    assert send(server.port, "GET", "/v2/models/digits-mlp/ready")[0] == 200  # a refused unload did nothing


@pytest.mark.parametrize("header", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_the_token_is_accepted_with_http_whitespace_and_any_scheme_case(server, header):
    status, _, answer = send(server.port, "POST", "/v2/repository/index", b"", {"Authorization": header})
    assert status == 200 and {e["name"] for e in json.loads(answer)} == {"digits-cnn", "digits-mlp"}
    assert send(server.port, "POST", "/v2/repository/models/digits-mlp/load", b"{}", {"Authorization": header})[0] == 200


def test_unload_and_load_with_the_token(server):
    assert send(server.port, "POST", "/v2/repository/models/digits-cnn/unload", b"{}", AUTH)[0] == 200
    assert send(server.port, "GET", "/v2/models/digits-cnn/ready")[0] == 503
    assert send(server.port, "POST", "/v2/repository/models/digits-cnn/load", b"{}", AUTH)[0] == 200
    assert send(server.port, "GET", "/v2/models/digits-cnn/ready")[0] == 200


@pytest.mark.parametrize("configured", ["", "   ", "\n"], ids=["empty", "spaces", "newline"])
def test_without_a_token_configured_the_repository_calls_are_403(configured):
    client = create_app(Settings(models=SHIPPED_MODELS, background_load=False, repository_token=configured)).test_client()
    for path, data in REPOSITORY_CALLS:
        for header in ({}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {configured.strip()}"}):
            response = client.post(path, data=data, headers=header)
            assert response.status_code == 403 and response.content_type == "application/json"
            assert "NNSERVE_REPOSITORY_TOKEN" in response.get_json()["error"]
    assert client.get("/v2/models/digits-mlp/ready").status_code == 200


def test_a_configured_token_with_a_trailing_newline_is_usable():
    """A token read from a secret file often ends in a newline, which no HTTP header can carry."""
    client = create_app(Settings(models=SHIPPED_MODELS, background_load=False,
                                 repository_token=TOKEN + "\n")).test_client()
    assert client.post("/v2/repository/index", headers=AUTH).status_code == 200
    assert client.post("/v2/repository/index", headers={"Authorization": "Bearer wrong"}).status_code == 401


def compare_digest_callers(call) -> list:
    """The code objects of the functions that called hmac.compare_digest (however it was imported) during `call()`."""
    callers = []

    def profile(frame, event, arg):
        if event == "c_call" and arg is hmac.compare_digest:
            callers.append(frame.f_code)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return callers


def function_of(code) -> ast.FunctionDef:
    """The definition of the function that `code` runs, from its source file."""
    module = ast.parse(Path(code.co_filename).read_text())
    return next(node for node in ast.walk(module) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.name == code.co_name
                and code.co_firstlineno in (node.lineno, *(d.lineno for d in node.decorator_list)))


def test_the_token_is_compared_in_constant_time():
    """Whichever function checks the token, every check goes through one hmac.compare_digest call on bytes, and
    what that call compares is in no ordinary comparison of that function."""
    client = create_app(Settings(models=SHIPPED_MODELS, background_load=False, repository_token=TOKEN)).test_client()
    statuses = []
    headers = [AUTH["Authorization"], "Bearer wrong", f"Bearer {TOKEN[:-1]}", f"bearer {TOKEN}x"]
    callers = compare_digest_callers(lambda: statuses.extend(
        client.post("/v2/repository/index", headers={"Authorization": header}).status_code for header in headers))
    assert statuses == [200, 401, 401, 401]
    assert len(callers) == len(headers) and len(set(callers)) == 1, callers
    tree = function_of(callers[0])
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and ast.unparse(node.func).split(".")[-1] == "compare_digest"]
    assert len(calls) == 1
    assert all(ast.unparse(arg).endswith(".encode()") for arg in calls[0].args)  # str would fail on non-ASCII
    compared = {n.id for arg in calls[0].args for n in ast.walk(arg) if isinstance(n, ast.Name)}
    assert compared
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            assert not names & compared, ast.unparse(node)


def test_every_repository_route_authorizes_first():
    """A route under /v2/repository added later cannot forget the token: its first statement is _authorize()."""
    module = ast.parse(Path(rest.__file__).read_text())
    routes = [node for node in module.body if isinstance(node, ast.FunctionDef) and any(
        "/v2/repository" in ast.unparse(d) for d in node.decorator_list)]
    assert {r.name for r in routes} >= {"repository_index", "repository_load", "repository_unload"}
    for route in routes:
        assert ast.unparse(route.body[0]) == "_authorize()", route.name


# -- nothing is unpickled ------------------------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "cloudpickle", "marshal", "jsonpickle"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader"}


def unsafe_loads(source: str, allow_torch: bool = True) -> list[str]:
    """Every place in `source` that could unpickle: imports of pickle and its kin, np.load(allow_pickle=True),
    torch.load without weights_only=True, torch.jit.load, yaml loaders other than the safe one, pandas.read_pickle,
    and (with allow_torch=False) any import of torch."""
    problems = []

    def flag(node, what):
        problems.append(f"line {node.lineno}: {what}: {ast.unparse(node)[:100]}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in UNSAFE_MODULES:
                    flag(node, "imports an unpickler")
                if module.split(".")[0] == "torch" and not allow_torch:
                    flag(node, "imports torch")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("numpy", "torch", "yaml", "pandas"):
                if any(a.name in ("load", "load_all", "unsafe_load", "full_load", "read_pickle") for a in node.names):
                    flag(node, "imports a loader by name (its calls could not be checked)")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if "allow_pickle" in keywords and not (isinstance(keywords["allow_pickle"], ast.Constant)
                                                   and keywords["allow_pickle"].value is False):
                flag(node, "allow_pickle")
            if func.endswith("torch.load") and not (isinstance(keywords.get("weights_only"), ast.Constant)
                                                    and keywords["weights_only"].value is True):
                flag(node, "torch.load without weights_only=True")
            if func.endswith("jit.load") or func.endswith("read_pickle"):
                flag(node, "loads a pickle")
            if func in ("yaml.load", "yaml.load_all"):
                loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
                if loader is None or ast.unparse(loader) not in SAFE_YAML_LOADERS:
                    flag(node, "yaml.load without SafeLoader")
            if func in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
                flag(node, "unsafe yaml loader")
            if func in ("__import__", "importlib.import_module", "import_module") and node.args and isinstance(
                    node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] in UNSAFE_MODULES:
                flag(node, "imports an unpickler dynamically")
    return problems


@pytest.mark.parametrize("snippet", [
    "import pickle", "import cPickle", "from pickle import loads", "import dill", "import joblib", "import shelve",
    "import marshal\nmarshal.loads(b'')", "from joblib import load", "import importlib\nimportlib.import_module('pickle')",
    "np.load(path, allow_pickle=True)", "numpy.load(path, allow_pickle=flag)", "torch.load(path)",
    "torch.load(path, weights_only=False)", "torch.load(path, map_location='cpu')", "torch.jit.load(path)",
    "yaml.load(text)", "yaml.load(text, Loader=yaml.Loader)", "yaml.unsafe_load(text)", "yaml.full_load(text)",
    "pd.read_pickle(path)", "from numpy import load", "from torch import load",
])
def test_the_unpickling_scan_finds_each_unsafe_form(snippet):
    assert unsafe_loads(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "np.load(path)", "np.load(path, allow_pickle=False)", "torch.load(path, weights_only=True)",
    "torch.load(path, map_location='cpu', weights_only=True)", "yaml.safe_load(text)",
    "yaml.load(text, Loader=yaml.SafeLoader)", "json.loads(text)", "onnx.load(path)",
])
def test_the_unpickling_scan_passes_the_safe_forms(snippet):
    assert unsafe_loads(snippet) == []


@pytest.mark.parametrize("package", ["service", "training"])
def test_no_source_can_unpickle(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert len(files) > 5
    problems = [f"{path.relative_to(ROOT)}: {problem}" for path in files
                for problem in unsafe_loads(path.read_text(), allow_torch=package == "training")]
    assert problems == []


def _audit_opens():
    """Record (event, path) of every file opened or folder listed while `recording` is on (an audit hook)."""
    state = _audit_opens.__dict__
    if "events" not in state:
        state["events"], state["on"] = [], False

        def hook(event, args):
            if state["on"] and event in ("open", "os.scandir", "os.listdir") and args and isinstance(
                    args[0], (str, bytes, os.PathLike)):
                state["events"].append((event, os.path.realpath(os.fsdecode(args[0]))))

        sys.addaudithook(hook)  # hooks cannot be removed: this one records only while switched on
    return state


class Recording:
    def __enter__(self):
        self.state = _audit_opens()
        self.state["events"].clear()
        self.state["on"] = True
        return self.state["events"]

    def __exit__(self, *exc):
        self.state["on"] = False


def _copy_version(src: Path, dst: Path, version: int, files: dict[str, bytes] | None = None) -> dict:
    """Copy `src` (a version folder) as version `version` at `dst`, with `files` replacing or adding files and
    metadata.json renumbered and rehashed for them."""
    dst.mkdir(parents=True)
    meta = json.loads((src / artifact.METADATA_FILENAME).read_text())
    meta["version"] = version
    contents = {artifact.MODEL_FILENAME: (src / artifact.MODEL_FILENAME).read_bytes(), **(files or {})}
    for name, data in contents.items():
        if data is not None:
            (dst / name).write_bytes(data)
    meta["files"] = artifact.file_entries({k: v for k, v in contents.items() if v is not None})
    if artifact.MODEL_FILENAME not in meta["files"]:  # keep the entry valid: the file itself is what is missing
        meta["files"][artifact.MODEL_FILENAME] = {"sha256": "0" * 64, "bytes": 1}
    (dst / artifact.METADATA_FILENAME).write_text(artifact.dumps(meta))
    return meta


class Boom:
    """Unpickling this creates the sentinel file: proof that a pickle was loaded."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return open, (self.sentinel, "w")


def test_a_version_with_a_pickle_instead_of_model_onnx_is_refused_unread(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "digits-mlp", repo / "digits-mlp")
    sentinel = tmp_path / "unpickled"
    payload = pickle.dumps(Boom(sentinel))
    object_array = tmp_path / "object.npy"
    np.save(object_array, np.array([Boom(sentinel)], dtype=object), allow_pickle=True)
    _copy_version(repo / "digits-mlp" / "1", repo / "digits-mlp" / "2", 2, {
        artifact.MODEL_FILENAME: None, "model.pkl": payload, "model.pt": payload,
        "model.npy": object_array.read_bytes(), "model.joblib": payload})
    with Recording() as events:
        registry = ModelRegistry(Settings(models=repo, dynamic_batching=False), Metrics())
        registry.load_all()
        states = {s.version: s for s in registry.states()}
        model = registry.get("digits-mlp")
    assert not sentinel.exists()
    assert states[2].state == "UNAVAILABLE" and "model.onnx: cannot be read" in states[2].reason
    assert model.version == 1  # the version before keeps serving
    opened = [path for _, path in events if Path(path).suffix in (".pkl", ".pt", ".npy", ".joblib")]
    assert opened == []


# -- names and versions are checked before they touch the filesystem ------------------------------------------------

BAD_NAMES = ["..", "../x", "../outside/breast-cancer-mlp", "a/b", "a\\b", "", ".", ".hidden", "\x00", "a\x00b",
             "digits-mlp\x00", "x" * 10_000, "/", "//etc", "~", " digits-mlp", "digits-mlp/", "digits-mlp/../digits-mlp",
             "-digits", "_digits"]
BAD_VERSIONS = ["-1", "0", "01", "1/../2", "abc", "", "1 ", " 1", "1.0", "\x001", "１", "99999999999", "../1"]


def test_bad_names_and_versions_touch_nothing_outside_the_repository(layout):
    layout_outside = os.path.realpath(layout["outside"])
    names = BAD_NAMES + [str(layout["outside"] / "breast-cancer-mlp"), "../../" + layout["outside"].name]
    with Recording() as events:
        registry = ModelRegistry(Settings(models=layout["repo"], dynamic_batching=False), Metrics())
        registry.load_all()
        for name in names:
            for call in (registry.get, registry.load, registry.unload):
                with pytest.raises(ModelNotFound) as err:
                    call(name)
                assert err.value.status_code == 404 and len(err.value.message) < 500
        for version in BAD_VERSIONS:
            with pytest.raises(BadRequest, match="model version must be a positive integer"):
                registry.get("digits-mlp", version)
        assert registry.names() == ["digits-cnn", "digits-mlp"]
    touched = [path for _, path in events if path == layout_outside or path.startswith(layout_outside + os.sep)]
    assert touched == []
    assert {path for _, path in events} - {""}, "the audit hook saw nothing: the check itself is broken"


@pytest.mark.parametrize("segment", ["..%2Foutside%2Fbreast-cancer-mlp", "%2e%2e%2foutside%2fbreast-cancer-mlp",
                                     "..%5Coutside%5Cbreast-cancer-mlp", "..", "%2e%2e"])
def test_no_path_reaches_a_model_beside_the_repository(server, layout, segment):
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.0] * 30}]})
    for method, path, data, headers in [
            ("POST", f"/v2/models/{segment}/infer", body.encode(), {}),
            ("POST", f"/v2/models/{segment}/versions/1/infer", body.encode(), {}),
            ("GET", f"/v2/models/{segment}", b"", {}), ("GET", f"/v2/models/{segment}/ready", b"", {}),
            ("POST", f"/v1/models/{segment}:predict", b'{"instances": [[0]]}', {}),
            ("POST", f"/v2/repository/models/{segment}/load", b"{}", AUTH),
            ("POST", f"/v2/repository/models/{segment}/unload", b"{}", AUTH)]:
        status, headers_got, answer = send(server.port, method, path, data, headers)
        assert status == 404 and headers_got["content-type"] == "application/json", (path, answer)
    status, _, answer = send(server.port, "POST", "/v2/repository/index", b"", AUTH)
    assert {e["name"] for e in json.loads(answer)} == {"digits-cnn", "digits-mlp"}
    assert "breast-cancer-mlp" not in server.log.read_text()


# -- limits ----------------------------------------------------------------------------------------------------------

def _images(batch: int) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [batch, 1, 8, 8], "datatype": "FP32",
                                   "data": [1.0] * 64 * batch}]}).encode()


def test_the_batch_limit_is_per_model(server):
    status, _, answer = send(server.port, "POST", "/v2/models/digits-cnn/infer", _images(5))
    assert status == 400 and "batch size 5 exceeds the maximum of 4" in json.loads(answer)["error"]
    assert send(server.port, "POST", "/v2/models/digits-cnn/infer", _images(4))[0] == 200
    rows = json.dumps({"inputs": [{"name": "input", "shape": [5, 64], "datatype": "FP32", "data": [1.0] * 320}]})
    assert send(server.port, "POST", "/v2/models/digits-mlp/infer", rows.encode())[0] == 200  # default 256
    status, _, answer = send(server.port, "POST", "/v1/models/digits-cnn:predict",
                             json.dumps({"instances": [[[[1.0] * 8] * 8]] * 5}).encode())
    assert status == 400 and "batch size 5 exceeds the maximum of 4" in json.loads(answer)["error"]


def test_the_element_limit_follows_the_models_batch_limit(server):
    """A request may declare at most batch limit x 65,536 elements, before any data is looked at."""
    tensor = {"name": "input", "shape": [300_000, 1, 8, 8], "datatype": "FP32", "data": [1.0]}
    status, _, answer = send(server.port, "POST", "/v2/models/digits-cnn/infer", json.dumps({"inputs": [tensor]}).encode())
    assert status == 400 and "more than the limit of 262144" in json.loads(answer)["error"]


@pytest.mark.parametrize("path, headers", [
    ("/v2/models/digits-mlp/infer", {}), ("/v1/models/digits-mlp:predict", {}),
    ("/v2/repository/index", AUTH),
    ("/v2/repository/models/digits-mlp/load", AUTH)])
def test_the_body_limit_holds_on_every_post_route(server, path, headers):
    status, got, answer = send(server.port, "POST", path, b" " * (LIMIT + 1), headers)
    assert status == 413 and got["content-type"] == "application/json"
    assert f"larger than the limit of {LIMIT} bytes" in json.loads(answer)["error"]


@pytest.mark.parametrize("path", ["/v2/models/digits-mlp/infer", "/v1/models/digits-mlp:predict"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_the_decompressed_size_limit_holds(server, path, encoding):

    inflated = b" " * (LIMIT + 1)
    packed = gzip.compress(inflated) if encoding == "gzip" else zlib.compress(inflated)
    assert len(packed) < LIMIT
    status, _, answer = send(server.port, "POST", path, packed, {"Content-Encoding": encoding})
    assert status == 413 and f"decompresses to more than the limit of {LIMIT} bytes" in json.loads(answer)["error"]
    exact = json.dumps({"instances": [[1.0] * 64]}).encode() if "predict" in path else _images(1).replace(
        b"[1, 1, 8, 8]", b"[1, 64]")
    packed = gzip.compress(exact) if encoding == "gzip" else zlib.compress(exact)
    assert send(server.port, "POST", path, packed, {"Content-Encoding": encoding})[0] == 200


# -- no filesystem path in a load error ----------------------------------------------------------------------------

def test_load_errors_name_the_problem_but_no_path(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "digits-mlp", repo / "digits-mlp")
    v1 = repo / "digits-mlp" / "1"
    junk = b"\x08\x07" + b"not an onnx graph" * 64  # hashed into metadata.json: it reaches ONNX Runtime
    _copy_version(v1, repo / "digits-mlp" / "2", 2, {artifact.MODEL_FILENAME: junk})
    _copy_version(v1, repo / "digits-mlp" / "3", 3)
    (repo / "digits-mlp" / "3" / artifact.MODEL_FILENAME).unlink()
    (repo / "digits-mlp" / "3" / artifact.MODEL_FILENAME).mkdir()  # a folder where the file should be
    (repo / "digits-mlp" / "4").mkdir()
    (repo / "digits-mlp" / "4" / artifact.METADATA_FILENAME).mkdir()
    _copy_version(v1, repo / "digits-mlp" / "5", 5)
    (repo / "digits-mlp" / "5" / artifact.METADATA_FILENAME).write_text('{"name": "digits-mlp", ')
    shutil.copytree(SHIPPED_MODELS / "digits-cnn", repo / "digits-cnn")
    (repo / "digits-cnn" / "config.pbtxt").unlink()
    (repo / "digits-cnn" / "config.pbtxt").mkdir()  # read for dynamic batching: unreadable
    client = create_app(Settings(models=repo, background_load=False, repository_token=TOKEN)).test_client()
    answers = {
        "index": client.post("/v2/repository/index", headers=AUTH),
        "load digits-mlp": client.post("/v2/repository/models/digits-mlp/load", headers=AUTH),
        "load digits-cnn": client.post("/v2/repository/models/digits-cnn/load", headers=AUTH),
        "metadata digits-cnn": client.get("/v2/models/digits-cnn"),
        "ready digits-cnn": client.get("/v2/models/digits-cnn/ready"),
        "infer digits-cnn": client.post("/v2/models/digits-cnn/infer", data=_images(1)),
        "version 2": client.get("/v2/models/digits-mlp/versions/2/ready"),
    }
    reasons = {(e["name"], e.get("version")): e["reason"] for e in answers["index"].get_json()}
    assert "protobuf parsing failed" in reasons[("digits-mlp", "2")]
    assert "model.onnx: cannot be read (Is a directory)" in reasons[("digits-mlp", "3")]
    assert "metadata.json: cannot be read (Is a directory)" in reasons[("digits-mlp", "4")]
    assert "metadata.json: not valid JSON" in reasons[("digits-mlp", "5")]
    assert "config.pbtxt: cannot be read (Is a directory)" in reasons[("digits-cnn", "1")]
    assert answers["load digits-cnn"].status_code == 400 and answers["ready digits-cnn"].status_code == 503
    forbidden = [str(tmp_path), os.path.realpath(tmp_path), str(ROOT), "Traceback", 'File "', sys.prefix]
    for what, response in answers.items():
        text = response.get_data(as_text=True) + json.dumps(dict(response.headers))
        text += json.dumps(response.get_json())  # the decoded strings too (JSON escapes '/' nowhere, '"' as \")
        assert [f for f in forbidden if f in text] == [], (what, text[:600])


def test_the_sha256_of_a_served_file_is_checked_before_onnx_runtime_sees_it(tmp_path):
    """A model.onnx replaced behind metadata.json's back is never handed to ONNX Runtime."""
    repo = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "digits-mlp", repo / "digits-mlp")
    model = repo / "digits-mlp" / "1" / artifact.MODEL_FILENAME
    data = bytearray(model.read_bytes())
    data[-1] ^= 1  # same size, one bit changed
    model.write_bytes(bytes(data))
    assert hashlib.sha256(data).hexdigest() != json.loads(model.with_name("metadata.json").read_text())["files"][
        "model.onnx"]["sha256"]
    registry = ModelRegistry(Settings(models=repo), Metrics())
    registry.load_all()
    assert [(s.state, s.reason) for s in registry.states()] == [
        ("UNAVAILABLE", "model.onnx: sha256 does not match metadata.json")]
