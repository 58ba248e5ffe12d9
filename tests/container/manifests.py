"""The deployment examples (deploy/kubernetes/*.yaml, deploy/compose.yaml) read as their tools read them."""

from __future__ import annotations

import re
from collections.abc import Mapping
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


def generated_secrets() -> list[dict[str, Any]]:
    """The Secrets kustomization.yaml's secretGenerator makes, as kustomize would: their keys, with
    empty values (the values are the user's files, never in the tree)."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    secrets = []
    for generator in kustomization.get("secretGenerator", []):
        metadata = {"name": generator["name"], "labels": generator.get("options", {}).get("labels", {})}
        keys = [entry.partition("=")[0] for entry in generator["files"]]
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": metadata,
                "type": "Opaque",
                "data": dict.fromkeys(keys, ""),
            }
        )
    return secrets


def kubernetes_resources() -> dict[tuple[str, str], dict[str, Any]]:
    """The Kubernetes objects by (kind, name), the generated Secrets included; kustomization.yaml is
    kustomize's, not the API's."""
    documents = [doc for path, doc in kubernetes_documents() if path.name != "kustomization.yaml"]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents + generated_secrets()}


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


# ${NAME}, ${NAME:-default}, ${NAME:?message}: what compose takes from the host's environment.
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose_environment(service: dict[str, Any], host: Mapping[str, str]) -> dict[str, str]:
    """A compose service's environment as compose resolves it from ``host``; a ``:?`` variable that
    ``host`` lacks fails, as compose would refuse to start."""

    def resolve(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        if host.get(name):
            return host[name]
        if kind.endswith("?"):
            raise KeyError(f"{name}: {rest}")
        return rest if kind.endswith("-") else ""

    return {name: _VARIABLE.sub(resolve, str(value)) for name, value in service["environment"].items()}
