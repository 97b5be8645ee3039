"""Data-parallel training on CPU with gloo: two processes started by the real torchrun
train as one process does, rank 0 alone speaks and writes, and its checkpoint exports;
then the pieces on their own (sharding, a one-process group, SyncBatchNorm conversion,
the refusals)."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from zoo import repository
from zoo.card import ModelCard
from zoo.checkpoint import read_checkpoint
from zoo.cli import main as zoo_main
from zoo.data import train_val_split
from zoo.distributed import SINGLE_PROCESS, Replicas, backend_for, sync_batchnorms
from zoo.fit import fit
from zoo.models import TrainRecipe, get_spec
from zoo.models.batch_renorm import BatchRenorm1d
from zoo.train import TrainSettings, train

ROOT = Path(__file__).resolve().parents[2]
# One epoch of 4,096 images (32 global batches of 128) and 1,000 test images: a few
# seconds of training, enough to tell a trained net from chance.
SHORT_RUN = ("--epochs", "1", "--limit-train", "4096", "--limit-test", "1000", "--no-progress")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2")


@dataclass
class Run:
    done: subprocess.CompletedProcess[str]
    out: Path

    @property
    def card(self) -> ModelCard:
        return read_checkpoint(self.out / "model.pt")[0]

    def metrics(self) -> list[dict[str, Any]]:
        lines = (self.out / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    # A process that aborts (SIGABRT from native code) prints every thread's Python
    # traceback to stderr, which the failing assertion shows.
    environ = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(
        list(map(str, command)), capture_output=True, text=True, timeout=300, cwd=ROOT, env=environ
    )


def accuracy(card: ModelCard) -> float:
    return card.metrics["test_accuracy"].value


@pytest.fixture(scope="module")
def torchrun_mlp(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """plain_mlp_relu trained by two processes that torchrun started itself."""
    out = tmp_path_factory.mktemp("torchrun")
    return Run(run(*TORCHRUN, "-m", "zoo.train", "plain_mlp_relu", *SHORT_RUN, "--out", out), out)


@pytest.fixture(scope="module")
def nproc_bn_mlp(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """bn_mlp (BatchNorm) trained by `zoo train --nproc 2`, which launches torchrun."""
    out = tmp_path_factory.mktemp("nproc")
    command = ("bn_mlp", *SHORT_RUN, "--nproc", "2", "--out", out)
    return Run(run(sys.executable, "-m", "zoo.cli", "train", *command), out)


def assert_rank_0_alone_spoke(run: Run, name: str) -> None:
    assert run.done.returncode == 0, run.done.stderr
    assert run.done.stdout.splitlines() == [
        f"{name}: test accuracy {100 * accuracy(run.card):.2f}% -> {run.out / 'model.pt'}"
    ]
    assert run.done.stderr.count(f"INFO zoo.train: training {name}") == 1
    [row] = run.metrics()
    assert row["replicas_agree"] is True  # every process held the same parameters
    assert run.card.training["processes"] == 2


def test_two_processes_train_what_one_process_trains(torchrun_mlp: Run, tmp_path: Path) -> None:
    assert_rank_0_alone_spoke(torchrun_mlp, "plain_mlp_relu")
    assert torchrun_mlp.card.metrics["test_accuracy"].command.startswith(
        "torchrun --nnodes=1 --nproc-per-node=2 -m zoo.train plain_mlp_relu --epochs 1"
    )
    settings = TrainSettings(
        model="plain_mlp_relu",
        epochs=1,
        limit_train=4096,
        limit_test=1000,
        out=tmp_path,
        progress=False,
    )
    alone, alone_card, _ = train(settings, command="test")
    # The same global batches and so the same mean gradient, summed in another order:
    # the weights differ by float rounding (1.8e-7 at most, measured), the accuracy hardly.
    assert abs(accuracy(torchrun_mlp.card) - accuracy(alone_card)) <= 0.02
    weights = read_checkpoint(torchrun_mlp.out / "model.pt")[1]
    assert max((alone.state_dict()[k] - w).abs().max().item() for k, w in weights.items()) < 1e-3


def test_zoo_train_nproc_launches_torchrun_and_rank_0s_checkpoint_exports(
    nproc_bn_mlp: Run, tmp_path: Path
) -> None:
    assert_rank_0_alone_spoke(nproc_bn_mlp, "bn_mlp")
    assert nproc_bn_mlp.card.metrics["test_accuracy"].command == (
        f"zoo train bn_mlp {' '.join(SHORT_RUN)} --nproc 2 --out {nproc_bn_mlp.out}"
    )
    assert accuracy(nproc_bn_mlp.card) >= 0.85  # 1 epoch of 4,096 images: ~0.9

    repo = tmp_path / "repo"
    checkpoint = str(nproc_bn_mlp.out / "model.pt")
    exported = zoo_main(["export", "bn_mlp", "--checkpoint", checkpoint, "--repository",
                         str(repo), "--verify-images", "64", "--no-progress"])  # fmt: skip
    assert exported == 0
    card = repository.read_card(repo / "bn_mlp")
    assert card is not None and card.metrics["onnx_max_abs_diff"].value <= 1e-4
    graph = onnx.load(repo / "bn_mlp" / "1" / "model.onnx").graph
    assert "BatchNormalization" not in {node.op_type for node in graph.node}  # folded


def test_a_stop_asked_for_in_one_process_stops_every_process(tmp_path: Path) -> None:
    # Were the stop not agreed, rank 0 would wait for rank 1 in its next step until the
    # timeout: fit_worker.py's callback asks in the last process only.
    done = run(*TORCHRUN, Path(__file__).with_name("fit_worker.py"), tmp_path)
    assert done.returncode == 0, done.stderr
    steps = [json.loads((tmp_path / f"rank{r}.json").read_text())["steps"] for r in (0, 1)]
    assert steps == [3, 3]


def test_every_process_takes_its_own_share_of_each_global_batch() -> None:
    batch = torch.randperm(96, generator=torch.Generator().manual_seed(0))
    shares = [Replicas(rank=r, size=3).shard(batch) for r in range(3)]
    assert [len(share) for share in shares] == [32, 32, 32]
    assert sorted(torch.cat(shares).tolist()) == list(range(96))
    assert Replicas(size=3).usable(100) == 99  # every process takes as many steps


@pytest.fixture
def one_process_group() -> Iterator[Replicas]:
    """A real gloo process group of one process, this one."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield Replicas(distributed=True)
    finally:
        dist.destroy_process_group()


