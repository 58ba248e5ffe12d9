"""The deployment examples (deploy/kubernetes/*.yaml, deploy/compose.yaml) read as their tools read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def kubernetes_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML document of deploy/kubernetes, with the file it came from."""
    return [
        (path, doc)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def kubernetes_resources() -> dict[tuple[str, str], dict[str, Any]]:
    """The Kubernetes objects by (kind, name); kustomization.yaml is kustomize's, not the API's."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path, doc in kubernetes_documents()
        if path.name != "kustomization.yaml"
    }


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = kubernetes_resources()[(kind, name)]["spec"]["template"]["spec"]
    return spec


def gateway_container() -> dict[str, Any]:
    """The gateway sidecar of the example Deployment (a native sidecar: an init container)."""
    spec = pod_spec("Deployment", "billing")
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "gateway")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data
