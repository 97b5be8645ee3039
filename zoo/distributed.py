"""Data-parallel training on PyTorch's own machinery: torchrun starts the processes,
`torch.distributed` connects them (gloo on CPU, NCCL on CUDA), DistributedDataParallel
averages the gradients.

    torchrun --nproc-per-node 2 -m zoo.train bn_mlp      # or: zoo train bn_mlp --nproc 2

`Replicas` is one process's place in such a run; `zoo.fit.fit` takes it to shard each
batch, and `zoo.train` to let rank 0 alone write. `SINGLE_PROCESS` is the plain run, for
which every method is what a lone process would do, so the loop has one code path.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from zoo.errors import FailedPreconditionError, InvalidArgumentError

T = TypeVar("T")
DeviceKind = Literal["cpu", "cuda"]

# Exactly these are replaced by SyncBatchNorm; subclasses (Batch Renorm) have a forward
# of their own that SyncBatchNorm would silently drop, so they keep per-process statistics.
PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def per_process_batch(batch_size: int, processes: int) -> int:
    """The batch each process takes so that together they take `batch_size` per step."""
    if batch_size % processes:
        raise InvalidArgumentError(
            f"batch size {batch_size} does not split evenly among {processes} processes: "
            f"pass --batch-size a multiple of {processes}"
        )
    return batch_size // processes


def require_cuda_devices(count: int) -> None:
    visible = torch.cuda.device_count()
    if visible < count:
        raise FailedPreconditionError(
            f"--device cuda needs {count} CUDA device(s), one per process on this machine; "
            f"{visible} visible"
        )


def backend_for(device: str) -> str:
    """gloo runs collectives on CPU tensors, NCCL on CUDA tensors."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def sync_batchnorms(model: nn.Module) -> nn.Module:
    """`model` with every plain BatchNorm replaced by a SyncBatchNorm, in place.
    SyncBatchNorm has BatchNorm's state-dict keys, so its state dict loads into the plain
    model as it is (and exports folded as BatchNorm's does)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) in PLAIN_BATCHNORMS:
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return model


@dataclass(frozen=True)
class Replicas:
    """This process's place among the data-parallel copies of one training run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # on this machine, which picks the CUDA device
    local_size: int = 1
    distributed: bool = False  # one of a torchrun group (even of one process)

    @property
    def lead(self) -> bool:
        """Rank 0: the one process that writes output."""
        return self.rank == 0

    def device(self, kind: DeviceKind) -> str:
        """This process's torch device: on CUDA, the GPU of its local rank."""
        if kind == "cpu":
            return "cpu"
        require_cuda_devices(self.local_size)
        return f"cuda:{self.local_rank}"

    @contextlib.contextmanager
    def process_group(self, kind: DeviceKind) -> Iterator[None]:
        """Join the run's default process group (torchrun's environment says where its
        store is) for the duration; nothing for a single process."""
        if not self.distributed:
            yield
            return
        device = torch.device(self.device(kind))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend_for(str(device)), device_id=device if device.type == "cuda" else None
        )
        try:
            yield
            # Leave together: a process that tears its group down while a peer still
            # talks to it can abort at exit ("terminate called without an active
            # exception", seen in 1 of ~5 runs of a two-process test on a busy machine).
            dist.barrier()
        finally:
            # DistributedDataParallel sits in a reference cycle and its reducer holds the
            # group: left to the cyclic collector, a wrapper made inside outlives the
            # group, possibly into interpreter shutdown, where a gloo group's teardown
            # can abort the process. Free such wrappers while everything is still up.
            gc.collect()
            dist.destroy_process_group()

    def usable(self, count: int) -> int:
        """The most of `count` items that split evenly among the processes: every process
        must take as many steps as the others, or DDP's gradient all-reduce would wait."""
        return count - count % self.size

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch: every size-th item from its rank."""
        return items[self.rank :: self.size]

    def with_sync_batchnorms(self, model: nn.Module, device: str) -> nn.Module:
        """The module to train: on CUDA among processes, a copy of `model` whose plain
        BatchNorms normalise with the global batch's statistics, not each process's
        share (SyncBatchNorm needs CUDA tensors); else `model` itself."""
        if self.distributed and torch.device(device).type == "cuda":
            return sync_batchnorms(copy.deepcopy(model))
        return model

    def data_parallel(self, model: nn.Module, device: str) -> nn.Module:
        """What a training step calls: `model` under DDP, or `model` itself alone."""
        if not self.distributed:
            return model
        index = torch.device(device).index
        return DistributedDataParallel(model, device_ids=None if index is None else [index])

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over the processes (each process's share is equal)."""
        if not self.distributed:
            return value.item()
        total = value.detach().clone()
        dist.all_reduce(total)
        return total.item() / self.size

    def any(self, flag: bool, device: str) -> bool:
        """Whether `flag` is set in any process (so that all stop when one asks to)."""
        if not self.distributed:
            return flag
        flags = torch.tensor([float(flag)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags.item())

    def agree(self, model: nn.Module) -> bool:
        """Whether every process holds bit-identical parameters (a collective). Not
        buffers: on CPU each process's BatchNorm averages statistics of its own share
        until DDP copies rank 0's buffers to all before the next step."""
        digest = hashlib.sha256()
        for parameter in model.parameters():
            digest.update(parameter.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        digests: list[str | None] = [None] * self.size
        dist.all_gather_object(digests, digest.hexdigest())
        return len(set(digests)) == 1

    def from_lead(self, compute: Callable[[], T]) -> T:
        """`compute()` run on rank 0 alone, its result handed to every process."""
        if not self.distributed:
            return compute()
        result = [compute() if self.lead else None]
        dist.broadcast_object_list(result, src=0)
        return result[0]  # type: ignore[return-value]


SINGLE_PROCESS = Replicas()


def torchrun_replicas(environ: Mapping[str, str] = os.environ) -> Replicas | None:
    """This process's place when torchrun started it (from the variables torchrun sets
    for each worker), else None."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    if not all(name in environ for name in names):
        return None
    rank, size, local_rank, local_size = (int(environ[name]) for name in names)
    return Replicas(rank, size, local_rank, local_size, distributed=True)


def launch(processes: int, module: str, argv: Sequence[str]) -> int:
    """`python -m module *argv` as `processes` processes on this machine, started by
    torchrun's elastic launcher with a local rendezvous (`torchrun --standalone`). Returns
    the exit status of the first process that failed, else 0."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torchrun gives each process one thread unless told otherwise; share the cores.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    # Its rendezvous banner and per-worker bookkeeping are logged at INFO.
    logging.getLogger("torch.distributed").setLevel(logging.WARNING)
    args = torchrun.parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", module])
    # Set apart from parsing: torchrun's parser would take `--nproc 2` for its own flag.
    args.training_script_args = list(argv)
    try:
        torchrun.run(args)
    except ChildFailedError as error:
        exitcode = error.get_first_failure()[1].exitcode
        return exitcode if exitcode > 0 else 128 - exitcode  # killed by signal -exitcode
    return 0
