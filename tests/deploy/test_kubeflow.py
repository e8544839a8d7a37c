"""deploy/kubeflow/pytorchjob.yaml, the data-parallel training job, checked without a cluster (part of `make test`).

What is checked:
- Schema: the PVC, and each replica's pod template as a stand-in Pod, against the Kubernetes schemas that
  kubernetes-validate bundles, in strict mode (as in test_k8s.py). The PyTorchJob's own fields by name only,
  against the kubeflow.org/v1 Go types of the training operator (pytorch_types.go, common_types.go: copied below).
- Consistency: the operator's conventions (a container named `pytorch` with the port `pytorchjob-port`, one Master),
  torchrun's node count and processes per node against the replicas and spec.nprocPerNode, node rank and address
  from the operator's RANK/MASTER_ADDR/MASTER_PORT, the `fit` arguments against training's own parser and config
  (global batch divisible by the world size), the same command in every pod, rank 0's pod (the Master) mounting the
  PVC at the image's /app/runs under --out, the image `make image-trainer` tags, and the non-root security context.

Not checked: the training operator's CRD schema and admission, and a run on a cluster (none was available).
"""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.manifests import SCHEMA_VERSIONS, USER, validate_as_pod
from training.__main__ import build_parser
from training.config import apply_overrides, load_config

MANIFEST = ROOT / "deploy" / "kubeflow" / "pytorchjob.yaml"
# Field names of kubeflow.org/v1 (training operator v1.7+: PyTorchJobSpec, RunPolicy, ReplicaSpec).
PYTORCHJOB_SPEC = {"runPolicy", "elasticPolicy", "pytorchReplicaSpecs", "nprocPerNode"}
RUN_POLICY = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit",
              "schedulingPolicy", "suspend", "managedBy"}
REPLICA_SPEC = {"replicas", "template", "restartPolicy"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}


def documents() -> dict[str, dict]:
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc is not None]
    assert [doc["kind"] for doc in docs] == ["PersistentVolumeClaim", "PyTorchJob"]
    return {doc["kind"]: doc for doc in docs}


def job() -> dict:
    return documents()["PyTorchJob"]


def replicas() -> dict[str, dict]:
    return job()["spec"]["pytorchReplicaSpecs"]


def container(replica: dict) -> dict:
    containers = replica["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def torchrun_flags(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """torchrun's --flag=value options, and the `python -m training` arguments after `-m training`."""
    split = args.index("-m")
    assert args[split + 1] == "training", "torchrun must run the module `training`"
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in args[:split])
    return flags, args[split + 2:]


def test_the_job_is_a_pytorchjob_with_known_fields():
    doc = job()
    assert (doc["apiVersion"], doc["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nnserve"
    spec = doc["spec"]
    assert set(spec) <= PYTORCHJOB_SPEC, set(spec) - PYTORCHJOB_SPEC
    assert set(spec.get("runPolicy", {})) <= RUN_POLICY
    assert set(replicas()) == {"Master", "Worker"}
    assert replicas()["Master"]["replicas"] == 1, "the operator allows one Master"
    for name, replica in replicas().items():
        assert set(replica) <= REPLICA_SPEC, (name, set(replica) - REPLICA_SPEC)
        assert replica["restartPolicy"] in RESTART_POLICIES
        c = container(replica)
        assert c["name"] == "pytorch", "the operator sets MASTER_ADDR/RANK and finds the port by this name"
        assert [p["name"] for p in c["ports"]] == ["pytorchjob-port"]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_the_pvc_and_pod_templates_match_the_kubernetes_schema(version):
    kubernetes_validate.validate(documents()["PersistentVolumeClaim"], version, strict=True)
    for name, replica in replicas().items():
        template = replica["template"]
        validate_as_pod(template["spec"], version, f"stand-in-{name.lower()}", template.get("metadata"))


def test_torchrun_matches_the_replicas_and_takes_the_operators_rendezvous():
    spec = job()["spec"]
    commands = {name: (container(r)["command"], container(r)["args"]) for name, r in replicas().items()}
    assert commands["Master"] == commands["Worker"], "every pod runs the same torchrun command"
    command, args = commands["Master"]
    assert command == ["torchrun"]
    flags, _ = torchrun_flags(args)
    assert int(flags["nnodes"]) == sum(r["replicas"] for r in replicas().values())
    assert flags["nproc_per_node"] == spec["nprocPerNode"]
    # A static rendezvous numbered by the operator: node 0, hence global rank 0 (the writer), is the Master.
    assert flags["node_rank"] == "$(RANK)"
    assert (flags["master_addr"], flags["master_port"]) == ("$(MASTER_ADDR)", "$(MASTER_PORT)")
    assert "rdzv_backend" not in flags


def test_the_fit_arguments_parse_and_the_global_batch_divides_among_the_processes():
    flags, args = torchrun_flags(container(replicas()["Master"])["args"])
    parsed = build_parser().parse_args(args)
    assert parsed.command == "fit" and parsed.resume and parsed.out, "restarted pods must continue the run"
    config = apply_overrides(load_config(parsed.config), parsed.set)
    world = int(flags["nnodes"]) * int(flags["nproc_per_node"])
    assert config.train.batch_size % world == 0


def test_rank_0s_pod_writes_the_run_folder_to_the_pvc():
    pvc = documents()["PersistentVolumeClaim"]
    master = replicas()["Master"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in master["volumes"]
              if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m["name"] for m in container(replicas()["Master"])["volumeMounts"]}
    assert claims[mounts["/app/runs"]] == pvc["metadata"]["name"]
    _, args = torchrun_flags(container(replicas()["Master"])["args"])
    assert str(build_parser().parse_args(args).out).startswith("/app/runs/")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"mkdir -p /app/runs && chown {USER}:{USER} /app/runs" in dockerfile  # the image's run folder root
    assert master["securityContext"]["fsGroup"] == USER


def test_the_image_is_the_trainer_that_make_builds():
    tag = re.search(r"--target trainer -t (\S+)", (ROOT / "Makefile").read_text()).group(1)
    for replica in replicas().values():
        assert container(replica)["image"] == tag == "nnserve-trainer:latest"


def test_every_pod_runs_as_the_images_non_root_user_with_a_read_only_root():
    for name, replica in replicas().items():
        pod = replica["template"]["spec"]
        c = container(replica)
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == USER, name
        assert pod["automountServiceAccountToken"] is False
        sc = c["securityContext"]
        assert sc["runAsUser"] == USER and sc["allowPrivilegeEscalation"] is False, name
        assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"], name
        tmp = {m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"}
        assert any("emptyDir" in v for v in pod["volumes"] if v["name"] in tmp), f"{name}: /tmp must be writable"
