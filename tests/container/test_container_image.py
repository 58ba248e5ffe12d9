"""The sidecar image, built and run for real with podman (scripts/container): a Debian bookworm base made
by debootstrap, no registry. What a sidecar needs of it: health and a vendor call through it, a non-root
gateway as PID 1 on a read-only root with no writable tmp, secrets from mounted files and the environment,
a config folder swapped the way a Kubernetes ConfigMap volume is swapped reaching the running gateway,
and SIGTERM during a slow call letting the call finish before it exits 0.

Without podman, runc or debootstrap the module is skipped with a loud reason, or fails under CI=true or
GATEWAY_REQUIRE_CONTAINER=1 (scripts/test installs them as root). The first run on a machine builds the
base (about half a minute, cached in ~/.cache/egress-gateway); each run builds the image afresh in its
own podman storage, which the module removes afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.container import manifests
from tests.gateway_proc import free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "container"
IMAGE = "localhost/egress-gateway:test"
TOOLS = ("podman", "runc", "debootstrap")
BUILD_TIMEOUT = 900


def container_required() -> bool:
    """In CI (or when asked) missing container tools fail the module instead of skipping it."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("GATEWAY_REQUIRE_CONTAINER") == "1"


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Podman:
    """podman through scripts/container: this module's own storage, runc, and the ulimits this machine allows."""

    env: dict[str, str]

    def __call__(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(SCRIPT), "podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        reason = (
            f"{', '.join(missing)} not on PATH, so the container image is NOT BUILT OR TESTED "
            "(as root: scripts/container install)"
        )
        if container_required():
            pytest.fail(reason + "; CI=true or GATEWAY_REQUIRE_CONTAINER=1 requires it")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("podman")
    env = {**os.environ, "GATEWAY_CONTAINER_DIR": str(state), "GATEWAY_IMAGE": IMAGE}
    started = time.monotonic()
    build = subprocess.run(
        [str(SCRIPT), "build"], env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    elapsed = time.monotonic() - started
    if build.returncode != 0:
        shutil.rmtree(state, ignore_errors=True)
        pytest.fail(f"the image build failed after {elapsed:.0f} s:\n{tail(build.stdout + build.stderr)}")
    print(f"image {IMAGE} built in {elapsed:.1f} s (base included)")
    pod = Podman(env)
    try:
        yield pod
    finally:
        pod("rm", "--all", "--force", "--time", "0", check=False)
        shutil.rmtree(state, ignore_errors=True)


# --- the image itself ----------------------------------------------------------------------------


def test_image_runs_the_gateway_as_a_numeric_non_root_user_with_a_healthcheck(podman: Podman) -> None:
    (image,) = json.loads(podman("image", "inspect", IMAGE).stdout)
    config = image["Config"]
    assert config["User"] == "10001:10001"  # numeric, so runAsNonRoot can check it
    assert "8080/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] == ["gateway-entrypoint"]  # exec form: no shell in between
    assert config["Cmd"] == ["run", "--config", "/etc/gateway/config.toml"]
    assert image["Healthcheck"]["Test"] == ["CMD", "gateway-probe", "/_gateway/health"]


def _pem_blocks(text: str) -> list[str]:
    blocks = text.split("-----BEGIN CERTIFICATE-----")[1:]
    return ["".join(block.split("-----END CERTIFICATE-----")[0].split()) for block in blocks]


def _host_ca_bundle() -> Path | None:
    for candidate in (
        os.environ.get("SSL_CERT_FILE"),
        os.environ.get("PIP_CERT"),
        ssl.get_default_verify_paths().cafile,
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


def test_the_build_ca_and_pip_settings_are_not_in_the_image(podman: Podman) -> None:
    """The build reached the index through the host's CA bundle and pip.conf, given as build secrets:
    no file of the image holds a certificate of that bundle that Debian's own trust store lacks (the
    proxy's CA, here), and no pip.conf or /run/secrets was left behind."""
    image_store = podman(
        "run", "--rm", "--entrypoint", "cat", IMAGE, "/etc/ssl/certs/ca-certificates.crt"
    ).stdout
    bundle = _host_ca_bundle()
    host_only = (
        [] if bundle is None else sorted(set(_pem_blocks(bundle.read_text())) - set(_pem_blocks(image_store)))
    )
    # A certificate is found by one base64 line from its middle (PEM wraps at 64) and by its DER bytes.
    needles = []
    for body in host_only:
        der = base64.b64decode(body)
        needles += [body[64:128], base64.b64encode(der[48:96]).decode()]
    scan = r"""
import base64, os, sys
args = sys.argv[1:]  # pairs: a PEM line, then the DER bytes in base64
needles = [a.encode() for a in args[0::2]] + [base64.b64decode(a) for a in args[1::2]]
found = set()
for top in ("/bin", "/etc", "/home", "/opt", "/root", "/srv", "/usr", "/var", "/tmp", "/run"):
    for folder, _, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            if name == "pip.conf" or path.startswith("/run/secrets"):
                found.add(path)
            try:
                if os.path.islink(path) or os.path.getsize(path) > 50_000_000:
                    continue
                data = open(path, "rb").read()
            except OSError:
                continue
            if any(n in data for n in needles):
                found.add(path)
print("\n".join(sorted(found)))
"""
    result = podman("run", "--rm", "--user", "0", "--entrypoint", "python3", IMAGE, "-c", scan, *needles)
    assert result.stdout.strip() == "", f"build-only material found in the image:\n{result.stdout}"
    print(f"{len(host_only)} certificate(s) of {bundle} that Debian lacks: in no file of the image")


# --- the running gateway --------------------------------------------------------------------------


@dataclass
class Sidecar:
    """One gateway container on the host's network, its config laid out like a ConfigMap volume."""

    podman: Podman
    name: str
    port: int
    sandbox_port: int
    config_dir: Path
    token: str
    crm_key: str
    generation: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self, extra: str = "") -> str:
        sandbox = f"http://127.0.0.1:{self.sandbox_port}"
        return f"""
[gateway]
listen = "127.0.0.1:{self.port}"
shutdown_timeout_seconds = 10

[vendors.sandbox]
base_url = "{sandbox}"
timeout = {{ connect_seconds = 2.0, total_seconds = 10.0 }}
auth = {{ type = "bearer", token = "file:/var/run/secrets/egress-gateway/sandbox-token" }}

[vendors.crm]
base_url = "{sandbox}"
auth = {{ type = "header", name = "X-Api-Key", value = "env:CRM_API_KEY" }}
{extra}
"""

    def publish(self, config: str) -> None:
        """Write a new generation and swap ``..data`` to it at once, as the kubelet's atomic writer does."""
        self.generation += 1
        data = self.config_dir / f"..generation_{self.generation}"
        (data / "routes").mkdir(parents=True)
        (data / "config.toml").write_text(config)
        (data / "routes" / "sandbox.toml").write_text('vendor = "sandbox"\nexpose = "all"\n')
        link = self.config_dir / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, self.config_dir / "..data")
        for name in ("config.toml", "routes"):
            if not (self.config_dir / name).is_symlink():
                (self.config_dir / name).symlink_to(f"..data/{name}")

    def logs(self) -> str:
        result = self.podman("logs", self.name, check=False)
        return result.stdout + result.stderr


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(check: Callable[[], bool], what: str, sidecar: Sidecar, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout} s; the container's log:\n{tail(sidecar.logs())}")


