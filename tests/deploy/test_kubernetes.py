"""deploy/k8s, without a cluster: the base and each overlay rendered by `kubectl kustomize`,
every resource validated against Kubernetes' own schemas (strict: unknown fields fail),
their references to each other checked, and the Deployment's container command run here
so that its probes, ports and metrics are asked of a real server."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import STOP_MARGIN_S

KUSTOMIZATIONS = ("k8s/base", "k8s/overlays/cpu", "k8s/overlays/gpu")
OVERLAYS = {"k8s/overlays/cpu": ("cpu", "cpu"), "k8s/overlays/gpu": ("cuda", "cuda")}
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())  # gRPC probes: GA in 1.27


def the(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def container_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def schema_error(doc: dict[str, Any], version: str) -> str | None:
    """Why Kubernetes `version` would refuse `doc` (strict: unknown fields too), or None."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        # Its own message prints the whole schema; the place and the reason suffice.
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{doc['kind']} at /{where}: {error.message}"
    return None


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_resource_validates(rendered, kustomization: str, version: str) -> None:
    docs = rendered(kustomization)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    errors = [error for doc in docs if (error := schema_error(doc, version))]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_deployment_args_are_what_zoo_serve_accepts(
    rendered, dockerfile, parse_serve_args, kustomization: str
) -> None:
    image = dockerfile("Dockerfile").final
    container = server_container(the(rendered(kustomization), "Deployment"))
    assert "command" not in container  # the image's ENTRYPOINT, `zoo serve`, runs
    settings = parse_serve_args(container["args"], image.env)
    assert settings.port == container_port(container, "grpc")
    assert settings.metrics_port == container_port(container, "metrics")
    assert settings.http_port == container_port(container, "http")
    volumes = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.repository) == volumes["models"]


@pytest.mark.parametrize(("kustomization", "device_and_tag"), OVERLAYS.items())
def test_overlay_sets_image_and_device(
    rendered, parse_serve_args, kustomization: str, device_and_tag: tuple[str, str]
) -> None:
    device, tag = device_and_tag
    spec = the(rendered(kustomization), "Deployment")["spec"]["template"]["spec"]
    container = server_container(the(rendered(kustomization), "Deployment"))
    assert parse_serve_args(container["args"]).device == device
    for each in spec["containers"] + spec["initContainers"]:
        assert each["image"] == f"modelzoo:{tag}"
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert gpus == (1 if device == "cuda" else None)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes_ask_the_grpc_port(rendered, kustomization: str) -> None:
    container = server_container(the(rendered(kustomization), "Deployment"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == container_port(container, "grpc")


def test_termination_grace_covers_the_servers_drain(rendered, parse_serve_args) -> None:
    # Kubernetes counts preStop in the grace period; the server gives in-flight requests
    # --grace seconds after SIGTERM and gRPC STOP_MARGIN_S more before it exits.
    spec = the(rendered("k8s/base"), "Deployment")["spec"]["template"]["spec"]
    container = server_container(the(rendered("k8s/base"), "Deployment"))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(command[1]) + parse_serve_args(container["args"]).grace + STOP_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] >= drain + 1


def test_security_context_matches_the_image(rendered, dockerfile) -> None:
    user, _, group = dockerfile("Dockerfile").final.user.partition(":")
    spec = the(rendered("k8s/base"), "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(user)
    assert spec["securityContext"]["runAsGroup"] == int(group)
    for container in spec["containers"] + spec["initContainers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_models_volume_is_filled_from_the_image(rendered, dockerfile) -> None:
    baked = dockerfile("Dockerfile").final.env["ZOO_REPOSITORY"]
    spec = the(rendered("k8s/base"), "Deployment")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    (mount,) = init["volumeMounts"]
    assert mount["name"] == "models"
    assert init["command"] == ["cp", "-R", f"{baked}/.", f"{mount['mountPath']}/"]
    assert mount["mountPath"] != baked  # else the empty volume would hide what it copies


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_selectors_and_references_meet(rendered, kustomization: str) -> None:
    docs = rendered(kustomization)
    deployment = the(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        the(docs, "Service")["spec"]["selector"],
        the(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()
    target = the(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # The HPA's CPU utilisation is relative to the request: there must be one.
    assert server_container(deployment)["resources"]["requests"]["cpu"]


def test_service_exposes_every_container_port(rendered) -> None:
    docs = rendered("k8s/base")
    container = server_container(the(docs, "Deployment"))
    ports = {p["name"]: p for p in the(docs, "Service")["spec"]["ports"]}
    assert set(ports) == {p["name"] for p in container["ports"]} == {"http", "grpc", "metrics"}
    for name, port in ports.items():
        assert port["targetPort"] == name
        assert port["port"] == container_port(container, name)
    annotations = the(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container_port(container, "metrics")


def health_status(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def test_deployment_command_answers_its_probes_and_scrapes(
    rendered,
    dockerfile,
    container_env,
    start_container_command,
    image_pythonpath,
    infer_with_tritonclient,
    repository_copy: Path,
) -> None:
    image = dockerfile("Dockerfile")
    docs = rendered("k8s/overlays/cpu")
    deployment = the(docs, "Deployment")
    container = server_container(deployment)
    env = container_env(image, container)
    server = start_container_command(
        image.final.entrypoint + container["args"],
        env,
        image_pythonpath(image),
        repository=repository_copy,
    )
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        service = container[probe]["grpc"].get("service", "")
        assert health_status(server.address, service) == health_pb2.HealthCheckResponse.SERVING
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    url = f"http://127.0.0.1:{server.metrics_port}{annotations['prometheus.io/path']}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200 and b"# TYPE" in response.read()
    # The REST API on the Service's http port: KServe v2's readiness.
    ready = f"http://127.0.0.1:{server.http_port}/v2/health/ready"
    with urllib.request.urlopen(ready, timeout=10) as response:
        assert response.status == 200
    report = infer_with_tritonclient(server.address, repository_copy)
    assert report["model_ready"] and report["max_diff"] < 1e-5, report
    assert server.stop() == 0, server.log()
