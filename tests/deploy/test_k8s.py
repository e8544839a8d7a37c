"""The Kubernetes and KServe manifests in deploy/k8s/, checked without a cluster (part of `make test`).

What is checked:
- Schema: every core resource (ConfigMap, PVC, Job, Deployment, Service, HPA, PDB) is validated against the
  JSON schemas that kubernetes-validate bundles, generated from the Kubernetes OpenAPI, for an older and the
  newest version it has, in strict mode (an unknown or misspelt field fails, as it would with
  `kubectl apply --validate=strict`); a deliberately broken copy must fail, so the check is not vacuous. The
  ServingRuntime's container and volumes are validated the same way, inside a stand-in Pod.
- Consistency: probes on the named port and the nnserve health paths, the security context (non-root 10001,
  read-only root, no privilege escalation, no capabilities, RuntimeDefault seccomp), /tmp an emptyDir, the
  model volume read-only at NNSERVE_MODELS, every NNSERVE_* key a real setting whose value Settings accepts,
  the Service, HPA and PDB aimed at the Deployment's pods (and not at the seed Job's), the drain budget
  (preStop + the server's SIGTERM grace fit in terminationGracePeriodSeconds), the image that `make image`
  tags, the ServingRuntime and InferenceService agreeing with each other, kustomization.yaml listing files
  that exist.
- Behaviour: the seed Job's shell script is run on a copy of models/ (atomic per-version copy, idempotent).

What is not checked here (no cluster and no KServe CRD schema are reachable offline):
- the KServe kinds against KServe's CRD schemas: only their field names, against the attribute maps of the
  kserve 0.21.0 Python SDK (copied below), and their container against the core Container schema;
- anything an API server or controller adds: admission webhooks, PodSecurity admission, defaulting, quota,
  Knative's own restrictions in KServe's serverless mode;
- that a cluster pulls the image, binds the PVC, schedules the pods and passes the probes (deploy/k8s/README.md
  says what was run by hand with podman instead).
"""

from __future__ import annotations

import copy
import dataclasses
import filecmp
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings
from tests.conftest import ROOT, SHIPPED_MODELS
from tests.deploy.manifests import SCHEMA_VERSIONS, USER, validate_as_pod

K8S = ROOT / "deploy" / "k8s"
HEALTH_LIVE = "/v2/health/live"
HEALTH_READY = "/v2/health/ready"

# Every manifest in deploy/k8s/: file -> (apiVersion, kind, metadata.name). A new file must be added here, so
# none escapes these checks.
EXPECTED = {
    "configmap.yaml": ("v1", "ConfigMap", "nnserve-config"),
    "pvc.yaml": ("v1", "PersistentVolumeClaim", "nnserve-models"),
    "models-seed-job.yaml": ("batch/v1", "Job", "nnserve-models-seed"),
    "deployment.yaml": ("apps/v1", "Deployment", "nnserve"),
    "service.yaml": ("v1", "Service", "nnserve"),
    "hpa.yaml": ("autoscaling/v2", "HorizontalPodAutoscaler", "nnserve"),
    "pdb.yaml": ("policy/v1", "PodDisruptionBudget", "nnserve"),
    "kserve-servingruntime.yaml": ("serving.kserve.io/v1alpha1", "ServingRuntime", "nnserve"),
    "kserve-inferenceservice.yaml": ("serving.kserve.io/v1beta1", "InferenceService", "digits-mlp"),
}
KSERVE_FILES = {"kserve-servingruntime.yaml", "kserve-inferenceservice.yaml"}
CORE_FILES = sorted(set(EXPECTED) - KSERVE_FILES)

# Field names of the KServe kinds, from the attribute_map of the kserve 0.21.0 SDK's generated models
# (kserve/models/v1alpha1_serving_runtime_spec.py, v1alpha1_supported_model_format.py,
# v1beta1_predictor_spec.py, v1beta1_model_spec.py): no KServe CRD schema is available offline.
SERVING_RUNTIME_SPEC = set("""affinity annotations builtInAdapter containers disabled grpcDataEndpoint grpcEndpoint
    hostIPC httpDataEndpoint imagePullSecrets labels multiModel nodeSelector protocolVersions replicas resourceClaims
    schedulerName storageHelper supportedModelFormats tolerations volumes workerSpec""".split())
