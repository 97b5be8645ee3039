"""The normalisations of zoo.models.layers: Batch Renorm against BatchNorm and its own
algorithm, group and instance norm, and every new option through the ONNX export."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from zoo.card import ModelCard
from zoo.data import MNIST_MEAN, MNIST_STD, load_mnist, train_val_split
from zoo.export import export_onnx, fold_model, verify
from zoo.fit import fit
from zoo.models import TrainRecipe, get_spec
from zoo.models.batch_renorm import (
    BatchRenorm1d,
    BatchRenorm2d,
    RenormSchedule,
    set_schedule,
)
from zoo.models.layers import Norm, count_params, group_count, norm_1d, norm_2d

# Float32 arithmetic done in another order than torch's fused BatchNorm kernel.
TOLERANCE = 1e-5
# rmax and dmax at their final values from the first step.
RELAXED = RenormSchedule(rmax=3.0, dmax=5.0, warmup_steps=0, rmax_steps=0, dmax_steps=0)


def _pair(dims: int, schedule: RenormSchedule | None = None) -> tuple[nn.Module, nn.Module]:
    """A Batch Renorm layer and a BatchNorm of the same shape and parameters."""
    renorm = BatchRenorm2d(6, schedule) if dims == 2 else BatchRenorm1d(6, schedule)
    batchnorm = nn.BatchNorm2d(6) if dims == 2 else nn.BatchNorm1d(6)
    with torch.no_grad():
        renorm.weight.copy_(torch.linspace(0.5, 2.0, 6))
        renorm.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    batchnorm.load_state_dict(renorm.state_dict())
    return renorm, batchnorm


def _batch(dims: int, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 6, 5, 5) if dims == 2 else (n, 6)
    return torch.randn(shape, generator=generator) * 3 + 2


# Batch Renorm -----------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [1, 2])
def test_batch_renorm_is_batchnorm_while_r_is_1_and_d_is_0(dims: int) -> None:
    # The paper's schedule starts as plain BN (rmax 1, dmax 0) for 5,000 steps: outputs,
    # gradients and moving averages step for step those of torch's BatchNorm.
    renorm, batchnorm = _pair(dims)
    assert renorm.limits() == (1.0, 0.0)
    for step in range(5):
        x = _batch(dims, 4, seed=step)
        x_renorm, x_bn = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_renorm, out_bn = renorm(x_renorm), batchnorm(x_bn)
        torch.testing.assert_close(out_renorm, out_bn, atol=TOLERANCE, rtol=0)
        upstream = torch.randn(out_bn.shape, generator=torch.Generator().manual_seed(10 + step))
        out_renorm.backward(upstream)
        out_bn.backward(upstream)
        torch.testing.assert_close(x_renorm.grad, x_bn.grad, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(renorm.weight.grad, batchnorm.weight.grad)
        torch.testing.assert_close(renorm.bias.grad, batchnorm.bias.grad)
    torch.testing.assert_close(renorm.running_mean, batchnorm.running_mean)
    torch.testing.assert_close(renorm.running_var, batchnorm.running_var)
    assert renorm.num_batches_tracked.item() == batchnorm.num_batches_tracked.item() == 5


@pytest.mark.parametrize("dims", [1, 2])
def test_inference_is_batchnorm_with_the_moving_statistics(dims: int) -> None:
    renorm, _ = _pair(dims, RELAXED)
    for step in range(4):  # moving averages away from their initial 0 and 1
        renorm(_batch(dims, 8, seed=step))
    batchnorm = nn.BatchNorm2d(6) if dims == 2 else nn.BatchNorm1d(6)
    batchnorm.load_state_dict(renorm.state_dict())  # the same buffers and parameters
    renorm.eval()
    batchnorm.eval()
    x = _batch(dims, 3, seed=99)
    assert torch.equal(renorm(x), batchnorm(x))
    assert renorm.num_batches_tracked.item() == 4  # inference takes no step
    assert isinstance(renorm, type(batchnorm))  # what the exporter folds


def test_r_and_d_are_clipped_and_constant_to_the_gradient() -> None:
    renorm, batchnorm = _pair(2, RELAXED)
    with torch.no_grad():  # moving std 10, mean -40: unclipped r ~ 0.3, d ~ +4.2
        renorm.running_var.fill_(100.0)
        renorm.running_mean.fill_(-40.0)
    x = _batch(2, 4, seed=0)
    mean = x.mean(dim=(0, 2, 3))
    std = torch.sqrt(x.var(dim=(0, 2, 3), correction=0) + renorm.eps)
    r_unclipped, d_unclipped = std / torch.sqrt(torch.tensor(100.0 + renorm.eps)), (mean + 40) / 10
    assert (r_unclipped < 1 / 3).all() and (d_unclipped < 5).all()
    r, d = torch.full((6,), 1 / 3), d_unclipped  # r clipped to 1/rmax, d within dmax
    x_renorm, x_bn = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = renorm(x_renorm)
    x_hat = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    weight, bias = (p.detach().view(1, -1, 1, 1) for p in (renorm.weight, renorm.bias))
    expected = (x_hat * r.view(1, -1, 1, 1) + d.view(1, -1, 1, 1)) * weight + bias
    torch.testing.assert_close(out, expected, atol=TOLERANCE, rtol=0)
    # Constants: the gradient is BatchNorm's scaled by r (d adds nothing).
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(upstream)
    batchnorm(x_bn).backward(upstream)
    torch.testing.assert_close(x_renorm.grad, x_bn.grad * r.view(1, -1, 1, 1), atol=1e-6, rtol=0)
    # d beyond dmax is clipped too (the moving std put back to 10: the step moved it).
    with torch.no_grad():
        renorm.running_var.fill_(100.0)
        renorm.running_mean.fill_(-1000.0)
    out = renorm(x)
    expected = (x_hat * r.view(1, -1, 1, 1) + 5.0) * weight + bias
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_unclipped_renorm_trains_with_the_inference_normalisation() -> None:
    # The point of r and d: while they are not clipped, the training output is exactly the
    # output of the moving statistics, as inference computes it.
    wide = RenormSchedule(rmax=100.0, dmax=100.0, warmup_steps=0, rmax_steps=0, dmax_steps=0)
    renorm, _ = _pair(2, wide)
    for step in range(3):
        renorm(_batch(2, 8, seed=step))
    x = _batch(2, 4, seed=7)
    inference = copy.deepcopy(renorm).eval()(x)
    torch.testing.assert_close(renorm(x), inference, atol=TOLERANCE, rtol=0)


def test_the_schedule_relaxes_the_limits_linearly_after_the_warm_up() -> None:
    paper = RenormSchedule()  # plain BN to 5k steps, dmax 5 at 25k, rmax 3 at 40k
    assert paper.limits(0) == paper.limits(5000) == (1.0, 0.0)
    rmax, dmax = paper.limits(15_000)
    assert rmax == pytest.approx(1 + 2 * 10 / 35) and dmax == pytest.approx(5 * 10 / 20)
    assert paper.limits(25_000) == (pytest.approx(1 + 2 * 20 / 35), 5.0)
    assert paper.limits(40_000) == paper.limits(10**6) == (3.0, 5.0)
    with pytest.raises(ValueError, match="rmax >= 1"):
        RenormSchedule(rmax=0.5)
    with pytest.raises(ValueError, match="warmup_steps <= rmax_steps"):
        RenormSchedule(warmup_steps=30_000)


def test_the_schedule_is_driven_by_the_modules_own_step_counter() -> None:
    schedule = RenormSchedule(rmax=3.0, dmax=4.0, warmup_steps=2, rmax_steps=6, dmax_steps=4)
    model = nn.Sequential(nn.Conv2d(6, 6, 1), BatchRenorm2d(6), nn.Flatten(), BatchRenorm1d(150))
    assert set_schedule(model, schedule) == 2
    layer = model[1]
    for step in range(8):
        assert layer.limits() == schedule.limits(step)
        model(_batch(2, 4, seed=step))
    model.eval()
    model(_batch(2, 4, seed=0))
    assert layer.limits() == schedule.limits(8) == (3.0, 4.0)  # inference takes no step
    assert "num_batches_tracked" in layer.state_dict()  # the counter is saved with the net


def test_a_single_value_per_channel_is_refused_in_training() -> None:
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchRenorm1d(6)(torch.randn(1, 6))


# Group and instance norm -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "min_per_group", "groups"),
    [(8, 2, 4), (16, 2, 8), (64, 2, 32), (128, 2, 32), (96, 2, 32), (64, 16, 4), (100, 16, 2)],
)
def test_group_count(channels: int, min_per_group: int, groups: int) -> None:
    assert group_count(channels, min_per_group) == groups
    assert channels % groups == 0


def test_group_and_instance_norm_standardise_their_sets() -> None:
    x = _batch(2, 3, seed=0).repeat(1, 2, 1, 1) * torch.arange(1, 13).view(1, -1, 1, 1)
    (group,) = norm_2d("group", 12)  # 6 groups of 2 channels
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 6
    out = group(x)
    assert out.shape == x.shape
    per_group = out.reshape(3, 6, -1)
    torch.testing.assert_close(per_group.mean(-1), torch.zeros(3, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_group.var(-1, correction=0), torch.ones(3, 6), atol=1e-3, rtol=0)
    (instance,) = norm_2d("instance", 12)
    assert isinstance(instance, nn.InstanceNorm2d) and instance.affine
    out = instance(x).reshape(3, 12, -1)
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, 12), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, correction=0), torch.ones(3, 12), atol=1e-3, rtol=0)


def test_feature_vectors_get_group_norm_over_features_and_layer_norm_for_instance() -> None:
    (group,) = norm_1d("group", 64)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 4  # 16 features a group
    x = _batch(1, 5, seed=0).repeat(1, 11)[:, :64]
    per_group = group(x).reshape(5, 4, 16)
    torch.testing.assert_close(per_group.mean(-1), torch.zeros(5, 4), atol=1e-5, rtol=0)
    (instance,) = norm_1d("instance", 64)
    assert isinstance(instance, nn.LayerNorm)


@pytest.mark.parametrize("norm", ["group", "instance", "layer"])
def test_batch_free_norms_treat_each_image_alone_in_training(norm: Norm) -> None:
    torch.manual_seed(0)
    model = get_spec("bn_cnn").build(norm=norm, channels=[8, 16], fc=32).train()
    images = load_mnist("test").tensors()[0][:6]
    together = model(images)
    alone = torch.cat([model(images[i : i + 1]) for i in range(6)])
    assert together.shape == (6, 10)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


# Export ----------------------------------------------------------------------------------

# Every new option of the CNN and of the MLP ("instance" on an MLP is its LayerNorm, which
# the export tests already cover).
EXPORT_CASES: list[tuple[str, Norm]] = [
    ("bn_cnn", "batch_renorm"),
    ("bn_cnn", "group"),
    ("bn_cnn", "instance"),
    ("bn_mlp", "batch_renorm"),
    ("bn_mlp", "group"),
]
SMALL = {"bn_cnn": {"channels": [8, 16], "fc": 32}, "bn_mlp": {"hidden": [64, 64]}}


@pytest.mark.parametrize(("name", "norm"), EXPORT_CASES, ids=[f"{n}-{m}" for n, m in EXPORT_CASES])
def test_new_norms_export_exactly(name: str, norm: Norm, tmp_path: Path) -> None:
    """A briefly trained net (Batch Renorm's r and d active from the first step, so its
    moving averages and affine parameters are its own) through fold -> ONNX -> onnxruntime
    at both optimisation levels, against the unfolded PyTorch net."""
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build(norm=norm, **SMALL[name])
    set_schedule(model, RELAXED)
    x, y = train_val_split()[0].tensors()
    recipe = TrainRecipe(optimizer="sgd", lr=0.05, schedule="constant", batch_size=16)
    fit(model, (x[:640], y[:640]), recipe, max_steps=40, progress=False)
    model.eval()
    card = ModelCard(
        name=name,
        family=spec.family,
        architecture=type(model).__name__,
        config=spec.configure(norm=norm, **SMALL[name]).model_dump(mode="json"),
        params=count_params(model),
        normalisation_mean=MNIST_MEAN,
        normalisation_std=MNIST_STD,
    )
    path = tmp_path / "model.onnx"
    onnx.save_model(export_onnx(fold_model(model, torch.rand(2, 1, 28, 28)), card), path)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "BatchNormalization" not in ops
    images, labels = load_mnist("test").tensors()
    report = verify(path, model, images[:200], labels[:200], chunk=64)
    assert [r.level for r in report.levels] == ["disabled", "enabled"]
    assert report.max_abs_diff <= 1e-4
