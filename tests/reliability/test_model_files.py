"""Damaged model files while the server rescans the repository (--poll-interval 0.2),
under light load on the damaged model and on another one. The other model never fails;
a model whose new version is corrupt is served on by its last good version, and
RepositoryIndex says why the new one is not; no fault makes the server answer with
INTERNAL, UNKNOWN or a truncated tensor; undone, the model serves exactly again."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from zoo.repository import config_for_card, read_card, write_model_config

DAMAGED, OTHER = "tiny_mlp", "tiny_cnn"
# Replies after the server showed it saw the fault: many polls' worth under load.
REPLIES_AFTER = 20


def test_a_damaged_model_never_fails_the_others_and_its_last_good_version_serves_on(
    fault: str,
    start_zoo_server,
    repository_copy: Path,
    faults,
    seen,
    background_load,
    request_bytes,
    repository_index,
    until,
    exactly,
) -> None:
    model_dir = repository_copy / DAMAGED
    server = start_zoo_server(repository_copy, "--poll-interval", "0.2")
    with grpc.insecure_channel(server.address) as channel:
        config = GRPCInferenceServiceStub(channel).ModelConfig(
            pb.ModelConfigRequest(name=DAMAGED), timeout=30
        )
    load = background_load(
        server.address, {OTHER: (request_bytes(OTHER), 2), DAMAGED: (request_bytes(DAMAGED), 2)}
    )
    load.wait_for_more(5)
    damaged_at = time.monotonic()
    restore = faults[fault](model_dir, np.random.default_rng(0))
    until(
        lambda: seen(server.address, DAMAGED, fault, "1", config.SerializeToString()),
        what=f"the server showing that it saw '{fault}'",
    )
    load.wait_for_more(REPLIES_AFTER)
    states = repository_index(server.address)
    restore()
    until(lambda: not exactly(server.address, model_dir), what="recovery")
    load.stop()

    failures = []
    if set(other := load.codes(OTHER)) != {"OK"}:
        failures.append(f"{OTHER}, not damaged, got {dict(other)}")
    damaged = load.codes(DAMAGED, since=damaged_at)
    if fault == "corrupt new version":
        versions = load.versions(DAMAGED, since=damaged_at)
        if set(damaged) != {"OK"} or set(versions) != {"1"}:
            failures.append(
                f"{DAMAGED} without a version: {dict(damaged)}, answered by versions "
                f"{dict(versions)}; expected OK from version 1 throughout"
            )
        served, corrupt = states.get((DAMAGED, "1")), states.get((DAMAGED, "2"))
        if served is None or served[0] != "READY" or corrupt is None or corrupt[0] != "UNAVAILABLE":
            failures.append(
                f"RepositoryIndex: version 1 {served}, version 2 {corrupt}; expected "
                "1 READY and 2 UNAVAILABLE with its reason"
            )
    else:
        allowed = {"OK", "UNAVAILABLE"} | ({"NOT_FOUND"} if "deleted" in fault else set())
        if wrong := {code: n for code, n in damaged.items() if code not in allowed}:
            failures.append(f"{DAMAGED} got {wrong} (of {dict(damaged)}); allowed {allowed}")
    assert not failures, "\n".join(failures)


def test_a_model_without_a_batch_dimension_answers_whole_tensors_or_refuses(
    start_zoo_server, repository_copy: Path, exactly
) -> None:
    """max_batch_size 0: the first dimension is the model's own, not a batch to split."""
    model_dir = repository_copy / DAMAGED
    write_model_config(model_dir, config_for_card(read_card(model_dir), max_batch_size=0))
    server = start_zoo_server(repository_copy)
    assert exactly(server.address, model_dir, batch=1) == []
    wrong = exactly(server.address, model_dir, batch=4)
    assert wrong == [] or all(w.startswith("INVALID_ARGUMENT") for w in wrong), wrong
