"""deploy/kserve, without a cluster or KServe's CRDs: no offline schema of KServe's
resources is installable beside this project (the kserve package needs protobuf 6), so the
fields KServe acts on are checked one by one, the embedded containers are validated
against Kubernetes' core/v1 Container schema, and the runtime's command is run here on a
repository laid out as KServe's storage initializer leaves it (/mnt/models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from server.app import STOP_MARGIN_S

ROOT = Path(__file__).resolve().parents[2]
# Where KServe's storage initializer puts the storageUri's content in the runtime's pod.
KSERVE_MODEL_MOUNT = "/mnt/models"
# A pod's terminationGracePeriodSeconds when its spec sets none.
KUBERNETES_DEFAULT_TERMINATION_GRACE_S = 30


def runtime(load_yaml) -> dict[str, Any]:
    (doc,) = load_yaml("kserve/servingruntime.yaml")
    return doc


def inference_service(load_yaml) -> dict[str, Any]:
    (doc,) = load_yaml("kserve/inferenceservice.yaml")
    return doc


def kserve_container(load_yaml) -> dict[str, Any]:
    (container,) = runtime(load_yaml)["spec"]["containers"]
    return container


def test_runtime_is_a_grpc_v2_onnx_runtime(load_yaml) -> None:
    doc = runtime(load_yaml)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert doc["spec"]["protocolVersions"] == ["grpc-v2"]  # no REST: the server has none yet
    formats = {f["name"]: f for f in doc["spec"]["supportedModelFormats"]}
    assert set(formats) == {"onnx"}
    # KServe runs the runtime's container by this name.
    assert kserve_container(load_yaml)["name"] == "kserve-container"


@pytest.mark.parametrize("version", ("1.27", kubernetes_validate.latest_version()))
def test_runtime_container_is_a_kubernetes_container(load_yaml, validate_as, version) -> None:
    validate_as(kserve_container(load_yaml), "io.k8s.api.core.v1.Container", version)


def test_runtime_command_serves_the_kserve_mount_on_its_h2c_port(
    load_yaml, dockerfile, parse_serve_args
) -> None:
    container = kserve_container(load_yaml)
    assert "command" not in container  # the image's ENTRYPOINT, `zoo serve`, runs
    settings = parse_serve_args(container["args"], dockerfile("Dockerfile").final.env)
    assert str(settings.repository) == KSERVE_MODEL_MOUNT
    # One port, named h2c: KServe routes gRPC (HTTP/2 cleartext) to it.
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("h2c", settings.port)
    annotations = runtime(load_yaml)["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == settings.metrics_port
    assert container["image"] == "modelzoo:cpu" and settings.device == "cpu"
    # KServe routes the one port; REST stays off rather than listen unrouted.
    assert settings.http_port == -1


def test_inference_service_names_the_runtime(load_yaml, parse_serve_args) -> None:
    doc = inference_service(load_yaml)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = doc["spec"]["predictor"]
    model = predictor["model"]
    spec = runtime(load_yaml)["spec"]
    assert model["runtime"] == runtime(load_yaml)["metadata"]["name"]
    assert model["protocolVersion"] in spec["protocolVersions"]
    supported = {(f["name"], f["version"]) for f in spec["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in supported
    assert "://" in model["storageUri"]
    # Knative refuses the field; Kubernetes' default must cover the drain (raw mode).
    assert "terminationGracePeriodSeconds" not in predictor
    grace = parse_serve_args(kserve_container(load_yaml)["args"]).grace
    assert grace + STOP_MARGIN_S + 1 <= KUBERNETES_DEFAULT_TERMINATION_GRACE_S


def test_runtime_command_serves_a_kserve_model_mount(
    load_yaml,
    dockerfile,
    container_env,
    start_container_command,
    image_pythonpath,
    infer_with_tritonclient,
    repository_copy: Path,
) -> None:
    # repository_copy is .../mnt/models: the storage initializer copies the storageUri's
    # content there, so a Triton-layout repository arrives as it is here.
    assert repository_copy.parts[-2:] == ("mnt", "models")
    image = dockerfile("Dockerfile")
    env = container_env(image)
    server = start_container_command(
        image.final.entrypoint + kserve_container(load_yaml)["args"],
        env,
        image_pythonpath(image),
        repository=repository_copy,
    )
    report = infer_with_tritonclient(server.address, repository_copy)
    assert report["ready"] and report["model_ready"] and report["max_diff"] < 1e-5, report
    assert server.stop() == 0, server.log()