def test_ddp_of_one_process_trains_exactly_as_no_ddp(one_process_group: Replicas) -> None:
    x, y = train_val_split()[0].tensors()
    data = (x[:1024], y[:1024])
    recipe = TrainRecipe(epochs=1, augment_shift=1)  # the shifts are drawn per global batch
    models, histories = [], []
    for replicas in (SINGLE_PROCESS, one_process_group):
        torch.manual_seed(0)
        models.append(get_spec("bn_mlp").build())
        histories.append(fit(models[-1], data, recipe, progress=False, replicas=replicas))
    alone, grouped = (model.state_dict() for model in models)
    assert all(torch.equal(alone[k], grouped[k]) for k in alone)  # buffers too
    assert histories[1].epochs[0]["replicas_agree"] is True
    assert histories[0].epochs[0]["train_loss"] == histories[1].epochs[0]["train_loss"]


def test_no_ddp_wrapper_outlives_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # DDP sits in a reference cycle, and its reducer holds the group: left to the cyclic
    # collector it can be freed after the group, even in interpreter shutdown. With the
    # collector off, only the group's own exit can free it here.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    replicas = Replicas(distributed=True)
    x, y = train_val_split()[0].tensors()
    gc.disable()
    try:
        with replicas.process_group("cpu"):
            fit(get_spec("plain_mlp_relu").build(), (x[:256], y[:256]), TrainRecipe(),
                max_steps=2, progress=False, replicas=replicas)  # fmt: skip
        left = [o for o in gc.get_objects() if type(o) is DistributedDataParallel]
    finally:
        gc.enable()
    assert left == []


def test_sync_batchnorms_replaces_plain_batchnorm_only_and_loads_back() -> None:
    torch.manual_seed(0)

    def build() -> nn.Sequential:
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), BatchRenorm1d(8))

    plain = build()
    synced = sync_batchnorms(build())
    assert [type(m) for m in synced] == [nn.Linear, nn.SyncBatchNorm, BatchRenorm1d]
    plain.load_state_dict(synced.state_dict())  # strict: the same keys
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), synced.eval()(x))


@pytest.mark.parametrize(("device", "backend"), [("cpu", "gloo"), ("cuda:1", "nccl")])
def test_backend_follows_the_device(device: str, backend: str) -> None:
    assert backend_for(device) == backend


REFUSALS = [
    (
        ("--nproc", "3"),
        {},
        "batch size 128 does not split evenly among 3 processes: pass --batch-size a multiple of 3",
    ),
    (
        ("--nproc", "4"),
        {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"},
        "--nproc 4 under torchrun, which started 2 processes on this machine: leave --nproc out",
    ),
]
if not torch.cuda.is_available():
    REFUSALS.append(
        (
            ("--device", "cuda", "--nproc", "2"),
            {},
            "--device cuda needs 2 CUDA device(s), one per process on this machine; 0 visible",
        )
    )


@pytest.mark.parametrize(("args", "environ", "message"), REFUSALS)
def test_refusals_are_one_line_before_any_process_starts(
    args: tuple[str, ...],
    environ: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    assert zoo_main(["train", "plain_mlp_relu", "--out", str(out), *args]) == 2
    assert capsys.readouterr().err == f"zoo train: error: {message}\n"
    assert not out.exists()


@pytest.mark.gpu
def test_cuda_processes_train_with_nccl_and_syncbatchnorm(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gpus = torch.cuda.device_count()
    out = tmp_path / "run"
    done = run(sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={gpus}", "-m", "zoo.train", "bn_mlp", *SHORT_RUN,
               "--batch-size", str(64 * gpus), "--device", "cuda", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    card, state = read_checkpoint(out / "model.pt")
    assert card.training["device"] == "cuda" and accuracy(card) >= 0.85
    get_spec("bn_mlp").build().load_state_dict(state)  # strict: the plain model's keys
    assert json.loads((out / "metrics.jsonl").read_text())["replicas_agree"] is True