@pytest.fixture(scope="module")
def start_sidecar(
    podman: Podman, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], Sidecar]]:
    started: list[Sidecar] = []

    def start() -> Sidecar:
        folder = tmp_path_factory.mktemp("sidecar")
        secrets = folder / "secrets"
        secrets.mkdir()
        sidecar = Sidecar(
            podman=podman,
            name=f"gateway-test-{uuid.uuid4().hex[:8]}",
            port=free_port(),
            sandbox_port=free_port(),
            config_dir=folder / "config",
            token=uuid.uuid4().hex,
            crm_key=uuid.uuid4().hex,
        )
        sidecar.config_dir.mkdir()
        sidecar.publish(sidecar.config_text())
        (secrets / "sandbox-token").write_text(sidecar.token + "\n")
        podman(
            "run", "--detach", "--name", sidecar.name, "--network", "host",
            "--read-only", "--read-only-tmpfs=false",  # no tmpfs either: nothing of the image is writable
            "--volume", f"{sidecar.config_dir}:/etc/gateway:ro",
            "--volume", f"{secrets}:/var/run/secrets/egress-gateway:ro",
            "--env", f"CRM_API_KEY={sidecar.crm_key}",
            "--env", f"GATEWAY_PROBE_URL={sidecar.url}",
            IMAGE, "run", "--config", "/etc/gateway/config.toml", "--sandbox", f"127.0.0.1:{sidecar.sandbox_port}",
        )  # fmt: skip
        started.append(sidecar)
        wait_until(lambda: get(f"{sidecar.url}/_gateway/health", 1)[0] == 200, "health", sidecar)
        return sidecar

    yield start
    for sidecar in started:
        podman("rm", "--force", "--time", "0", sidecar.name, check=False)


