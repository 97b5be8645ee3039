"""Plain baselines: the nets of zoo.models.batchnorm without any normalisation.

They are what the lecture compares each technique with; the deep ones are expected
to train badly or not at all (vanishing signal), and that is recorded, not hidden.
"""

from __future__ import annotations

from zoo.models.batchnorm import CNN, MLP, CNNConfig, MLPConfig
from zoo.models.registry import TrainRecipe, register_model

# Baseline for the 50-layer highway MLP and the 16-layer SELU MLP.
PLAIN_DEEP_LAYERS = 50


@register_model(
    "plain_mlp_sigmoid",
    family="plain",
    config=MLPConfig(activation="sigmoid", norm="none"),
    recipe=TrainRecipe(epochs=5, lr=1e-3),
)
def plain_mlp_sigmoid(config: MLPConfig) -> MLP:
    """3x256 sigmoid MLP, no normalisation (baseline of bn_mlp_sigmoid)."""
    return MLP(config)


@register_model(
    "plain_mlp_relu",
    family="plain",
    config=MLPConfig(activation="relu", norm="none"),
    recipe=TrainRecipe(epochs=5, lr=1e-3),
)
def plain_mlp_relu(config: MLPConfig) -> MLP:
    """3x256 ReLU MLP, no normalisation (baseline of bn_mlp)."""
    return MLP(config)


@register_model(
    "plain_mlp_deep",
    family="plain",
    config=MLPConfig(hidden=(100,) * PLAIN_DEEP_LAYERS, activation="relu", norm="none"),
    recipe=TrainRecipe(epochs=5, lr=1e-3),
)
def plain_mlp_deep(config: MLPConfig) -> MLP:
    """50x100 ReLU MLP with PyTorch's default init: the deep net that highway and SELU fix."""
    return MLP(config)


@register_model(
    "plain_cnn",
    family="plain",
    config=CNNConfig(norm="none"),
    recipe=TrainRecipe(epochs=3, lr=1e-3, optimizer="adamw", weight_decay=5e-4, augment_shift=2),
)
def plain_cnn(config: CNNConfig) -> CNN:
    """bn_cnn without BatchNorm (its baseline)."""
    return CNN(config)