SUPPORTED_MODEL_FORMAT = {"autoSelect", "name", "priority", "version"}
PREDICTOR_SPEC = set("""activeDeadlineSeconds affinity annotations autoScaling automountServiceAccountToken batcher
    canaryTrafficPercent containerConcurrency containers deploymentStrategy dnsConfig dnsPolicy enableServiceLinks
    ephemeralContainers hostAliases hostIPC hostNetwork hostPID hostUsers hostname hostnameOverride huggingface
    imagePullSecrets initContainers labels lightgbm logger maxReplicas minReplicas model name nodeName nodeSelector
    onnx os overhead paddle pmml preemptionPolicy priority priorityClassName pytorch readinessGates resourceClaims
    resources restartPolicy runtimeClassName scaleMetric scaleMetricType scaleTarget schedulerName schedulingGates
    schedulingGroup securityContext serviceAccount serviceAccountName setHostnameAsFQDN shareProcessNamespace sklearn
    storageContainerName storageUris subdomain tensorflow terminationGracePeriodSeconds timeout tolerations
    topologySpreadConstraints triton volumes workerSpec xgboost""".split())
MODEL_SPEC_KSERVE_ONLY = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage"}
MODEL_FORMAT = {"name", "version"}


def load(name: str) -> list[dict]:
    with open(K8S / name, encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def one(name: str) -> dict:
    docs = load(name)
    assert len(docs) == 1, f"{name}: expected one resource, found {len(docs)}"
    return docs[0]


def pod_spec(name: str) -> dict:
    return one(name)["spec"]["template"]["spec"]


def container(name: str) -> dict:
    containers = pod_spec(name)["containers"]
    assert len(containers) == 1, f"{name}: expected one container"
    return containers[0]


def config() -> dict[str, str]:
    return one("configmap.yaml")["data"]


def setting_names() -> set[str]:
    return {"NNSERVE_" + f.name.upper() for f in dataclasses.fields(Settings) if f.name != "extra"}


def env_dict(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


# ------------------------------------------------------------------------------------------------ the files
def test_every_manifest_parses_and_is_the_expected_resource():
    found = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert found == set(EXPECTED), f"add new manifests to EXPECTED, remove deleted ones: {found ^ set(EXPECTED)}"
    for name, (api_version, kind, resource_name) in EXPECTED.items():
        doc = one(name)
        assert (doc.get("apiVersion"), doc.get("kind")) == (api_version, kind), name
        assert doc.get("metadata", {}).get("name") == resource_name, name
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nnserve", name


def test_kustomization_lists_the_core_manifests_that_exist():
    kustomization = one("kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists {resource}, which does not exist"
    # The core set, and not the KServe kinds: those need KServe's CRDs and are applied on their own.
    assert sorted(resources) == CORE_FILES


# ------------------------------------------------------------------------------------------------ schemas
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("name", CORE_FILES)
def test_core_manifests_match_the_kubernetes_schema(name, version):
    kubernetes_validate.validate(one(name), version, strict=True)


@pytest.mark.parametrize("breakage", ["misspelt field", "wrong type", "missing required field"])
def test_the_schema_check_rejects_a_broken_deployment(breakage):
    deployment = copy.deepcopy(one("deployment.yaml"))
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    if breakage == "misspelt field":
        c["readinesProbe"] = c.pop("readinessProbe")
    elif breakage == "wrong type":
        c["ports"][0]["containerPort"] = "8080"
    else:
        del deployment["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_the_serving_runtime_container_matches_the_core_container_schema(version):
    spec = one("kserve-servingruntime.yaml")["spec"]
    # ServingRuntime.spec.containers and .volumes are core Container and Volume objects: check them in a Pod.
    validate_as_pod({"containers": spec["containers"], "volumes": spec.get("volumes", [])}, version)


def test_the_kserve_fields_are_known_to_kserve():
    runtime = one("kserve-servingruntime.yaml")["spec"]
    assert set(runtime) <= SERVING_RUNTIME_SPEC, set(runtime) - SERVING_RUNTIME_SPEC
    for fmt in runtime["supportedModelFormats"]:
        assert set(fmt) <= SUPPORTED_MODEL_FORMAT, set(fmt) - SUPPORTED_MODEL_FORMAT
    isvc = one("kserve-inferenceservice.yaml")["spec"]
    assert set(isvc) == {"predictor"}
    predictor = isvc["predictor"]
    assert set(predictor) <= PREDICTOR_SPEC, set(predictor) - PREDICTOR_SPEC
    assert isinstance(predictor["minReplicas"], int) and predictor["maxReplicas"] >= predictor["minReplicas"]
    model = predictor["model"]
    assert set(model) <= MODEL_SPEC_KSERVE_ONLY, set(model) - MODEL_SPEC_KSERVE_ONLY
    assert set(model["modelFormat"]) <= MODEL_FORMAT


# ------------------------------------------------------------------------------------------------ settings
def test_every_configmap_key_is_a_setting_that_the_service_accepts():
    data = config()
    unknown = set(data) - setting_names()
    assert not unknown, f"not NNSERVE_* settings of service/settings.py: {sorted(unknown)}"
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings (quote numbers)"
    settings = Settings.from_env(data)  # raises on a value the service would refuse
    assert settings.host == "0.0.0.0", "the pod must listen beyond loopback"
    assert settings.workers > 0
    assert "NNSERVE_REPOSITORY_TOKEN" not in data, "the token belongs in a Secret"


def test_the_deployment_takes_its_settings_from_the_configmap():
    c = container("deployment.yaml")
    refs = {next(iter(k for k in ref if k.endswith("Ref"))): ref for ref in c["envFrom"]}
    assert refs["configMapRef"]["configMapRef"]["name"] == "nnserve-config"
    assert refs["secretRef"]["secretRef"]["optional"] is True, "the token Secret must be optional"
    assert not set(env_dict(c)) & set(config()), "env would silently override the ConfigMap"


def test_the_cpu_limit_matches_the_workers():
    limits = container("deployment.yaml")["resources"]["limits"]
    assert float(limits["cpu"]) == int(config()["NNSERVE_WORKERS"])
    requests = container("deployment.yaml")["resources"]["requests"]
    assert set(requests) == set(limits) == {"cpu", "memory"}


# ------------------------------------------------------------------------------------------------ the pod
def test_probes_use_the_health_endpoints_on_the_named_port():
    c = container("deployment.yaml")
    ports = {p["name"]: p for p in c["ports"]}
    assert ports["http"]["containerPort"] == int(config()["NNSERVE_PORT"])
    assert ports["http"]["protocol"] == "TCP"
    expected = {"livenessProbe": HEALTH_LIVE, "readinessProbe": HEALTH_READY, "startupProbe": HEALTH_LIVE}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "http"), probe


def test_the_pod_runs_as_the_image_user_with_nothing_extra():
    pod = pod_spec("deployment.yaml")["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == pod["runAsGroup"] == pod["fsGroup"] == USER
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec("deployment.yaml")["automountServiceAccountToken"] is False
    check_container_security(container("deployment.yaml")["securityContext"])


def check_container_security(sc: dict) -> None:
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == sc["runAsGroup"] == USER
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert "privileged" not in sc or sc["privileged"] is False


def test_tmp_is_an_empty_dir_and_the_models_are_mounted_read_only_where_the_settings_say():
    spec = pod_spec("deployment.yaml")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container("deployment.yaml")["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "/tmp must be an emptyDir (read-only root filesystem)"
    models = mounts[config()["NNSERVE_MODELS"]]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == one("pvc.yaml")["metadata"]["name"]
    assert claim["readOnly"] is True


def test_shutdown_drains_within_the_grace_period():
    spec = pod_spec("deployment.yaml")
    command = container("deployment.yaml")["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = int(command[1])
    assert 3 <= pre_stop <= 15
    # The server's own SIGTERM grace for requests in flight (service/server.py, both servers).
    graces = [int(n) for n in re.findall(r"(?:graceful_timeout\W+|workers_kill_timeout=)(\d+)",
                                           (ROOT / "service" / "server.py").read_text())]
    assert graces, "the server's SIGTERM grace was not found in service/server.py"
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + max(graces) + 1


def test_rollouts_never_drop_below_the_ready_pods():
    deployment = one("deployment.yaml")["spec"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in deployment, "the HPA owns the replica count; `replicas:` would reset it on apply"


def test_prometheus_scrape_annotations_point_at_metrics():
    annotations = one("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == config()["NNSERVE_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"


# ------------------------------------------------------------------------------------------------ around it
def pod_labels(name: str) -> dict:
    return one(name)["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def test_the_service_selects_the_server_pods_only():
    service = one("service.yaml")["spec"]
    assert service["type"] == "ClusterIP"
    assert selects(service["selector"], pod_labels("deployment.yaml"))
    assert not selects(service["selector"], pod_labels("models-seed-job.yaml")), "the seed Job is no server"
    ports = {p["name"]: p["containerPort"] for p in container("deployment.yaml")["ports"]}
    assert {p["name"]: p["port"] for p in service["ports"]} == {"http": 8080, "grpc": 8081}
    assert all(ports[p["targetPort"]] == p["port"] for p in service["ports"])
    env = one("configmap.yaml")["data"]
    assert (env["NNSERVE_PORT"], env["NNSERVE_GRPC_PORT"]) == (str(ports["http"]), str(ports["grpc"]))


def test_the_deployment_selector_matches_its_pods():
    deployment = one("deployment.yaml")["spec"]
    assert selects(deployment["selector"]["matchLabels"], pod_labels("deployment.yaml"))
    assert not selects(deployment["selector"]["matchLabels"], pod_labels("models-seed-job.yaml"))


def test_the_autoscaler_and_the_disruption_budget_aim_at_the_deployment():
    deployment = one("deployment.yaml")
    hpa = one("hpa.yaml")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": deployment["apiVersion"], "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert "cpu" in container("deployment.yaml")["resources"]["requests"], "CPU utilization needs a CPU request"
    pdb = one("pdb.yaml")["spec"]
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["minAvailable"] == 1 < hpa["minReplicas"], "a drain could never evict a pod"


def test_every_image_is_the_one_make_image_tags():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^image:\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no `image:` target in the Makefile"
    tags = re.findall(r"-t (\S+)", recipe.group(1))
    assert tags == ["nnserve:latest"] and "--target runtime" in recipe.group(1)
    containers = [container("deployment.yaml"), container("models-seed-job.yaml"),
                  *one("kserve-servingruntime.yaml")["spec"]["containers"]]
    for c in containers:
        assert c["image"] == tags[0], c["name"]
        # a :latest image loaded into kind/minikube is only used with IfNotPresent (the default would be Always)
        assert c["imagePullPolicy"] == "IfNotPresent", c["name"]


# ------------------------------------------------------------------------------------------------ KServe
def test_the_serving_runtime_serves_what_kserve_mounts():
    runtime = one("kserve-servingruntime.yaml")
    (c,) = runtime["spec"]["containers"]
    assert c["name"] == "kserve-container"
    env = env_dict(c)
    assert env["NNSERVE_MODELS"] == "/mnt/models"
    assert set(env) <= setting_names()
    settings = Settings.from_env(env)
    assert settings.host == "0.0.0.0"
    (port,) = c["ports"]
    assert port == {"containerPort": settings.port, "protocol": "TCP"}
    assert c["readinessProbe"]["httpGet"] == {"path": HEALTH_READY, "port": settings.port}
    assert c["livenessProbe"]["httpGet"] == {"path": HEALTH_LIVE, "port": settings.port}
    assert float(c["resources"]["limits"]["cpu"]) == settings.workers
    check_container_security(c["securityContext"])
    tmp = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}["/tmp"]
    assert "emptyDir" in {v["name"]: v for v in runtime["spec"]["volumes"]}[tmp]
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(settings.port)


def test_the_inference_service_and_the_runtime_agree():
    runtime = one("kserve-servingruntime.yaml")
    model = one("kserve-inferenceservice.yaml")["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version", "1")) in formats
    assert model["modelFormat"]["name"] == "onnx"
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    # The storageUri names the repository folder (the one holding digits-mlp/1/), here the seeded PVC's root.
    match = re.fullmatch(r"pvc://([a-z0-9-]+)/(.*)", model["storageUri"])
    assert match and match.group(1) == one("pvc.yaml")["metadata"]["name"]
    subpath = match.group(2)
    isvc_name = one("kserve-inferenceservice.yaml")["metadata"]["name"]
    assert not re.search(r"(^|/)\d+/?$|model\.onnx$", subpath), "point at the repository, not a version or file"
    assert (SHIPPED_MODELS / subpath / isvc_name / "1" / "model.onnx").is_file(), \
        "the seeded repository must hold the InferenceService's model at <storageUri>/<name>/1/"


# ------------------------------------------------------------------------------------------------ the seed Job
def run_seed(source: Path, target: Path) -> subprocess.CompletedProcess:
    c = container("models-seed-job.yaml")
    env = {**os.environ, **env_dict(c), "SOURCE": str(source), "TARGET": str(target)}
    return subprocess.run(c["command"], env=env, capture_output=True, text=True, timeout=60)


def test_the_seed_job_mounts_the_claim_where_its_script_writes():
    spec = pod_spec("models-seed-job.yaml")
    c = container("models-seed-job.yaml")
    volumes = {v["name"]: v for v in spec["volumes"]}
    target = env_dict(c)["TARGET"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == target]
    assert not mount.get("readOnly", False)
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == one("pvc.yaml")["metadata"]["name"]
    assert env_dict(c)["SOURCE"] == config()["NNSERVE_MODELS"] == "/models", "the image ships its models there"
    assert spec["securityContext"]["fsGroup"] == USER
    check_container_security(c["securityContext"])


def test_the_seed_script_copies_every_version_once_and_atomically(tmp_path):
    target = tmp_path / "repository"
    target.mkdir()
    # A version already there is left alone, even if it differs.
    (target / "digits-mlp" / "1").mkdir(parents=True)
    (target / "digits-mlp" / "1" / "marker").write_text("already published")

    first = run_seed(SHIPPED_MODELS, target)
    assert first.returncode == 0, first.stderr
    shipped = sorted(str(p.relative_to(SHIPPED_MODELS)) for p in SHIPPED_MODELS.glob("*/[0-9]*") if p.is_dir())
    assert shipped, "no shipped versions found"
    seeded = sorted(line.removeprefix("seeded ") for line in first.stdout.splitlines())
    assert seeded == [v for v in shipped if v != "digits-mlp/1"]
    assert sorted(os.listdir(target / "digits-mlp" / "1")) == ["marker"]
    for version in seeded:
        compare = filecmp.dircmp(SHIPPED_MODELS / version, target / version)
        assert not (compare.left_only or compare.right_only or compare.diff_files), version
        for sub in compare.subdirs.values():
            assert not (sub.left_only or sub.right_only or sub.diff_files), version
    for model in {v.split("/")[0] for v in shipped}:
        if (SHIPPED_MODELS / model / "config.pbtxt").exists():
            assert filecmp.cmp(SHIPPED_MODELS / model / "config.pbtxt", target / model / "config.pbtxt", False)
        leftovers = [p.name for p in (target / model).iterdir() if p.name.startswith(".tmp-seed")]
        assert not leftovers, f"{model}: {leftovers}"

    second = run_seed(SHIPPED_MODELS, target)
    assert second.returncode == 0 and second.stdout == "", "a second run must change nothing"


def test_the_seed_script_ignores_folders_that_are_not_versions(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(SHIPPED_MODELS / "digits-mlp", source / "digits-mlp")
    (source / "digits-mlp" / ".tmp-abc").mkdir()  # a publish in progress
    (source / "digits-mlp" / "01").mkdir()  # not a version: leading zero
    (source / "digits-mlp" / "plots").mkdir()
    target = tmp_path / "target"
    target.mkdir()
    result = run_seed(source, target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == ["seeded digits-mlp/1"]
    assert sorted(os.listdir(target / "digits-mlp")) == ["1", "config.pbtxt"]
