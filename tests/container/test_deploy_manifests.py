"""The deployment examples: deploy/kubernetes against the Kubernetes API's own JSON schemas (strict: an
unknown or misspelt field fails), plus the fields a sidecar deployment depends on; deploy/compose.yaml
read as YAML with the same fields. That the configs they carry load is checked by the image's own
`gateway check` in test_container_image.py."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.container import manifests

# The oldest release with native sidecars on by default (initContainers with restartPolicy: Always),
# and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_the_kubernetes_api(version: str) -> None:
    resources = manifests.kubernetes_resources()
    assert {kind for kind, _ in resources} >= {"Deployment", "ConfigMap", "Secret", "Service", "StatefulSet"}
    for (kind, name), doc in resources.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{kind}/{name} is invalid for Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}"
            )


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    deployment = copy.deepcopy(manifests.kubernetes_resources()[("Deployment", "billing")])
    deployment["spec"]["template"]["spec"]["initContainers"][0]["readinesProbe"] = {
        "exec": {"command": ["true"]}
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = (manifests.KUBERNETES / "kustomization.yaml").read_text()
    listed = set(yaml.safe_load(kustomization)["resources"])
    files = {p.name for p in manifests.KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files


def _probe(container: dict[str, Any], kind: str) -> list[str]:
    command: list[str] = container[kind]["exec"]["command"]
    return command


def test_the_gateway_sidecar() -> None:
    resources = manifests.kubernetes_resources()
    pod = manifests.pod_spec("Deployment", "billing")
    gateway = manifests.gateway_container()
    app = next(c for c in pod["containers"] if c["name"] == "app")
    # A native sidecar: started before the app, stopped after it.
    assert gateway in pod["initContainers"] and gateway["restartPolicy"] == "Always"
    assert gateway["args"] == ["run", "--config", "/etc/gateway/config.toml"]
    # Probes on the gateway's own endpoints, run inside the container (it listens on loopback).
    assert _probe(gateway, "livenessProbe") == ["gateway-probe", "/_gateway/health"]
    assert _probe(gateway, "readinessProbe") == ["gateway-probe", "/_gateway/ready"]
    for container in (gateway, app):
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    # Config from the ConfigMap (a whole-folder mount: a subPath mount never sees an update), vendor
    # credentials from the Secret as files, referenced as file: secrets by the config.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in gateway["volumeMounts"]}
    assert (
        mounts["gateway-config"]["mountPath"] == "/etc/gateway" and "subPath" not in mounts["gateway-config"]
    )
    config_map = resources[("ConfigMap", volumes["gateway-config"]["configMap"]["name"])]
    assert {i["key"] for i in volumes["gateway-config"]["configMap"]["items"]} == set(config_map["data"])
    secret = resources[("Secret", volumes["vendor-credentials"]["secret"]["secretName"])]
    config = config_map["data"]["config.toml"]
    for key in secret["data"]:
        assert f'"file:{mounts["vendor-credentials"]["mountPath"]}/{key}"' in config
    assert not any(e["name"].endswith(("KEY", "TOKEN", "SECRET")) for e in gateway.get("env", []))
    # The drain ends before the kubelet's SIGKILL.
    drain = tomllib.loads(config)["gateway"]["shutdown_timeout_seconds"]
    assert drain < pod["terminationGracePeriodSeconds"]


def test_redis_is_shared_through_a_service() -> None:
    resources = manifests.kubernetes_resources()
    store = tomllib.loads(resources[("ConfigMap", "egress-gateway-config")]["data"]["config.toml"])[
        "gateway"
    ]["store"]
    host = store.removeprefix("redis://").split(":")[0]
    service = resources[("Service", host)]
    redis = resources[("StatefulSet", host)]
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert (
        redis["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        is True
    )
    policy = resources[("NetworkPolicy", host)]
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    billing = resources[("Deployment", "billing")]["spec"]["template"]["metadata"]["labels"]
    assert allowed.items() <= billing.items()


def test_compose_runs_the_image_with_redis() -> None:
    services = manifests.compose()["services"]
    gateway, redis = services["gateway"], services["redis"]
    assert gateway["build"]["context"] == ".." and (manifests.COMPOSE.parent / ".." / "Dockerfile").is_file()
    assert gateway["read_only"] is True and gateway["user"] == "10001:10001"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy" and "healthcheck" in redis
    assert all(port.startswith("127.0.0.1:") for port in gateway["ports"])
    source, target, mode = gateway["volumes"][0].split(":")
    assert (
        target == "/etc/gateway"
        and mode == "ro"
        and (manifests.COMPOSE.parent / source / "config.toml").is_file()
    )
    config = tomllib.loads((manifests.COMPOSE.parent / source / "config.toml").read_text())
    assert config["gateway"]["store"].startswith("redis://redis:")
    # The vendor key comes from the host's environment, never from the file: without it compose
    # refuses to start, with it the gateway gets exactly that value.
    assert config["vendors"]["sandbox"]["auth"]["value"] == "env:SANDBOX_API_KEY"
    with pytest.raises(KeyError, match="SANDBOX_API_KEY"):
        manifests.compose_environment(gateway, {})
    assert manifests.compose_environment(gateway, {"SANDBOX_API_KEY": "k-1"})["SANDBOX_API_KEY"] == "k-1"
