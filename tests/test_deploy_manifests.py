"""deploy/kubernetes/ validated offline: every object against the Kubernetes API schemas
(``kubernetes-validate``, strict: unknown fields are errors), and the parts that must agree
with each other and with the server: the container's flags parse with the real ``serve``
parser, probes ask the health-only port the flags open, Services and the budget select the
pods, the autoscaler scales the Deployment, termination leaves time for ``--grace``, and the
ConfigMap's experiments file parses with the real parser."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.cli import add_serve_arguments
from serving.lifecycle.experiments import parse_experiments

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The oldest API version the manifests promise (preStop `sleep` is on by default from 1.30),
# and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", "latest")
# Flags of the security work (TLS, tokens, metrics interface) that the Deployment passes
# already; once that work is in serving/cli.py they parse like every other flag.
PENDING_SECURITY_FLAGS = ("--tls-cert", "--tls-key", "--tls-client-ca", "--auth-tokens", "--metrics-host")


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


def _serve_flags() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args, unknown = parser.parse_known_args(_container()["args"])
    assert all(flag.split("=")[0] in PENDING_SECURITY_FLAGS for flag in unknown), unknown
    return args


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
        flag.split("=", 1)[1]
        for flag in container["args"]
        if flag.split("=")[0] in PENDING_SECURITY_FLAGS[:4]
    ]
    assert len(security) == 4
    assert all(Path(path).parent == Path(mounts["security"]) for path in security)
    secret = _one("Secret")
    assert {Path(path).name for path in security} == set(secret["stringData"])


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
