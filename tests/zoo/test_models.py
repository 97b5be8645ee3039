"""Every registered model, the registry's strictness, and the techniques' defining properties."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo.models
from zoo.errors import InvalidArgumentError, NotFoundError
from zoo.models import create_model, get_spec, list_models, register_model
from zoo.models.highway import HIGHWAY_GATE_BIAS, HighwayConv, HighwayLinear
from zoo.models.selu import SELU, SELU_ALPHA, SELU_LAMBDA

FAMILIES = {"plain", "batchnorm", "selu", "highway", "resnet", "grid_lstm"}
NAMES = [spec.name for spec in list_models()]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 7])
def test_every_model_maps_images_to_logits(name: str, batch: int) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(torch.rand(batch, 1, 28, 28))
    assert logits.shape == (batch, 10) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_names_manifest_is_the_registry() -> None:
    """scripts/run.sh reads the names from this file so as not to import torch to serve."""
    manifest = Path(zoo.models.__file__).with_name("NAMES")
    assert manifest.read_text().splitlines() == NAMES, (
        "zoo/models/NAMES is not the registry's names: "
        "regenerate it with `zoo models --names > zoo/models/NAMES`"
    )


def test_every_family_is_registered() -> None:
    assert {spec.family for spec in list_models()} == FAMILIES


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(NotFoundError, match="did you mean resnet"):
        get_spec("resnt")


def test_duplicate_name_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_model("bn_cnn", family="batchnorm", config=get_spec("bn_cnn").config)(
            lambda c: nn.Identity()
        )


def test_config_overrides_are_validated() -> None:
    assert len(create_model("selu_mlp", depth=3).net) < len(create_model("selu_mlp").net)
    with pytest.raises(InvalidArgumentError, match="depth"):
        create_model("selu_mlp", depth=0)
    with pytest.raises(InvalidArgumentError, match="not_a_field"):
        create_model("selu_mlp", not_a_field=1)


def test_selu_uses_the_papers_constants() -> None:
    assert pytest.approx(1.6732632423543772848170429916717, abs=0) == SELU_ALPHA
    assert pytest.approx(1.0507009873554804934193349852946, abs=0) == SELU_LAMBDA
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(SELU()(x), F.selu(x))


def test_selu_fixed_point_through_32_layers() -> None:
    """Klambauer et al.: at init, standardised inputs keep mean ~0 and variance ~1 through depth."""
    torch.manual_seed(0)
    model = create_model("selu_mlp", depth=32, width=512, alpha_dropout=0.0).eval()
    x = (
        torch.randn(4096, 1, 28, 28) * model.net[0].std + model.net[0].mean
    )  # standard normal after Normalize
    activations = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: activations.append(out))
        for m in model.net
        if isinstance(m, SELU)
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    assert len(activations) == 32
    last = activations[-1]
    assert abs(float(last.mean())) < 0.1
    assert 0.8 <= float(last.var()) <= 1.2


def test_highway_gate_bias_starts_negative() -> None:
    for name, layer_type in [("highway_mlp", HighwayLinear), ("highway_cnn", HighwayConv)]:
        gates = [m.gate.bias for m in create_model(name).modules() if isinstance(m, layer_type)]
        assert gates, name
        assert all(torch.all(bias == HIGHWAY_GATE_BIAS) for bias in gates)
    assert -3.0 <= HIGHWAY_GATE_BIAS <= -1.0
    assert sum(isinstance(m, HighwayLinear) for m in create_model("highway_mlp").modules()) >= 50


def test_highway_layer_carries_input_when_gate_is_closed() -> None:
    layer = HighwayLinear(8, gate_bias=-50.0)  # T(x) ~ 0: y = x
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), x)


def test_grid_lstm_is_a_fixed_unrolled_grid_independent_of_batch() -> None:
    torch.manual_seed(0)
    model = create_model("grid_lstm").eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        together = model(x)
        one_by_one = torch.cat([model(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "option", [{"norm": "layer"}, {"reparam": "weight"}, {"reparam": "spectral"}]
)
def test_normalisation_options_of_the_mlp_and_cnn(option: dict[str, str]) -> None:
    for name in ("bn_mlp", "bn_cnn"):
        model = create_model(name, **option).eval()
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
