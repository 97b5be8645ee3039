"""The model zoo: one file per family; importing this package registers every model."""

from zoo.models import (  # noqa: F401  (imported for their registrations)
    batchnorm,
    grid_lstm,
    highway,
    plain,
    resnet,
    selu,
)
from zoo.models.registry import (
    ModelConfig,
    ModelSpec,
    TrainRecipe,
    create_model,
    get_spec,
    list_models,
    register_model,
)

__all__ = [
    "ModelConfig",
    "ModelSpec",
    "TrainRecipe",
    "create_model",
    "get_spec",
    "list_models",
    "register_model",
]
