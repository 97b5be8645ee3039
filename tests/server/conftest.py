"""Fixtures for the server's tests: a channel and stub on the session's server, and
request builders (as fixtures: importlib test mode cannot import helper modules)."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from zoo.repository import list_models, list_versions, model_file, read_model_config

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER_INSTALL = ROOT / "tools" / "install-perf-analyzer.sh"
PERF_ANALYZER = ROOT / ".venv" / "bin" / "perf_analyzer"


@pytest.fixture(scope="session")
def channel(zoo_server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(zoo_server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> GRPCInferenceServiceStub:
    return GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="session")
def model_names(served_repository: Path) -> list[str]:
    return list_models(served_repository)


def infer_request(model: str, images: np.ndarray, **fields: object) -> pb.ModelInferRequest:
    """A ModelInfer request carrying `images` as raw FP32 "images"."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="images", datatype="FP32", shape=images.shape)
    request.raw_input_contents.append(images.astype("<f4").tobytes())
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        out.name: np.frombuffer(raw, "<f4").reshape(out.shape)
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def reference_outputs(repository: Path, model: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """In-process onnxruntime on the version the server serves by default."""
    model_dir = repository / model
    config = read_model_config(model_dir)
    version = list_versions(model_dir, config.version_policy)[-1]
    session = ort.InferenceSession(str(model_file(model_dir, version, config)))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images}), strict=True))


def images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="session")
def request_for() -> Callable[..., pb.ModelInferRequest]:
    return infer_request


@pytest.fixture(scope="session")
def decode() -> Callable[[pb.ModelInferResponse], dict[str, np.ndarray]]:
    return outputs_of


@pytest.fixture(scope="session")
def reference(served_repository: Path) -> Callable[[str, np.ndarray], dict[str, np.ndarray]]:
    return lambda model, x: reference_outputs(served_repository, model, x)


@pytest.fixture(scope="session")
def random_images() -> Callable[..., np.ndarray]:
    return images


@pytest.fixture(scope="session")
def perf_analyzer() -> Path:
    done = subprocess.run(
        ["bash", str(PERF_ANALYZER_INSTALL)], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        pytest.skip(f"perf_analyzer cannot be installed here: {done.stderr.strip()[-500:]}")
    return PERF_ANALYZER


# --- certificates (TLS tests) --------------------------------------------------


Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def issue(
    folder: Path,
    name: str,
    *,
    issuer: Issuer | None = None,
    ca: bool = False,
    hosts: tuple[x509.GeneralName, ...] = (),
) -> Issuer:
    """A certificate for `name` signed by `issuer` (else self-signed), written with its key
    to folder/name.pem and folder/name.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(hosts), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    folder = tmp_path_factory.mktemp("tls")
    hosts = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    issue(folder, "localhost", ca=True, hosts=hosts)
    return folder / "localhost.pem", folder / "localhost.key"


@pytest.fixture(scope="module")
def client_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of PEM files: ca (the servers' --tls-client-ca), client (a certificate
    it signed), and stranger (one signed by another authority, other-ca); each .pem with
    its .key."""
    folder = tmp_path_factory.mktemp("mtls")
    issue(folder, "client", issuer=issue(folder, "ca", ca=True))
    issue(folder, "stranger", issuer=issue(folder, "other-ca", ca=True))
    return folder


# --- string (BYTES) models -----------------------------------------------------

STRING_IDENTITY, STRING_ARITHMETIC = "string_identity", "string_arithmetic"
Tensors = list[tuple[str, int]]  # (name, size of the one dimension after the batch; -1 any)


def _string_model(
    repository: Path, name: str, nodes: list, inputs: Tensors, outputs: Tensors
) -> None:
    """An ONNX graph of STRING tensors [batch, size], and its config (max_batch_size 8,
    dynamic batching)."""
    import onnx
    from onnx import TensorProto, helper

    from proto.model_config_pb2 import (
        DataType,
        ModelConfig,
        ModelDynamicBatching,
        ModelInput,
        ModelOutput,
    )
    from zoo.repository import write_model_config

    def graph_tensors(specs: Tensors) -> list:
        return [
            helper.make_tensor_value_info(n, TensorProto.STRING, ["batch", "n" if d < 0 else d])
            for n, d in specs
        ]

    def config_tensors(cls: type, specs: Tensors) -> list:
        return [cls(name=n, data_type=DataType.TYPE_STRING, dims=[d]) for n, d in specs]

    graph = helper.make_graph(nodes, name, graph_tensors(inputs), graph_tensors(outputs))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # one this onnxruntime reads
    (repository / name / "1").mkdir(parents=True)
    onnx.save(model, str(repository / name / "1" / "model.onnx"))
    config = ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        max_batch_size=8,
        input=config_tensors(ModelInput, inputs),
        output=config_tensors(ModelOutput, outputs),
        dynamic_batching=ModelDynamicBatching(),
    )
    write_model_config(repository / name, config)


@pytest.fixture(scope="session")
def string_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models of strings, after Triton's examples: string_identity (INPUT0 -> OUTPUT0,
    any number of strings per batch item) and string_arithmetic (INPUT0, INPUT1: 16 numbers
    as text each -> OUTPUT0 their sums, OUTPUT1 their differences, as text)."""
    from onnx import TensorProto, helper

    repository = tmp_path_factory.mktemp("string_repository")
    node = helper.make_node
    _string_model(
        repository,
        STRING_IDENTITY,
        [node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [("INPUT0", -1)],
        [("OUTPUT0", -1)],
    )
    _string_model(
        repository,
        STRING_ARITHMETIC,
        [
            node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
            node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
            node("Add", ["a", "b"], ["sum"]),
            node("Sub", ["a", "b"], ["difference"]),
            node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
            node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
        ],
        [("INPUT0", 16), ("INPUT1", 16)],
        [("OUTPUT0", 16), ("OUTPUT1", 16)],
    )
    return repository


@pytest.fixture(scope="session")
def string_server(
    launch_zoo_server, string_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator:
    """A server on `string_repository` for the session."""
    log_path = tmp_path_factory.mktemp("string_server") / "server.log"
    server = launch_zoo_server(string_repository, log_path=log_path)
    yield server
    server.stop()
