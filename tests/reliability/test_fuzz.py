"""Malformed requests against a real server: a seeded fuzz of ModelInfer, unary and on
streams, and the contract's named cases. A client's mistake gets INVALID_ARGUMENT or
NOT_FOUND (on a stream, a reply with error_message, and the stream serves on), never
INTERNAL or UNKNOWN, never a hang; afterwards the server answers exactly as in-process
onnxruntime does, and its memory has not grown."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from client.protocol import build_infer_request, decode_outputs
from proto import grpc_service_pb2 as pb

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
UNARY_CASES = 1000
STREAM_CASES = 240
# Sent first, from another seed, so that allocator arenas and grpc's buffers have reached
# their working size before memory is measured.
WARMUP_CASES = 300
RSS_GROWTH = 0.10
KSERVE_DATATYPES = (
    *("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
    *("FP16", "FP32", "FP64", "BYTES"),
)


def _listing(title: str, outcomes: list) -> str:
    by_kind = Counter((o.kind, o.code) for o in outcomes)
    counts = ", ".join(f"{kind} -> {code}: {n}" for (kind, code), n in sorted(by_kind.items()))
    examples = "\n".join(f"  {line}" for line in list(dict.fromkeys(map(str, outcomes)))[:25])
    return f"{title}: {len(outcomes)} ({counts})\n{examples}"


def test_the_generator_is_seeded_and_covers_every_kind_datatype_and_odd_version(
    fuzz_cases, fuzz_target
) -> None:
    cases = list(fuzz_cases(0, UNARY_CASES, fuzz_target))
    assert [c.message for c in cases] == [
        c.message for c in fuzz_cases(0, UNARY_CASES, fuzz_target)
    ]
    assert [c.message for c in cases] != [
        c.message for c in fuzz_cases(1, UNARY_CASES, fuzz_target)
    ]
    kinds = Counter(c.kind for c in cases)
    assert min(kinds.values()) >= 40, kinds
    details = " ".join(c.detail for c in cases if c.kind in ("datatype", "unknown_input"))
    assert all(repr(d) in details or f" {d} " in details for d in KSERVE_DATATYPES if d != "FP32")
    versions = " ".join(c.detail for c in cases if c.kind == "odd_version")
    assert all(f"'{v}'" in versions for v in ("²", "-1", "1e3", "0", "١"))
    assert any("(100000 chars)" in c.detail for c in cases if c.kind == "unknown_model")


def test_fuzzed_model_infer_gets_only_its_codes_and_leaves_the_server_exact_and_flat(
    start_zoo_server, tiny_repository: Path, fuzz_target, fuzz_cases, send_unary, rss, exactly
) -> None:
    server = start_zoo_server(tiny_repository)
    with grpc.insecure_channel(server.address) as channel:
        send_unary(channel, fuzz_cases(1, WARMUP_CASES, fuzz_target))
        before = rss(server.process.pid)
        outcomes = send_unary(channel, fuzz_cases(0, UNARY_CASES, fuzz_target))
        after = rss(server.process.pid)
    assert server.process.poll() is None, f"the server died:\n{server.log()[-3000:]}"
    failures = []
    forbidden = [o for o in outcomes if o.forbidden]
    if forbidden:
        failures.append(_listing("INTERNAL, UNKNOWN or hung", forbidden))
    unexpected = [o for o in outcomes if o.code not in o.allowed and not o.forbidden]
    if unexpected:
        failures.append(_listing("another code than the contract's", unexpected))
    if wrong := exactly(server.address, tiny_repository / "tiny_mlp"):
        failures.append(f"a valid request afterwards is not exact: {wrong}")
    if after > before * (1 + RSS_GROWTH):
        failures.append(f"server RSS grew {before / 1024:.1f} -> {after / 1024:.1f} MB")
    assert not failures, "\n\n".join(failures)


def test_fuzzed_stream_messages_each_get_a_reply_and_the_stream_serves_on(
    start_zoo_server,
    tiny_repository: Path,
    fuzz_target,
    fuzz_cases,
    send_stream,
    stream_failures,
    exactly,
) -> None:
    server = start_zoo_server(tiny_repository)
    with grpc.insecure_channel(server.address) as channel:
        outcomes, broken = send_stream(channel, fuzz_cases(2, STREAM_CASES, fuzz_target))
    failures = [f"stream: {p}" for p in broken]
    if bad := stream_failures(outcomes):
        failures.append(_listing("stream replies against the contract", bad))
    if wrong := exactly(server.address, tiny_repository / "tiny_mlp"):
        failures.append(f"a valid request afterwards is not exact: {wrong}")
    assert not failures, "\n\n".join(failures)


def _code(call) -> tuple[str, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code().name, (error.details() or "")[:120]
    return "OK", ""


def test_odd_versions_and_unknown_models_get_not_found_and_the_reply_arrives(
    start_zoo_server, tiny_repository: Path
) -> None:
    server = start_zoo_server(tiny_repository)
    images = np.zeros((1, 1, 28, 28), np.float32)
    asked = [("tiny_mlp", v) for v in ("²", "-1", "1e3", "0", "2", "١", "9" * 5000, "1" * 100_000)]
    asked += [("nope", ""), ("x" * 100_000, ""), ("tiny_mlp\x00", "")]
    got = {}
    with grpc.insecure_channel(server.address) as channel:
        infer = channel.unary_unary(MODEL_INFER)
        for model, version in asked:
            request = build_infer_request(model, {"images": images}, version or None)
            case = f"{model[:20]!r} ({len(model)} chars), version {version[:20]!r} ({len(version)})"
            got[case] = _code(lambda r=request: infer(r.SerializeToString(), timeout=30))
    wrong = {case: result for case, result in got.items() if result[0] != "NOT_FOUND"}
    assert not wrong, f"expected NOT_FOUND, got {wrong}"


@pytest.mark.parametrize(
    "method", ["ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady", "RepositoryIndex"]
)
def test_unparseable_bytes_get_invalid_argument(
    start_zoo_server, tiny_repository: Path, method: str
) -> None:
    server = start_zoo_server(tiny_repository)
    garbage = (b"\xff\xff\xff", b"\x0a\x10abc", b"\x0a\x02\xc3\x28", b"\x0f")
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        got = {data: _code(lambda d=data: call(d, timeout=30)) for data in garbage}
    wrong = {data: result for data, result in got.items() if result[0] != "INVALID_ARGUMENT"}
    assert not wrong, f"expected INVALID_ARGUMENT, got {wrong}"


def test_a_stream_answers_unparseable_bytes_with_an_error_and_serves_on(
    start_zoo_server, tiny_repository: Path, reference
) -> None:
    server = start_zoo_server(tiny_repository)
    images = np.random.default_rng(3).random((2, 1, 28, 28), dtype=np.float32)
    valid = build_infer_request("tiny_mlp", {"images": images}).SerializeToString()
    messages = [b"\xff\xff\xff", valid, b"\x0a\x10abc", valid, b"\x0a\x02\xc3\x28", valid]
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            MODEL_STREAM_INFER, response_deserializer=pb.ModelStreamInferResponse.FromString
        )
        try:
            replies = list(call(iter(messages), timeout=60))
        except grpc.RpcError as error:
            pytest.fail(f"the stream failed: {error.code().name}: {error.details()}")
    assert [bool(r.error_message) for r in replies] == [True, False] * 3, [
        r.error_message for r in replies
    ]
    want = reference(tiny_repository / "tiny_mlp", 1, images)
    for reply in replies[1::2]:
        got = decode_outputs(reply.infer_response)
        assert all(np.allclose(got[name], value, atol=1e-5) for name, value in want.items())