@pytest.fixture(scope="module")
def sidecar(start_sidecar: Callable[[], Sidecar]) -> Sidecar:
    return start_sidecar()


def test_health_ready_and_calls_through_the_gateway_to_the_sandbox(sidecar: Sidecar) -> None:
    assert get(f"{sidecar.url}/_gateway/health")[0] == 200
    assert get(f"{sidecar.url}/_gateway/ready")[0] == 200
    status, body = get(f"{sidecar.url}/sandbox/v1/customers?limit=2")
    assert status == 200, body
    assert [c["object"] for c in json.loads(body)["data"]] == ["customer", "customer"]
    # Credentials: a mounted file (bearer token) and an environment variable (API key header).
    status, body = get(f"{sidecar.url}/sandbox/v1/echo/who")
    headers = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    assert status == 200 and headers["authorization"] == f"Bearer {sidecar.token}"
    status, body = get(f"{sidecar.url}/crm/v1/echo/who")
    headers = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    assert status == 200 and headers["x-api-key"] == sidecar.crm_key
    assert sidecar.token not in sidecar.logs() and sidecar.crm_key not in sidecar.logs()


def test_the_gateway_is_pid_1_not_root_on_a_read_only_root(sidecar: Sidecar) -> None:
    podman = sidecar.podman
    status = podman("exec", sidecar.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == ["10001"] * 4, status
    cmdline = podman("exec", sidecar.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert "/opt/gateway/bin/gateway" in cmdline and "run" in cmdline, cmdline  # the entrypoint exec'd it
    (inspect,) = json.loads(podman("inspect", sidecar.name).stdout)
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    probe = "import errno, sys\nfor d in sys.argv[1:]:\n    try:\n        open(d + '/probe', 'w')\n    except OSError as e:\n        print(d, errno.errorcode[e.errno])\n    else:\n        print(d, 'WRITABLE')\n"
    written = podman(
        "exec", sidecar.name, "python3", "-c", probe, "/", "/tmp", "/var/tmp", "/etc/gateway"
    ).stdout
    assert written.split("\n")[:4] == ["/ EROFS", "/tmp EROFS", "/var/tmp EROFS", "/etc/gateway EROFS"], (
        written
    )


def test_healthcheck_and_probes(sidecar: Sidecar) -> None:
    podman = sidecar.podman
    assert podman("healthcheck", "run", sidecar.name, check=False).returncode == 0
    assert podman("exec", sidecar.name, "gateway-probe", "/_gateway/ready", check=False).returncode == 0
    missing = podman("exec", sidecar.name, "gateway-probe", "/_gateway/nothing-here", check=False)
    assert missing.returncode == 1 and "status 404" in missing.stderr, missing


def test_a_configmap_style_swap_reaches_the_running_gateway(sidecar: Sidecar) -> None:
    assert get(f"{sidecar.url}/later/v1/customers?limit=1")[0] == 404
    extra = f'\n[vendors.later]\nbase_url = "http://127.0.0.1:{sidecar.sandbox_port}"\n'
    sidecar.publish(sidecar.config_text(extra))
    wait_until(
        lambda: get(f"{sidecar.url}/later/v1/customers?limit=1", 2)[0] == 200, "the reloaded config", sidecar
    )
    assert '"event":"config_reloaded"' in sidecar.logs()


def test_sigterm_during_a_slow_call_lets_it_finish_and_exits_0(start_sidecar: Callable[[], Sidecar]) -> None:
    sidecar = start_sidecar()
    answer: dict[str, Any] = {}

    def call() -> None:
        answer["status"], answer["body"] = get(f"{sidecar.url}/sandbox/v1/slow?seconds=2", timeout=20)

    caller = threading.Thread(target=call)
    caller.start()

    def slow_call_arrived() -> bool:
        stats = json.loads(get(f"{sidecar.url}/sandbox/_sandbox/stats", 2)[1])
        return bool(stats["calls"].get("GET /v1/slow"))

    wait_until(slow_call_arrived, "the slow call at the sandbox", sidecar, timeout=10)
    signalled = time.monotonic()
    sidecar.podman("kill", "--signal", "TERM", sidecar.name)
    exit_code = sidecar.podman("wait", sidecar.name, timeout=30).stdout.strip()
    exited = time.monotonic() - signalled
    caller.join(20)
    logs = sidecar.logs()
    assert answer.get("status") == 200, (answer, tail(logs))
    assert json.loads(answer["body"]) == {"slept": 2.0}
    assert exit_code == "0", tail(logs)
    assert 0.5 < exited < 10, exited  # it waited for the call, not for the whole drain timeout
    assert '"event":"stopping"' in logs and '"event":"stopped"' in logs
    print(f"SIGTERM to exit: {exited:.2f} s, the slow call answered 200")


# --- the deployment examples' configs, checked by the image's own gateway ----------------------------


def _kubernetes_layout(folder: Path) -> tuple[Path, Path]:
    """Files as the kubelet would project deploy/kubernetes' ConfigMap and Secret into the gateway."""
    resources = manifests.kubernetes_resources()
    volumes = {v["name"]: v for v in manifests.pod_spec("Deployment", "billing")["volumes"]}
    config_map = resources[("ConfigMap", volumes["gateway-config"]["configMap"]["name"])]
    secret = resources[("Secret", volumes["vendor-credentials"]["secret"]["secretName"])]
    config, secrets = folder / "config", folder / "secrets"
    for item in volumes["gateway-config"]["configMap"]["items"]:
        target = config / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(config_map["data"][item["key"]])
    secrets.mkdir()
    for key in secret["data"]:
        (secrets / key).write_text(uuid.uuid4().hex)  # what the user writes into credentials/
    return config, secrets


@pytest.mark.parametrize("example", ["image", "kubernetes", "compose"])
def test_the_shipped_configs_pass_gateway_check_in_the_image(
    podman: Podman, example: str, tmp_path: Path
) -> None:
    mounts: list[str] = []
    if example == "kubernetes":
        config, secrets = _kubernetes_layout(tmp_path)
        paths = {m["name"]: m["mountPath"] for m in manifests.gateway_container()["volumeMounts"]}
        mounts = ["--volume", f"{config}:{paths['gateway-config']}:ro"]
        mounts += ["--volume", f"{secrets}:{paths['vendor-credentials']}:ro"]
    elif example == "compose":
        gateway = manifests.compose()["services"]["gateway"]
        for volume in gateway["volumes"]:
            source, target, *_ = volume.split(":")
            mounts += ["--volume", f"{(manifests.COMPOSE.parent / source).resolve()}:{target}:ro"]
        host = {"SANDBOX_API_KEY": uuid.uuid4().hex}  # what the user exports before `compose up`
        for name, value in manifests.compose_environment(gateway, host).items():
            mounts += ["--env", f"{name}={value}"]
    result = podman(
        "run", "--rm", "--network", "host", "--read-only", *mounts, IMAGE, "check", "--config", "/etc/gateway/config.toml",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": ok (" in result.stdout
