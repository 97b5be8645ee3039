"""`zoo serve` with TLS, mutual TLS and a bearer token, through our client, the CLI,
tritonclient and perf_analyzer; and what each refusal says."""

from __future__ import annotations

import asyncio
import json
import pickle
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import AsyncZooClient, InferenceServerException, ZooClient
from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from zoo.errors import InvalidArgumentError

TOKEN = "s3cret-t0ken"
ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = ROOT / ".venv" / "bin" / "perf_analyzer"
IMAGES = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)


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


# tritonclient's stubs register the same protobuf names as ours: it runs in its own process.
# argv: address, the client's keyword arguments and infer's headers (JSON).
TRITONCLIENT_INFER = (
    "import json, sys, numpy as np, tritonclient.grpc as g\n"
    "c = g.InferenceServerClient(sys.argv[1], ssl=True, **json.loads(sys.argv[2]))\n"
    "x = g.InferInput('images', [2, 1, 28, 28], 'FP32')\n"
    "x.set_data_from_numpy(np.zeros((2, 1, 28, 28), np.float32))\n"
    "r = c.infer('tiny_mlp', [x], headers=json.loads(sys.argv[3]))\n"
    "print(r.as_numpy('probabilities').shape)\n"
)


def assert_tritonclient_infers(address: str, headers: dict[str, str], **options: str) -> None:
    command = [sys.executable, "-c", TRITONCLIENT_INFER, address]
    command += [json.dumps(options), json.dumps(headers)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "(2, 10)", done.stderr[-2000:]


def assert_perf_analyzer_measures(address: str, *flags: str) -> None:
    if not PERF_ANALYZER.exists():
        pytest.skip("perf_analyzer is not installed (tools/install-perf-analyzer.sh)")
    command = [str(PERF_ANALYZER), "-m", "tiny_mlp", "-u", address, "-i", "grpc", *flags,
               "--measurement-mode", "count_windows", "--measurement-request-count", "50",
               "-s", "100", "--max-trials", "5"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Throughput" in done.stdout


def test_tritonclient_and_perf_analyzer_over_tls(secure_server, tls_files) -> None:
    cert = str(tls_files[0])
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert_tritonclient_infers(secure_server.address, bearer, root_certificates=cert)
    assert_perf_analyzer_measures(
        secure_server.address, "--ssl-grpc-use-ssl", "--ssl-grpc-root-certifications-file",
        cert, "-H", f"authorization: Bearer {TOKEN}",
    )  # fmt: skip


@pytest.fixture
def mtls_server(start_zoo_server, tiny_repository: Path, tls_files, client_certs: Path):
    cert, key = tls_files
    return start_zoo_server(
        tiny_repository, "--tls-cert", str(cert), "--tls-key", str(key),
        "--tls-client-ca", str(client_certs / "ca.pem"),
    )  # fmt: skip


def mtls_client(server, tls_files, client_certs: Path, name: str = "client") -> ZooClient:
    return ZooClient(
        server.address,
        root_certificates=tls_files[0],
        certificate_chain=client_certs / f"{name}.pem",
        private_key=client_certs / f"{name}.key",
    )


def test_mutual_tls_serves_a_client_certificate_of_its_ca(
    mtls_server, tls_files, client_certs: Path
) -> None:
    with mtls_client(mtls_server, tls_files, client_certs) as zoo:
        assert len(zoo.infer("tiny_mlp", IMAGES).labels) == 3
        # `zoo load` pickles the connection into its generator processes.
        assert pickle.loads(pickle.dumps(zoo.connection)) == zoo.connection

    async def infer_async() -> int:
        async with AsyncZooClient(
            mtls_server.address,
            root_certificates=tls_files[0],
            certificate_chain=client_certs / "client.pem",
            private_key=client_certs / "client.key",
        ) as zoo:
            return len(await zoo.infer("tiny_cnn", IMAGES))

    assert asyncio.run(infer_async()) == 3


def test_mutual_tls_refuses_other_clients_and_serves_on(
    mtls_server, tls_files, client_certs: Path
) -> None:
    without = ZooClient(mtls_server.address, root_certificates=tls_files[0])
    stranger = mtls_client(mtls_server, tls_files, client_certs, "stranger")
    for refused in (without, stranger):
        with refused as zoo, pytest.raises(InferenceServerException) as caught:
            zoo.infer("tiny_mlp", IMAGES)
        # In TLS 1.3 the server checks the client's certificate after the client has
        # finished its side of the handshake: the client sees only "Socket closed" (the
        # reason is in the server's log), so the welcome below is what shows it was the
        # certificate that was refused.
        assert caught.value.code == "UNAVAILABLE", caught.value
    with mtls_client(mtls_server, tls_files, client_certs) as zoo:
        assert len(zoo.infer("tiny_mlp", IMAGES).labels) == 3
    assert mtls_server.process.poll() is None


def test_tritonclient_perf_analyzer_and_cli_with_a_client_certificate(
    mtls_server, tls_files, client_certs: Path, tmp_path: Path
) -> None:
    cert = tls_files[0]
    client_cert, client_key = client_certs / "client.pem", client_certs / "client.key"
    connect = [
        "--url", mtls_server.address, "--ca-cert", str(cert),
        "--tls-client-cert", str(client_cert), "--tls-client-key", str(client_key),
    ]  # fmt: skip
    image = tmp_path / "zeros.npy"
    np.save(image, np.zeros((28, 28), np.float32))
    done = zoo("infer", "--model", "tiny_cnn", *connect, str(image))
    assert done.returncode == 0, done.stderr
    load = zoo("load", "--model", "tiny_cnn", *connect, "--duration", "1", "--warmup", "0",
               "--concurrency", "2", "--no-progress")  # fmt: skip
    assert load.returncode == 0, load.stderr
    assert "none" in load.stdout.splitlines()[-1]  # errors column
    assert_tritonclient_infers(
        mtls_server.address, {}, root_certificates=str(cert),
        certificate_chain=str(client_cert), private_key=str(client_key),
    )  # fmt: skip
    assert_perf_analyzer_measures(
        mtls_server.address, "--ssl-grpc-use-ssl", "--ssl-grpc-root-certifications-file",
        str(cert), "--ssl-grpc-certificate-chain-file", str(client_cert),
        "--ssl-grpc-private-key-file", str(client_key),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-client-cert", "{cert}"], "--tls-client-cert and --tls-client-key go together"),
        (["--tls-client-key", "{key}"], "--tls-client-cert and --tls-client-key go together"),
        (["--tls-client-cert", "missing.pem", "--tls-client-key", "{key}"],
         "--tls-client-cert 'missing.pem': No such file"),
        (["--tls-client-cert", "README.md", "--tls-client-key", "{key}"],
         "--tls-client-cert 'README.md': not a PEM certificate"),
        (["--tls-client-cert", "{key}", "--tls-client-key", "{cert}"],
         "not a PEM certificate"),  # swapped
        (["--ca-cert", "README.md"], "--ca-cert 'README.md': not a PEM certificate"),
    ],
)  # fmt: skip
def test_client_refuses_bad_certificate_flags(client_certs: Path, flags, message) -> None:
    cert, key = client_certs / "client.pem", client_certs / "client.key"
    flags = [flag.format(cert=cert, key=key) for flag in flags]
    done = zoo("models", "--url", "127.0.0.1:1", *flags)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr


def test_client_refuses_bad_certificate_arguments(client_certs: Path) -> None:
    cert, key = client_certs / "client.pem", client_certs / "client.key"
    for options, message in (
        ({"certificate_chain": cert}, "certificate_chain and private_key go together"),
        ({"certificate_chain": key, "private_key": key}, "certificate_chain "),
        ({"certificate_chain": cert, "private_key": cert}, "private_key "),
        ({"certificate_chain": cert.read_bytes(), "private_key": b"nope"}, "private_key: not"),
    ):
        with pytest.raises(InvalidArgumentError, match=message):
            ZooClient("127.0.0.1:1", **options)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "missing.pem", "--tls-key", "{key}"], "--tls-cert: Path does not"),
        (["--tls-cert", "{cert}", "--tls-key", "README.md"], "--tls-key: not a PEM file"),
        (["--auth-token", ""], "--auth-token: "),
        (["--tls-client-ca", "{cert}"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "README.md"],
         "--tls-client-ca: not a PEM file"),
    ],
)  # fmt: skip
def test_serve_refuses_bad_security_flags(tiny_repository: Path, tls_files, flags, message) -> None:
    cert, key = tls_files
    flags = [flag.format(cert=cert, key=key) for flag in flags]
    done = zoo("serve", "--repository", str(tiny_repository), "--port", "0", *flags)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr


def test_two_authorization_headers_are_refused(secure_server, tls_files) -> None:
    credentials = grpc.ssl_channel_credentials(tls_files[0].read_bytes())
    with grpc.secure_channel(secure_server.address, credentials) as channel:
        stub = GRPCInferenceServiceStub(channel)
        request = pb.ModelMetadataRequest(name="tiny_mlp")
        good = ("authorization", f"Bearer {TOKEN}")
        assert stub.ModelMetadata(request, metadata=(good,), timeout=5).name == "tiny_mlp"
        for headers in ((("authorization", "Bearer wrong"), good), (good, good)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelMetadata(request, metadata=headers, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "expected one 'authorization' metadata entry, got 2" in caught.value.details()


def test_the_metrics_port_demands_the_same_client_certificate(
    mtls_server, tls_files, client_certs: Path
) -> None:
    url = f"https://127.0.0.1:{mtls_server.metrics_port}/metrics"
    trusting = ssl.create_default_context(cafile=tls_files[0])
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url, context=trusting, timeout=10).read()
    trusting.load_cert_chain(client_certs / "client.pem", client_certs / "client.key")
    with urllib.request.urlopen(url, context=trusting, timeout=10) as reply:
        assert b"zoo_inference_requests" in reply.read()
