"""What the manifest tests (test_k8s.py, test_kubeflow.py) share: the image's user and the schema checks."""

from __future__ import annotations

import kubernetes_validate

USER = 10001  # the Dockerfile's `useradd --uid 10001` and `USER 10001:10001`
# The oldest and the newest Kubernetes whose schemas kubernetes-validate ships (autoscaling/v2 and policy/v1
# PDBs are GA in both).
SCHEMA_VERSIONS = ["1.28", kubernetes_validate.latest_version()]


def validate_as_pod(spec: dict, version: str, name: str = "stand-in", metadata: dict | None = None) -> None:
    """Validate a pod spec inside another kind (a pod template, a ServingRuntime's containers) as a Pod, strictly."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **(metadata or {})}, "spec": spec}
    kubernetes_validate.validate(pod, version, strict=True)
