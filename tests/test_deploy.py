"""The deployment files: validated against their specifications, wired consistently, and every
command they run run here.

* `docker-compose.yml` against the Compose specification (check-jsonschema's `vendor.compose-spec`),
  the Kubernetes manifests with kubernetes-validate (strict, oldest and newest API versions it has);
* the commands: the model fetch (against the fake hub), Triton's flags and health check (on the
  Triton of the nvidia-pytriton wheel, serving the fetched model as a CPU-flavour repository),
  AMIRA's command and health check behind that Triton and on the embedded backend, with and
  without API keys; the Kubernetes manifests run the same commands and probes;
* the Grafana dashboard reads metrics that AMIRA and Triton really export;
* the grace periods fit AMIRA's drain (`SHUTDOWN_DRAIN_SECS` plus the final flush).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import yaml

from amira.server.runner import hypercorn_config
from amira.settings import Settings
from amira.testing.recordings import DATA
from tests.fake_hub import FakeHub, serving_fake_hub
from tests.processes import free_port, running_amira

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
MANIFESTS = [K8S / name for name in ("models-pvc.yaml", "model-fetch-job.yaml", "triton.yaml", "amira.yaml")]
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "amira.json"
RECORDING = DATA / "cards" / "005.wav"
REFERENCE = "eight of spades four of clubs seven of hearts"
GPU_ONLY_METRICS = {"nv_gpu_utilization"}  # Triton exports these only where it has a GPU
PRE_STOP_SLEEP = 5


def load_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict:
    return load_yaml(COMPOSE)


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def k8s_objects() -> dict[tuple[str, str], dict]:
    """(kind, name) -> object, over every manifest."""
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in MANIFESTS for doc in documents(path)}


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's `${NAME:-default}` and `${NAME}` interpolation."""

    def replace(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"] or ""
        return environ.get(name) or default

    return re.sub(r"\$\{(?P<name>\w+)(:-(?P<default>[^}]*))?\}", replace, value)


def entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT, which the compose services' commands follow."""
    line = next(x for x in (ROOT / "Dockerfile").read_text().splitlines() if x.startswith("ENTRYPOINT"))
    return json.loads(line.removeprefix("ENTRYPOINT"))


def run_command(argv: list[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """A container's command on this machine: `amira` and `python` are this interpreter."""
    if argv[0] == "amira":
        argv = [sys.executable, "-m", "amira.cli", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    return subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


def healthcheck(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    return list(test[1:])


def service_environment(service: dict, replacements: Mapping[str, str]) -> dict[str, str]:
    """The service's environment as the container gets it, with paths and hosts moved to this machine."""
    environment = {}
    for key, value in (service.get("environment") or {}).items():
        text = interpolate(str(value), {})
        for old, new in replacements.items():
            text = text.replace(old, new)
        environment[key] = text
    return environment


def wait_healthy(argv: list[str], env: Mapping[str, str], seconds: float = 60) -> subprocess.CompletedProcess:
    """Run a health check until it passes, as Docker does during `start_period`."""
    deadline = time.monotonic() + seconds
    while True:
        result = run_command(argv, env, timeout=30)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        time.sleep(1)


def dashboard_metrics() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\b((?:amira|nv)_[a-z_]+)\b", e)}


def exported(exposition: str) -> set[str]:
    """Series names a scrape offers, including those of labelled metrics with no sample yet (their
    `# TYPE` line: a counter's series end in `_total` with prometheus_client, not with Triton)."""
    names = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and line[0] != "#"}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"counter": ("", "_total"), "histogram": ("_bucket", "_sum", "_count")}
            names |= {name + suffix for suffix in suffixes.get(kind, ("",))}
    return names


# ---------------------------------------------------------------------------------------------------
# Specifications


def test_the_compose_file_fits_the_compose_specification(tmp_path: Path) -> None:
    def check(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    valid = check(COMPOSE)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    broken = tmp_path / "docker-compose.yml"  # the validator does refuse what the specification does
    broken.write_text(COMPOSE.read_text().replace("    shm_size:", "    shm_sizes:"))
    assert check(broken).returncode != 0


# The oldest Kubernetes still supported by the manifests (PDB policy/v1, HPA autoscaling/v2 and
# the rest are older than this), and the newest the installed kubernetes-validate knows.
@pytest.mark.parametrize("version", ["1.28.0", "latest"])
def test_the_kubernetes_manifests_validate(tmp_path: Path, version: str) -> None:
    from kubernetes_validate.utils import latest_version

    version = latest_version() if version == "latest" else version

    def check(*paths: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *map(str, paths)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    valid = check(*MANIFESTS)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert valid.stdout.count("passed") == 8  # PVC, Job, 2 Deployments, 2 Services, PDB, HPA
    broken = tmp_path / "amira.yaml"
    broken.write_text((K8S / "amira.yaml").read_text().replace("minAvailable:", "minAvailabel:"))
    assert check(broken).returncode != 0
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(path.name for path in MANIFESTS)


# ---------------------------------------------------------------------------------------------------
# Wiring


def test_compose_profiles_and_wiring() -> None:
    services = compose()["services"]
    assert {name for name, s in services.items() if "gpu" in s["profiles"]} == {
        "model-fetch", "triton", "amira", "prometheus", "grafana"
    }  # fmt: skip
    assert {name for name, s in services.items() if "cpu" in s["profiles"]} == {
        "model-fetch", "amira-cpu", "prometheus", "grafana"
    }  # fmt: skip
    gpu = services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["amira"]["depends_on"]["triton"]["condition"] == "service_healthy"
    assert services["triton"]["depends_on"]["model-fetch"]["condition"] == "service_completed_successfully"
    assert services["amira"]["environment"]["TRITON_ENDPOINT"] == "http://triton:8000"
    assert "TRITON_ENDPOINT" not in services["amira-cpu"]["environment"]
    repository = services["amira"]["environment"]["MODEL_REPOSITORY"]
    assert f"--model-repository={repository}" in services["triton"]["command"]
    assert services["model-fetch"]["command"][-1] == repository
    for name in ("amira", "amira-cpu"):
        assert "amira" in services[name]["networks"]["default"]["aliases"]
        assert "/ready" in healthcheck(services[name])[-1]
    for service in services.values():  # every file the compose file mounts is shipped
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source

    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    assert targets == {"amira": ["amira:8057"], "triton": ["triton:8002"]}
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    board = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["datasources"][0]["uid"]}
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("streams", "requests", "latency", "errors", "queue", "compute"):
        assert topic in titles, topic


def test_kubernetes_wiring_matches_the_compose_file() -> None:
    objects, services = k8s_objects(), compose()["services"]
    amira = objects["Deployment", "amira"]["spec"]["template"]["spec"]["containers"][0]
    triton = objects["Deployment", "triton"]["spec"]["template"]["spec"]["containers"][0]
    fetch = objects["Job", "amira-model-fetch"]["spec"]["template"]["spec"]["containers"][0]
    # the same commands as the compose file's, which the test below runs
    assert amira["args"] == services["amira"]["command"]
    assert triton["args"] == services["triton"]["command"]
    assert fetch["args"] == services["model-fetch"]["command"]
    assert ["python", *amira["readinessProbe"]["exec"]["command"][1:]] == healthcheck(services["amira"])
    assert amira["livenessProbe"]["httpGet"]["path"] == "/health"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in amira["env"]}
    assert env["TRITON_ENDPOINT"] == "http://triton:8000"
    ports = {p["name"]: p["port"] for p in objects["Service", "triton"]["spec"]["ports"]}
    assert ports["http"] == 8000
    labels = objects["Deployment", "amira"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        objects["Service", "amira"]["spec"]["selector"],
        objects["PodDisruptionBudget", "amira"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for kind in (("Deployment", "amira"), ("Deployment", "triton"), ("Job", "amira-model-fetch"))
        for v in objects[kind]["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"amira-models"} and ("PersistentVolumeClaim", "amira-models") in objects

    # The HPA scales on a metric AMIRA exports, which the adapter's rule serves under that name.
    hpa = objects["HorizontalPodAutoscaler", "amira"]["spec"]
    metric = hpa["metrics"][0]["pods"]["metric"]["name"]
    rule = load_yaml(K8S / "prometheus-adapter-values.yaml")["rules"]["custom"][0]
    assert metric == rule["name"]["as"] == "amira_active_streams" and metric in rule["seriesQuery"]
    assert hpa["scaleTargetRef"]["name"] == "amira"
    assert int(hpa["metrics"][0]["pods"]["target"]["averageValue"]) < int(env["MAX_CONCURRENT_STREAMS"])


def grace_needed(environment: Mapping[str, str]) -> float:
    """Seconds AMIRA may take after SIGTERM: its Hypercorn graceful timeout for these settings."""
    keys = ("SHUTDOWN_DRAIN_SECS", "INFERENCE_TIMEOUT_SECS")
    settings = Settings.from_env({k: v for k, v in environment.items() if k in keys})
    return hypercorn_config(settings).graceful_timeout


def test_grace_periods_fit_the_drain() -> None:
    amira = k8s_objects()["Deployment", "amira"]["spec"]["template"]["spec"]
    container = amira["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRE_STOP_SLEEP)]
    needed = PRE_STOP_SLEEP + grace_needed(env)
    assert needed == 35  # 5 + 10 + 4 x 5, as the manifest's comment says
    assert amira["terminationGracePeriodSeconds"] >= needed + 5
    for name in ("amira", "amira-cpu"):
        service = compose()["services"][name]
        stop = int(service["stop_grace_period"].removesuffix("s"))
        assert stop >= grace_needed(service_environment(service, {})) + 5, name
    assert shutil.which("sleep")


# ---------------------------------------------------------------------------------------------------
# Every command


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with serving_fake_hub(tmp_path) as fake:
        yield fake


def transcribe(base: str, model: str, headers: Mapping[str, str] | None = None) -> str:
    answer = httpx.post(
        f"{base}/v2/decode/batch/{model}",
        content=RECORDING.read_bytes(),
        headers={"Content-Type": "audio/wav", **(headers or {})},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["transcription"]


def test_every_compose_command_runs(tmp_path: Path, hub: FakeHub) -> None:
    pytest.importorskip("pytriton", reason="nvidia-pytriton missing (the test extra installs it)")
    from amira.tooling.triton_launcher import running_triton
    from amira.tooling.triton_repository import build_repository

    services = compose()["services"]
    models = tmp_path / "models"
    where = {"/models": str(models)}

    # model-fetch: the real command, against the fake hub
    fetch = services["model-fetch"]
    fetch_env = service_environment(fetch, where) | {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    fetched = run_command(
        [*entrypoint(), *[arg.replace("/models", str(models)) for arg in fetch["command"]]], fetch_env, 180
    )
    assert fetched.returncode == 0, fetched.stderr
    repository = Path(fetch["command"][-1].replace("/models", str(models)))
    assert (repository / "model_sets.toml").is_file() and (models / ".hf-cache" / "hub").is_dir()
    model_set = "parakeet-tdt-0.6b-v2"

    # triton: its flags on the wheel's Triton, serving the same models in the CPU flavour
    triton = services["triton"]
    assert triton["command"][0] == "tritonserver"
    flags = [arg for arg in triton["command"][1:] if not arg.startswith("--model-repository=")]
    cpu_repository = build_repository(repository, tmp_path / "triton-repository", "cpu")
    metrics_port = free_port()
    with running_triton(
        cpu_repository, extra_args=flags, metrics_port=metrics_port, log_path=tmp_path / "triton.log"
    ) as server:
        probe = [arg.replace("127.0.0.1:8000", server.endpoint) for arg in healthcheck(triton)]
        triton_health = run_command(probe, {})
        assert triton_health.returncode == 0, triton_health.stderr

        # amira: its command and health check behind that Triton
        amira = services["amira"]
        env = service_environment(amira, where | {"http://triton:8000": server.url})
        with running_amira([*entrypoint(), *amira["command"]], env, log=tmp_path / "amira.log") as base:
            port = base.rsplit(":", 1)[1]
            health = wait_healthy(healthcheck(amira), env | {"SERVER_PORT": port})
            assert health.returncode == 0, health.stderr
            assert httpx.get(f"{base}/health", timeout=10).json()["backend"] == "triton"
            assert transcribe(base, model_set) == REFERENCE
            assert httpx.get(f"{base}/", timeout=10).status_code == 200  # WEB_UI=true behind Triton
            amira_metrics = exported(httpx.get(f"{base}/metrics", timeout=10).text)
        triton_metrics = exported(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text)

    # The dashboard reads metrics that exist (histograms as their _bucket series).
    wanted = dashboard_metrics()
    assert {m for m in wanted if m.startswith("amira_")} <= amira_metrics
    assert {m for m in wanted if m.startswith("nv_")} - GPU_ONLY_METRICS <= triton_metrics

    # amira-cpu: the same command on the embedded backend, its health check with API keys
    cpu = services["amira-cpu"]
    env = service_environment(cpu, where) | {"API_KEYS": "first-key,second-key"}
    with running_amira([*entrypoint(), *cpu["command"]], env, log=tmp_path / "amira-cpu.log") as base:
        port = base.rsplit(":", 1)[1]
        health = wait_healthy(healthcheck(cpu), env | {"SERVER_PORT": port})
        assert health.returncode == 0, health.stderr
        refused = run_command(healthcheck(cpu), env | {"SERVER_PORT": port, "API_KEYS": "wrong-key"})
        assert refused.returncode != 0 and "401" in refused.stderr
        assert httpx.get(f"{base}/health", timeout=10).json()["backend"] == "embedded"
        assert transcribe(base, model_set, {"X-API-Key": "second-key"}) == REFERENCE
