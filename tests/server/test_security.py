"""`zoo serve` with TLS and a bearer token, through our client, the CLI, tritonclient and
perf_analyzer; and what each refusal says."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import InferenceServerException, ZooClient
from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub

TOKEN = "s3cret-t0ken"
ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = ROOT / ".venv" / "bin" / "perf_analyzer"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def secure_server(start_zoo_server, tiny_repository: Path, tls_files: tuple[Path, Path]):
    cert, key = tls_files
    return start_zoo_server(
        tiny_repository, "--tls-cert", str(cert), "--tls-key", str(key), "--auth-token", TOKEN
    )


def client(server, tls_files, **options) -> ZooClient:
    return ZooClient(server.address, tls=True, root_certificates=tls_files[0], **options)


def test_tls_with_the_token_serves(secure_server, tls_files) -> None:
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    with client(secure_server, tls_files, token=TOKEN) as zoo:
        assert {m.name for m in zoo.list_models()} == {"tiny_mlp", "tiny_cnn"}
        assert len(zoo.infer("tiny_mlp", images).labels) == 3
    assert "s3cret" not in secure_server.log()  # the settings line masks the token


def test_refusals_say_why(secure_server, tls_files) -> None:
    for token, message in ((None, "missing metadata 'authorization"), ("nope", "wrong bearer")):
        with (
            client(secure_server, tls_files, token=token) as zoo,
            pytest.raises(InferenceServerException) as caught,
        ):
            zoo.metadata("tiny_mlp")
        assert caught.value.code == "UNAUTHENTICATED" and message in caught.value.message
    # Plaintext against TLS, and TLS without our certificate among the trusted roots.
    for options in ({}, {"tls": True}):
        with (
            ZooClient(secure_server.address, token=TOKEN, timeout=3, **options) as zoo,
            pytest.raises(InferenceServerException) as caught,
        ):
            zoo.is_server_live()
        assert caught.value.code == "UNAVAILABLE"


def test_streams_are_guarded_and_health_stays_open(secure_server, tls_files) -> None:
    credentials = grpc.ssl_channel_credentials(tls_files[0].read_bytes())
    with grpc.secure_channel(secure_server.address, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stream = GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([pb.ModelInferRequest(model_name="tiny_mlp")]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stream)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def zoo(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "zoo.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_and_load_over_tls(secure_server, tls_files, tmp_path: Path) -> None:
    image = tmp_path / "zeros.npy"
    np.save(image, np.zeros((28, 28), np.float32))
    connect = ["--url", secure_server.address, "--ca-cert", str(tls_files[0])]
    done = zoo("infer", "--model", "tiny_cnn", *connect, "--token", TOKEN, str(image))
    assert done.returncode == 0, done.stderr
    refused = zoo("infer", "--model", "tiny_cnn", *connect, str(image))
    assert refused.returncode == 3
    assert refused.stderr.strip().count("\n") == 0 and "UNAUTHENTICATED" in refused.stderr
    load = zoo("load", "--model", "tiny_cnn", *connect, "--token", TOKEN, "--duration", "1",
               "--warmup", "0", "--concurrency", "2", "--no-progress")  # fmt: skip
    assert load.returncode == 0, load.stderr
    assert "none" in load.stdout.splitlines()[-1]  # errors column


def test_tritonclient_and_perf_analyzer_over_tls(secure_server, tls_files) -> None:
    # tritonclient's stubs register the same protobuf names as ours: its own process.
    script = (
        "import sys, numpy as np, tritonclient.grpc as g\n"
        "c = g.InferenceServerClient(sys.argv[1], ssl=True, root_certificates=sys.argv[2])\n"
        "x = g.InferInput('images', [2, 1, 28, 28], 'FP32')\n"
        "x.set_data_from_numpy(np.zeros((2, 1, 28, 28), np.float32))\n"
        "r = c.infer('tiny_mlp', [x], headers={'authorization': 'Bearer ' + sys.argv[3]})\n"
        "print(r.as_numpy('probabilities').shape)\n"
    )
    address, cert = secure_server.address, str(tls_files[0])
    done = subprocess.run(
        [sys.executable, "-c", script, address, cert, TOKEN], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "(2, 10)", done.stderr[-2000:]
    if not PERF_ANALYZER.exists():
        pytest.skip("perf_analyzer is not installed (tools/install-perf-analyzer.sh)")
    command = [str(PERF_ANALYZER), "-m", "tiny_mlp", "-u", address, "-i", "grpc",
               "--ssl-grpc-use-ssl", "--ssl-grpc-root-certifications-file", cert,
               "-H", f"authorization: Bearer {TOKEN}", "--measurement-mode", "count_windows",
               "--measurement-request-count", "50", "-s", "100", "--max-trials", "5"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Throughput" in done.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "missing.pem", "--tls-key", "{key}"], "--tls-cert: Path does not"),
        (["--tls-cert", "{cert}", "--tls-key", "README.md"], "--tls-key: not a PEM file"),
        (["--auth-token", ""], "--auth-token: "),
    ],
)
def test_serve_refuses_bad_security_flags(tiny_repository: Path, tls_files, flags, message) -> None:
    cert, key = tls_files
    flags = [flag.format(cert=cert, key=key) for flag in flags]
    done = zoo("serve", "--repository", str(tiny_repository), "--port", "0", *flags)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr
