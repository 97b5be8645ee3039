"""zoo.repository: config.pbtxt round trips and version listing in Triton's layout."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proto.model_config_pb2 import DataType, ModelConfig, ModelVersionPolicy
from zoo.card import ModelCard
from zoo.errors import InvalidArgumentError, NotFoundError
from zoo.repository import (
    config_for_card,
    datatype_from_kserve,
    kserve_datatype,
    list_models,
    list_versions,
    model_file,
    read_card,
    read_model_config,
    write_model_config,
)

CARD = ModelCard(
    name="mlp",
    family="plain",
    architecture="MLP",
    config={},
    params=10,
    normalisation_mean=0.1307,
    normalisation_std=0.3081,
)


def test_config_for_card_drops_the_batch_dim_and_round_trips(tmp_path: Path) -> None:
    config = config_for_card(CARD, max_batch_size=64, max_queue_size=7)
    assert [list(i.dims) for i in config.input] == [[1, 28, 28]]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("logits", [10]),
        ("probabilities", [10]),
    ]
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 7
    path = write_model_config(tmp_path / "mlp", config)
    assert path.name == "config.pbtxt"
    assert 'platform: "onnxruntime_onnx"' in path.read_text()
    assert read_model_config(tmp_path / "mlp") == config
    assert [p.name for p in (tmp_path / "mlp").iterdir()] == ["config.pbtxt"]  # no temp left


def test_unbatched_config_keeps_the_full_shape() -> None:
    config = config_for_card(CARD, max_batch_size=0)
    assert list(config.input[0].dims) == [-1, 1, 28, 28]
    assert not config.HasField("dynamic_batching")


def test_read_fills_an_empty_name_from_the_folder(tmp_path: Path) -> None:
    (tmp_path / "cnn").mkdir()
    (tmp_path / "cnn" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    assert read_model_config(tmp_path / "cnn").name == "cnn"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "other"', "differs from its folder 'mlp'"),
        ("max_batch_size: 8\nsequence_batchin {}", 'no field named "sequence_batchin"'),
        ("max_batch_size: eight", "max_batch_size"),
    ],
)
def test_read_rejects_bad_configs_precisely(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "config.pbtxt").write_text(text)
    with pytest.raises(InvalidArgumentError, match=message):
        read_model_config(tmp_path / "mlp")


def test_read_of_a_missing_config_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"config\.pbtxt: missing"):
        read_model_config(tmp_path)


def test_list_versions_follows_the_policy(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "0", "03", "latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(tmp_path) == [10]
    latest2 = ModelVersionPolicy(latest=ModelVersionPolicy.Latest(num_versions=2))
    assert list_versions(tmp_path, latest2) == [2, 10]
    assert list_versions(tmp_path, ModelVersionPolicy(all={})) == [1, 2, 10]
    specific = ModelVersionPolicy(specific=ModelVersionPolicy.Specific(versions=[1, 5]))
    assert list_versions(tmp_path, specific) == [1]


def test_list_models_skips_files_and_hidden_folders(tmp_path: Path) -> None:
    for name in ("b", "a", ".a.tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "README.md").write_text("")
    assert list_models(tmp_path) == ["a", "b"]
    with pytest.raises(NotFoundError):
        list_models(tmp_path / "nowhere")


def test_model_file_and_card(tmp_path: Path) -> None:
    config = config_for_card(CARD)
    assert model_file(tmp_path, 3, config) == tmp_path / "3" / "model.onnx"
    config.default_model_filename = "net.onnx"
    assert model_file(tmp_path, 3, config).name == "net.onnx"
    assert read_card(tmp_path) is None
    (tmp_path / "card.json").write_text(CARD.to_json())
    assert read_card(tmp_path) == CARD
    (tmp_path / "card.json").write_text("{")
    with pytest.raises(InvalidArgumentError, match="not a model card"):
        read_card(tmp_path)


def test_kserve_datatype_names() -> None:
    assert kserve_datatype(DataType.TYPE_FP32) == "FP32"
    assert kserve_datatype(DataType.TYPE_STRING) == "BYTES"
    assert datatype_from_kserve("BYTES") == DataType.TYPE_STRING
    with pytest.raises(InvalidArgumentError, match="unknown datatype 'FLOAT'"):
        datatype_from_kserve("FLOAT")


def test_a_written_config_has_the_modes_of_any_new_file(tmp_path: Path) -> None:
    """Readable by whoever the umask lets read new files (a server running as another
    user, a container), not only by its writer as a private temporary file would be."""
    config = ModelConfig(name="m", max_batch_size=1)
    old = os.umask(0o022)
    try:
        path = write_model_config(tmp_path / "m", config)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
