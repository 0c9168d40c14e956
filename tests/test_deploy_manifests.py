"""deploy/kubernetes/ validated offline: every object against the Kubernetes API schemas
(``kubernetes-validate``, strict: unknown fields are errors), and the parts that must agree
with each other and with the server: the container's flags parse with the real ``serve``
parser, probes ask the health-only port the flags open, Services and the budget select the
pods, the autoscaler scales the Deployment, termination leaves time for ``--grace``, and the
ConfigMap's experiments file parses with the real parser."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.cli import access_options, add_serve_arguments
from serving.lifecycle.experiments import parse_experiments

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The oldest API version the manifests promise (preStop `sleep` is on by default from 1.30),
# and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", "latest")
DOCKERFILE = DEPLOY.parent.parent / "Dockerfile"
# The security flags whose files come from the Secret.
SECURITY_FILE_FLAGS = ("--tls-cert", "--tls-key", "--tls-client-ca", "--auth-tokens")


def _objects() -> Iterator[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((DEPLOY / name).read_text()):
            if document is not None:
                yield name, document


OBJECTS = list(_objects())


def _one(kind: str) -> dict[str, Any]:
    (found,) = [o for _, o in OBJECTS if o["kind"] == kind]
    return found


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    kinds = sorted(o["kind"] for _, o in OBJECTS)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Namespace",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "Service",
        ]
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("name", "obj"), OBJECTS, ids=[f"{n}:{o['kind']}" for n, o in OBJECTS])
def test_every_object_matches_the_kubernetes_schema(name: str, obj: dict[str, Any], version: str) -> None:
    import kubernetes_validate

    wanted = kubernetes_validate.latest_version() if version == "latest" else version
    try:
        kubernetes_validate.validate(obj, wanted, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name} ({obj['kind']}) is invalid for Kubernetes {wanted}: {exc.message} at {exc.path}")


def _container() -> dict[str, Any]:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _parse_serve(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by the real ``serve`` parser: an unknown or malformed flag fails the test."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def _serve_flags() -> argparse.Namespace:
    return _parse_serve(_container()["args"])


def test_the_container_flags_are_the_servers_and_the_probes_ask_its_health_port() -> None:
    args = _serve_flags()
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "health": args.health_port, "metrics": args.metrics_port}
    assert args.model.startswith("models:/")
    assert "@" in args.model
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # Kubernetes' own gRPC probe (grpc.health.v1, overall health ""), plaintext: the health port.
        assert container[probe]["grpc"] == {"port": args.health_port}, probe
    assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(args.experiments).parent == Path(mounts["experiments"])
    assert Path(args.bundle_cache) == Path(mounts["bundle-cache"])
    security = [
        flag.split("=", 1)[1] for flag in container["args"] if flag.split("=")[0] in SECURITY_FILE_FLAGS
    ]
    assert len(security) == 4
    assert all(Path(path).parent == Path(mounts["security"]) for path in security)
    secret = _one("Secret")
    assert {Path(path).name for path in security} == set(secret["stringData"])


def test_the_deployment_is_secure_by_default() -> None:
    args = _serve_flags()
    assert not args.insecure
    access_options(args).check_exposure(args.host)  # TLS + tokens on a non-loopback host


def _dockerfile_json(instruction: str) -> list[str]:
    """The JSON (exec-form) arguments of the ``serve`` stage's ``instruction``, continuations joined."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    serve = text.split("AS serve", 1)[1].split("\nFROM ", 1)[0]
    (line,) = [row for row in serve.splitlines() if row.startswith(instruction + " ")]
    parsed: list[str] = json.loads(line[len(instruction) :].split("CMD", 1)[-1].strip())
    return parsed


def test_the_serving_image_is_secure_by_default_and_its_healthcheck_asks_the_health_port() -> None:
    args = _parse_serve(_dockerfile_json("CMD"))
    assert not args.insecure
    access_options(args).check_exposure(args.host)
    healthcheck = _dockerfile_json("HEALTHCHECK")
    address = healthcheck[healthcheck.index("--address") + 1]
    assert address == f"127.0.0.1:{args.health_port}"


def test_termination_leaves_the_grace_period_to_in_flight_calls() -> None:
    args = _serve_flags()
    pod = _one("Deployment")["spec"]["template"]["spec"]
    pause = _container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pause + args.grace + 1


def test_services_budget_and_autoscaler_point_at_the_pods() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        k: labels[k] for k in deployment["spec"]["selector"]["matchLabels"]
    }
    container_ports = {p["name"] for p in _container()["ports"]}
    services = [o for _, o in OBJECTS if o["kind"] == "Service"]
    assert sorted(s["spec"].get("clusterIP", "") for s in services) == ["", "None"]  # plain + headless
    for service in services:
        assert _labels_match(service["spec"]["selector"], labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert _labels_match(_one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_experiments_configmap_is_a_valid_experiments_file() -> None:
    data = _one("ConfigMap")["data"]["experiments.toml"]
    parsed = parse_experiments(data.encode(), Path("configmap:experiments.toml"))
    assert parsed.experiments == {}  # shipped with no experiment running
