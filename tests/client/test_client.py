"""ZooClient and AsyncZooClient against real server processes (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from client import AsyncZooClient, InferenceServerException, ZooClient
from client.channel import RetryPolicy, service_config
from zoo.errors import InvalidArgumentError

ROOT = Path(__file__).resolve().parents[2]
IMAGES = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)


def onnx_probabilities(
    repository: Path, model: str, version: str, images: np.ndarray
) -> np.ndarray:
    """The same model run in-process: what the server must answer."""
    session = ort.InferenceSession(str(repository / model / version / "model.onnx"))
    return session.run(["probabilities"], {"images": images})[0]


def dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # closed again: nothing listens there


@pytest.fixture(scope="module")
def zoo(zoo_server) -> ZooClient:
    with ZooClient(zoo_server.address, timeout=10.0) as client:
        yield client


def test_every_call_on_every_served_model(zoo: ZooClient, served_repository: Path) -> None:
    assert zoo.is_server_live() and zoo.is_server_ready()
    assert zoo.get_server_metadata().name
    models = zoo.list_models()
    assert models and all(m.ready for m in models)
    for status in models:
        name, version = status.name, status.version
        assert zoo.is_model_ready(name, version)
        meta = zoo.metadata(name)
        assert version in meta.versions and meta.inputs[0].shape == (-1, 1, 28, 28)
        assert zoo.get_model_metadata(name).name == name
        assert zoo.get_model_config(name).max_batch_size > 0
        card = zoo.model_card(name, version)
        assert card.name == name and len(card.labels) == 10
        expected = onnx_probabilities(served_repository, name, version, IMAGES)
        prediction = zoo.infer(name, IMAGES, version=version, top_k=3)
        np.testing.assert_allclose(prediction.probabilities, expected, rtol=1e-5, atol=1e-6)
        assert prediction.labels == [card.labels[i] for i in expected.argmax(axis=1)]
        assert len(prediction[0].top_k) == 3 and prediction.version == version
        raw = zoo.infer_raw(name, {"images": IMAGES}, outputs=["logits"])
        assert list(raw) == ["logits"] and raw["logits"].shape == (3, 10)
        stats = zoo.get_inference_statistics(name).model_stats
        assert stats[0].inference_stats.success.count >= 2
    assert {m.name for m in models} == {m.name for m in zoo.get_model_repository_index().models}


def test_a_batch_above_max_batch_size_is_sent_in_pieces(
    zoo: ZooClient, served_repository: Path
) -> None:
    name = zoo.list_models()[0].name
    limit = zoo.get_model_config(name).max_batch_size
    images = np.random.default_rng(1).random((limit + 5, 1, 28, 28), dtype=np.float32)
    prediction = zoo.infer(name, images)
    assert len(prediction) == limit + 5
    version = zoo.list_models()[0].version
    expected = onnx_probabilities(served_repository, name, version, images)
    np.testing.assert_allclose(prediction.probabilities, expected, rtol=1e-5, atol=1e-6)


def test_async_client_matches_the_sync_one(zoo: ZooClient, zoo_server) -> None:
    name = zoo.list_models()[0].name

    async def run() -> tuple[np.ndarray, list[str], bool]:
        async with AsyncZooClient(zoo_server.address) as client:
            ready = await client.is_model_ready(name)
            card = await client.model_card(name)
            predictions = await asyncio.gather(*(client.infer(name, IMAGES) for _ in range(4)))
            raw = await client.infer_raw(name, {"images": IMAGES})
            return predictions[-1].probabilities, [card.name, *raw], ready

    probabilities, names, ready = asyncio.run(run())
    assert ready and names == [name, "logits", "probabilities"]
    np.testing.assert_allclose(probabilities, zoo.infer(name, IMAGES).probabilities, rtol=1e-6)


def test_server_errors_carry_the_grpc_code_and_message(zoo: ZooClient) -> None:
    with pytest.raises(InferenceServerException) as error:
        zoo.infer("no_such_model", IMAGES)
    assert (
        error.value.status_code == grpc.StatusCode.NOT_FOUND
        and "no_such_model" in error.value.message
    )
    assert error.value.exit_code == 3
    name = zoo.list_models()[0].name
    with pytest.raises(InferenceServerException) as error:
        zoo.infer_raw(name, {"images": np.zeros((1, 1, 27, 28), np.float32)})
    assert error.value.code == "INVALID_ARGUMENT" and "got [1, 1, 27, 28]" in error.value.message


def test_every_call_has_a_deadline() -> None:
    # A socket that accepts connections and never answers: without a deadline, a hang.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen()
        address = f"127.0.0.1:{black_hole.getsockname()[1]}"
        start = time.monotonic()
        with (
            ZooClient(address, timeout=0.5) as client,
            pytest.raises(InferenceServerException) as error,
        ):
            client.infer("m", IMAGES)
    assert error.value.code == "DEADLINE_EXCEEDED" and time.monotonic() - start < 2.0


def test_unavailable_is_retried_by_grpc_for_idempotent_calls_only() -> None:
    policy = RetryPolicy(attempts=3, initial_backoff_s=0.1, multiplier=2.0)
    with (
        ZooClient(dead_address(), retry=policy) as client,
        pytest.raises(InferenceServerException) as error,
    ):
        client.is_server_live()
    assert error.value.code == "UNAVAILABLE" and "127.0.0.1" in str(error.value)
    (method_config,) = json.loads(service_config(policy))["methodConfig"]
    retried = {name["method"] for name in method_config["name"]}
    assert {"ModelInfer", "ModelStatistics", "ServerLive"} <= retried
    assert not retried & {"RepositoryModelLoad", "RepositoryModelUnload"}  # never resent
    assert method_config["retryPolicy"]["maxAttempts"] == 3
    assert json.loads(service_config(RetryPolicy(attempts=1)))["methodConfig"] == []
    with pytest.raises(InvalidArgumentError, match="expected 1 to 5"):
        RetryPolicy(attempts=6)  # grpc would silently cap it


def inference_count(address: str, model: str) -> int:
    with ZooClient(address) as client:
        return client.get_inference_statistics(model).model_stats[0].inference_count


def test_round_robin_spreads_calls_and_fails_over(
    zoo_server, start_zoo_server, served_repository
) -> None:
    second = start_zoo_server(served_repository)
    addresses = [zoo_server.address, second.address]
    with ZooClient(addresses) as client:
        name = client.list_models()[0].name
        before = [inference_count(a, name) for a in addresses]
        for _ in range(10):
            client.infer(name, IMAGES[:1])
    counts = [inference_count(a, name) - n for a, n in zip(addresses, before, strict=True)]
    # grpc's round_robin alternates once both connections are up; the first calls may
    # all go to the one that connected first.
    assert sum(counts) == 10 and min(counts) >= 1
    # A dead address among live ones gets no calls: every call succeeds.
    with ZooClient([dead_address(), second.address]) as client:
        assert all(len(client.infer(name, IMAGES[:1])) == 1 for _ in range(4))


def test_token_is_sent_as_bearer_metadata(zoo_server) -> None:
    with ZooClient(zoo_server.address, token="s3cret") as client:
        assert client.connection.metadata == (("authorization", "Bearer s3cret"),)
        assert client.is_server_live()


def test_tls_is_negotiated_not_skipped(zoo_server) -> None:
    # The server speaks plaintext only: a TLS client must fail its handshake, never fall back.
    once = RetryPolicy(attempts=1)
    client = ZooClient(zoo_server.address, tls=True, retry=once, timeout=5.0)
    with client, pytest.raises(InferenceServerException) as error:
        client.is_server_live()
    assert error.value.code == "UNAVAILABLE"


def test_load_and_unload_with_model_control(start_zoo_server, tiny_repository) -> None:
    server = start_zoo_server(tiny_repository, "--allow-model-control")
    with ZooClient(server.address) as client:
        assert client.model_card("tiny_mlp").name == "tiny_mlp"
        client.unload_model("tiny_mlp")
        assert not client.is_model_ready("tiny_mlp")
        with pytest.raises(InferenceServerException):
            client.infer("tiny_mlp", IMAGES)  # the cached card was dropped: fetched and refused
        client.load_model("tiny_mlp")
        assert client.is_model_ready("tiny_mlp") and len(client.infer("tiny_mlp", IMAGES)) == 3


def test_model_control_refused_by_default(zoo: ZooClient) -> None:
    name = zoo.list_models()[0].name
    with pytest.raises(InferenceServerException, match="--allow-model-control"):
        zoo.unload_model(name)
    assert zoo.is_model_ready(name)


def test_addresses_grpc_dials_are_taken(zoo_server) -> None:
    port = zoo_server.address.rpartition(":")[2]
    for url in (f"dns:///localhost:{port}", f"ipv4:127.0.0.1:{port}", f"grpc://127.0.0.1:{port}"):
        with ZooClient(url, timeout=5.0) as client:
            assert client.is_server_live(), url
    # Nothing listens on IPv6 here: these are checked, not dialled (channels connect lazily).
    with ZooClient("[::1]:8001, ipv6:[::1]:8002") as client:
        assert client.connection.targets == ("[::1]:8001", "ipv6:[::1]:8002")
        assert client.connection.channel_target == "ipv6:[::1]:8001,[::1]:8002"
    with ZooClient("unix:zoo.sock") as client:
        assert client.connection.channel_target == "unix:zoo.sock"
    # A list of IPv4 and IPv6 addresses is one IPv6 list (IPv4 mapped), as grpc wants.
    with ZooClient(f"127.0.0.1:{port},[::1]:8001") as client:
        target = client.connection.channel_target
        assert target == f"ipv6:[::ffff:7f00:1]:{port},[::1]:8001"
    with ZooClient(f"127.0.0.1:{port},127.0.0.1:1") as client:
        assert client.connection.channel_target == f"ipv4:127.0.0.1:{port},127.0.0.1:1"
        assert client.is_server_live()  # the dead second address is skipped


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        # grpc would dial port 34463 (99999 mod 65536).
        ("127.0.0.1:99999", "'127.0.0.1:99999': the port must be a number from 1 to 65535"),
        ("127.0.0.1:0", "got '0'"),
        ("not_a_url:xx", "got 'xx'"),
        ("localhost", "'localhost': no port; expected HOST:PORT"),
        ("h1:8001,h2", "'h2': no port"),
        ("::1:8001", "an IPv6 host in brackets"),
        ("127.0.0.1:8001,unix:zoo.sock", "'unix:zoo.sock' in a list: a list takes HOST:PORT"),
        ("h1:8001,dns:///h2:8001", "give a dns: name or a unix: socket alone"),
        ("127.0.0.1:8001,no-such-host.invalid:8001", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_malformed_addresses_are_refused_before_any_call(url: str, problem: str) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(problem)):
        ZooClient(url)


@pytest.mark.parametrize("url", ["not_a_url:xx", "127.0.0.1:99999", "localhost"])
def test_a_malformed_url_is_a_usage_error(url: str) -> None:
    # Exit 2 (the user's mistake), not 3 as if a server had failed.
    command = [sys.executable, "-m", "zoo.cli", "infer", "--url", url, "--model", "m", "x.npy"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and f"server address {url!r}" in done.stderr
