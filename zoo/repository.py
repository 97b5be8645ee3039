"""The model repository in Triton's layout.

    <repository>/<model>/config.pbtxt          inference.ModelConfig, protobuf text format
    <repository>/<model>/card.json             the model card (zoo.card)
    <repository>/<model>/<version>/model.onnx  one folder per version, a positive integer

`config.pbtxt` is read and written through our own `inference.ModelConfig` message
(proto/model_config.proto: Triton's names and numbers), so the same folder can be
handed to Triton. The exporter writes with `config_for_card` + `write_model_config`;
the server reads with `read_model_config` and `list_versions`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TypeVar

import pydantic
from google.protobuf import text_format

from proto.model_config_pb2 import (
    DataType,
    ModelConfig,
    ModelInput,
    ModelOutput,
    ModelVersionPolicy,
)
from zoo.card import CARD_FILENAME, ModelCard, TensorSpec
from zoo.errors import InvalidArgumentError, NotFoundError

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_MODEL_FILENAME",
    "PLATFORM_ONNX",
    "ModelConfig",
    "card_file",
    "config_for_card",
    "datatype_from_kserve",
    "is_version_name",
    "kserve_datatype",
    "list_models",
    "list_versions",
    "model_file",
    "read_card",
    "read_model_config",
    "version_folders",
    "write_model_config",
]

CONFIG_FILENAME = "config.pbtxt"
# Triton's default file name for the onnxruntime_onnx platform.
DEFAULT_MODEL_FILENAME = "model.onnx"
PLATFORM_ONNX = "onnxruntime_onnx"
T = TypeVar("T", ModelInput, ModelOutput)
_HEADER = "# Triton model configuration (inference.ModelConfig), written by zoo.repository.\n"


def kserve_datatype(data_type: int) -> str:
    """TYPE_FP32 -> "FP32": KServe v2 names are Triton's without the prefix, but STRING is BYTES."""
    if data_type == DataType.TYPE_STRING:
        return "BYTES"
    return DataType.Name(data_type).removeprefix("TYPE_")


def datatype_from_kserve(name: str) -> int:
    """ "FP32" -> TYPE_FP32; the inverse of `kserve_datatype`."""
    key = "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"
    if key == "TYPE_INVALID" or key not in DataType.keys():  # noqa: SIM118 (an enum wrapper)
        raise InvalidArgumentError(f"unknown datatype {name!r}: expected one of FP32, INT64, ...")
    return DataType.Value(key)


def _tensor(cls: type[T], spec: TensorSpec, batched: bool) -> T:
    # The card's shapes carry the batch dimension (-1) first; config dims do not.
    dims = spec.shape[1:] if batched else spec.shape
    return cls(name=spec.name, data_type=datatype_from_kserve(spec.datatype), dims=list(dims))


def config_for_card(
    card: ModelCard,
    *,
    max_batch_size: int = 128,
    preferred_batch_sizes: tuple[int, ...] = (8, 32),
    max_queue_delay_us: int = 500,
    max_queue_size: int = 0,
) -> ModelConfig:
    """The config.pbtxt for a zoo model: inputs and outputs from its card, dynamic batching.

    `max_queue_size` 0 means no queue limit; `max_batch_size` 0 a model without a batch axis.
    """
    config = ModelConfig(
        name=card.name,
        platform=PLATFORM_ONNX,
        max_batch_size=max_batch_size,
        version_policy=ModelVersionPolicy(latest=ModelVersionPolicy.Latest(num_versions=1)),
        input=[_tensor(ModelInput, s, max_batch_size > 0) for s in card.inputs],
        output=[_tensor(ModelOutput, s, max_batch_size > 0) for s in card.outputs],
    )
    if max_batch_size > 0:
        batching = config.dynamic_batching
        batching.preferred_batch_size.extend(preferred_batch_sizes)
        batching.max_queue_delay_microseconds = max_queue_delay_us
        if max_queue_size:
            batching.default_queue_policy.max_queue_size = max_queue_size
    return config


def write_model_config(model_dir: Path, config: ModelConfig) -> Path:
    """Write `model_dir/config.pbtxt` atomically (a reader never sees half a file)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / CONFIG_FILENAME
    # Created exclusively under a fresh name, with a new file's modes (the umask's say),
    # not mkstemp's private 0600: a server running as another user must read it.
    tmp = model_dir / f".config.{uuid.uuid4().hex}.tmp"
    try:
        with tmp.open("x") as f:
            f.write(_HEADER + text_format.MessageToString(config))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def read_model_config(model_dir: Path) -> ModelConfig:
    """Parse `model_dir/config.pbtxt`; an empty name becomes the folder's name, as in Triton."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILENAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFoundError(f"{path}: missing (every model folder needs a config)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"{path}: unreadable as protobuf text: {error}") from None
    try:
        config = text_format.Parse(text, ModelConfig())
    except text_format.ParseError as error:
        raise InvalidArgumentError(f"{path}:{error}") from None
    if not config.name:
        config.name = model_dir.name
    elif config.name != model_dir.name:
        raise InvalidArgumentError(
            f"{path}: name {config.name!r} differs from its folder {model_dir.name!r}"
        )
    return config


def list_models(repository: Path) -> list[str]:
    """Model names: the repository's sub-folders (hidden ones, e.g. temporary writes, skipped)."""
    repository = Path(repository)
    if not repository.is_dir():
        raise NotFoundError(f"model repository {repository} is not a directory")
    return sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_version_name(name: str) -> bool:
    """A version folder's name, as Triton reads them: a positive decimal, no leading 0,
    that fits Triton's int64.

    ASCII digits only: str.isdigit() also accepts "²", which int() refuses; and int()
    refuses more than 4,300 digits."""
    return len(name) <= 18 and name.isascii() and name.isdigit() and not name.startswith("0")


def version_folders(model_dir: Path) -> list[int]:
    """Every version folder of a model, ascending, whatever the policy serves."""
    return sorted(
        int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and is_version_name(p.name)
    )


def list_versions(model_dir: Path, policy: ModelVersionPolicy | None = None) -> list[int]:
    """The versions to serve, ascending, per `policy` (default: the latest one, as in Triton)."""
    present = version_folders(model_dir)
    choice = policy.WhichOneof("policy_choice") if policy is not None else None
    if choice == "all":
        return present
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in present if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return present[-max(count, 1) :]


def model_file(model_dir: Path, version: int, config: ModelConfig) -> Path:
    """The model file of one version: `default_model_filename` or model.onnx.

    The name must be a plain file name: "../../elsewhere/model.onnx" would reach outside
    the version folder."""
    name = config.default_model_filename or DEFAULT_MODEL_FILENAME
    if name != Path(name).name or name in (".", ".."):
        raise InvalidArgumentError(
            f"default_model_filename {name!r}: expected a file name inside the version folder"
        )
    return Path(model_dir) / str(version) / name


def card_file(model_dir: Path) -> Path:
    return Path(model_dir) / CARD_FILENAME


def read_card(model_dir: Path) -> ModelCard | None:
    """The card beside the model, or None when the folder has none (e.g. a foreign model)."""
    path = card_file(model_dir)
    if not path.exists():
        return None
    try:
        return ModelCard.from_json(path.read_bytes())
    except (ValueError, pydantic.ValidationError) as error:
        raise InvalidArgumentError(f"{path}: not a model card: {error}") from None
