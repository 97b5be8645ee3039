"""What the worker processes of one `zoo serve --processes N` share.

Every worker is a whole server (its own sessions, batcher, statistics) listening on the
one gRPC port with SO_REUSEPORT, so the kernel spreads connections over them. To keep
what a client sees one server, each worker also listens on a private Unix socket in the
supervisor's runtime folder (0700), and:

- ModelStatistics sums the answers of every worker (perf_analyzer takes differences of
  successive statistics; one worker's counts would jump between workers);
- RepositoryModelLoad/Unload run in every worker, and are written to a journal that a
  worker started later (a restart) replays after its first repository scan;
- so do SystemSharedMemoryRegister/Unregister: a region a client registered on one
  connection is there whichever worker its next request reaches (each worker maps the
  POSIX shared memory object itself);
- repository polling needs nothing: every worker polls the folder itself.

A call forwarded to a peer carries LOCAL_KEY and is honoured as local only when it
arrived on a Unix socket: over TCP a client cannot address one worker.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from zoo.errors import UnavailableError

log = logging.getLogger(__name__)

LOCAL_KEY = "zoo-worker-local"
PEER_TIMEOUT_S = 30.0  # a load in a peer can take as long as a load here
SOCKETS = "sockets"
JOURNAL = "model-control.jsonl"


@dataclass(frozen=True)
class WorkerRole:
    """Worker `index` of a supervisor whose runtime folder is `runtime_dir`."""

    index: int
    runtime_dir: Path

    @property
    def socket(self) -> Path:
        return self.runtime_dir / SOCKETS / f"worker-{self.index}.sock"

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"


def is_local_call(context: grpc.ServicerContext) -> bool:
    """A call a peer forwarded: flagged, and on a Unix socket (peer() is "unix:...")."""
    if not context.peer().startswith("unix:"):
        return False
    return any(key == LOCAL_KEY for key, _ in context.invocation_metadata())


class Peers:
    """The other workers, reached over their Unix sockets."""

    def __init__(self, role: WorkerRole, token: str | None) -> None:
        self.role = role
        self._metadata = ((LOCAL_KEY, "1"),) + (
            (("authorization", f"Bearer {token}"),) if token is not None else ()
        )
        self._stubs: dict[Path, GRPCInferenceServiceStub] = {}
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()

    @classmethod
    def all_workers(cls, runtime_dir: Path, token: str | None) -> Peers:
        """Every worker of the runtime folder, as the supervisor (none of them) sees them."""
        return cls(WorkerRole(-1, runtime_dir), token)

    def _sockets(self) -> list[Path]:
        return sorted(
            p
            for p in (self.role.runtime_dir / SOCKETS).glob("worker-*.sock")
            if p != self.role.socket
        )

    def _stub(self, path: Path) -> GRPCInferenceServiceStub:
        with self._lock:
            if path not in self._stubs:
                self._stubs[path] = GRPCInferenceServiceStub(grpc.insecure_channel(f"unix:{path}"))
            return self._stubs[path]

    def _each(self, call: Callable[[GRPCInferenceServiceStub], Any]) -> list[tuple[Path, Any]]:
        """`call` on every peer; a peer that is not there (restarting) answers the error."""
        answers = []
        for path in self._sockets():
            try:
                answers.append((path, call(self._stub(path))))
            except grpc.RpcError as error:
                answers.append((path, error))
        return answers

    def statistics(self, request: pb.ModelStatisticsRequest) -> list[pb.ModelStatisticsResponse]:
        """The peers' own statistics; a peer that cannot answer is left out (logged)."""
        replies = []
        for path, answer in self._each(
            lambda stub: stub.ModelStatistics(
                request, metadata=self._metadata, timeout=PEER_TIMEOUT_S
            )
        ):
            if isinstance(answer, grpc.RpcError):
                log.warning("statistics of %s left out: %s", path.name, answer.details())
            else:
                replies.append(answer)
        return replies

    def load(self, request: pb.RepositoryModelLoadRequest) -> None:
        self._journal({"load": request.model_name, "request": request.SerializeToString().hex()})
        self._forward(
            lambda stub: stub.RepositoryModelLoad(
                request, metadata=self._metadata, timeout=PEER_TIMEOUT_S
            ),
            f"load {request.model_name!r}",
        )

    def unload(self, request: pb.RepositoryModelUnloadRequest) -> None:
        self._journal({"unload": request.model_name})
        self._forward(
            lambda stub: stub.RepositoryModelUnload(
                request, metadata=self._metadata, timeout=PEER_TIMEOUT_S
            ),
            f"unload {request.model_name!r}",
        )

    def register_shared_memory(self, request: pb.SystemSharedMemoryRegisterRequest) -> None:
        self._journal({"shm_register": request.name, "request": request.SerializeToString().hex()})
        self._forward(
            lambda stub: stub.SystemSharedMemoryRegister(
                request, metadata=self._metadata, timeout=PEER_TIMEOUT_S
            ),
            f"registering shared memory region {request.name!r}",
        )

    def unregister_shared_memory(self, request: pb.SystemSharedMemoryUnregisterRequest) -> None:
        self._journal({"shm_unregister": request.name})
        self._forward(
            lambda stub: stub.SystemSharedMemoryUnregister(
                request, metadata=self._metadata, timeout=PEER_TIMEOUT_S
            ),
            f"unregistering shared memory region {request.name!r}",
        )

    def _forward(self, call: Callable[[GRPCInferenceServiceStub], Any], what: str) -> None:
        failed = [
            f"{path.stem}: {answer.details()}"
            for path, answer in self._each(call)
            if isinstance(answer, grpc.RpcError)
        ]
        if failed:
            # This worker did it; the others that failed disagree until they retry
            # (a restart replays the journal): say so rather than answer OK.
            raise UnavailableError(
                f"{what} done in this worker but failed in {len(failed)} other "
                f"worker(s): {'; '.join(failed)}"
            )

    def _journal(self, entry: dict[str, str]) -> None:
        with self._journal_lock, open(self.role.runtime_dir / JOURNAL, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def replay_journal(
    role: WorkerRole,
    load: Callable[[pb.RepositoryModelLoadRequest], None],
    unload: Callable[[str], None],
    register: Callable[[pb.SystemSharedMemoryRegisterRequest], None] = lambda r: None,
    unregister: Callable[[str], None] = lambda name: None,
) -> int:
    """Redo, in order, the loads and unloads (and shared memory registrations) the
    workers made before this one started."""
    path = role.runtime_dir / JOURNAL
    if not path.exists():
        return 0
    entries = [json.loads(line) for line in path.read_text().splitlines() if line]
    for entry in entries:
        try:
            if "load" in entry:
                load(pb.RepositoryModelLoadRequest.FromString(bytes.fromhex(entry["request"])))
            elif "unload" in entry:
                unload(entry["unload"])
            elif "shm_register" in entry:
                request = bytes.fromhex(entry["request"])
                register(pb.SystemSharedMemoryRegisterRequest.FromString(request))
            elif "shm_unregister" in entry:
                unregister(entry["shm_unregister"])
        except Exception as error:  # as it failed or succeeded in the others: logged
            log.warning("replaying %s: %s", entry, error)
    return len(entries)


def merge_statistics(
    replies: Iterable[pb.ModelStatisticsResponse],
) -> pb.ModelStatisticsResponse:
    """One answer from several workers': per model version, counts and durations summed
    (batch statistics by batch size), the latest last_inference."""
    merged: dict[tuple[str, str], pb.ModelStatistics] = {}
    for reply in replies:
        for stats in reply.model_stats:
            key = (stats.name, stats.version)
            if key not in merged:
                merged[key] = pb.ModelStatistics()
                merged[key].CopyFrom(stats)
                continue
            into = merged[key]
            into.last_inference = max(into.last_inference, stats.last_inference)
            into.inference_count += stats.inference_count
            into.execution_count += stats.execution_count
            _add_durations(into.inference_stats, stats.inference_stats)
            by_size = {b.batch_size: b for b in into.batch_stats}
            for batch in stats.batch_stats:
                if batch.batch_size in by_size:
                    _add_durations(by_size[batch.batch_size], batch)
                else:
                    into.batch_stats.add().CopyFrom(batch)
            ordered = sorted(into.batch_stats, key=lambda b: b.batch_size)
            copies = [pb.InferBatchStatistics.FromString(b.SerializeToString()) for b in ordered]
            del into.batch_stats[:]
            into.batch_stats.extend(copies)
    return pb.ModelStatisticsResponse(model_stats=list(merged.values()))


def _add_durations(into: Any, other: Any) -> None:
    """Add every StatisticDuration field of `other` to the same field of `into`."""
    for field in into.DESCRIPTOR.fields:
        if field.message_type is pb.StatisticDuration.DESCRIPTOR:
            mine, theirs = getattr(into, field.name), getattr(other, field.name)
            mine.count += theirs.count
            mine.ns += theirs.ns
