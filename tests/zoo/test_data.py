"""MNIST loading: real files, checksums, IDX validation, search order, validation split."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from zoo import data
from zoo.errors import DataError


def write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def idx_header(magic: int, *dims: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


def test_real_mnist_shapes_and_labels() -> None:
    test = data.load_mnist("test")
    assert test.images.shape == (10_000, 28, 28) and test.images.dtype == np.uint8
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test labels
    x, _ = test.tensors()
    assert x.shape == (10_000, 1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert abs(float(data.load_mnist("train").tensors()[0].mean()) - data.MNIST_MEAN) < 1e-3


def test_validation_split_is_fixed_and_disjoint() -> None:
    train_a, val_a = data.train_val_split()
    _, val_b = data.train_val_split()
    assert len(val_a) == data.VALIDATION_SIZE and len(train_a) == 60_000 - data.VALIDATION_SIZE
    np.testing.assert_array_equal(val_a.labels, val_b.labels)
    np.testing.assert_array_equal(val_a.images[:50], val_b.images[:50])
    assert set(np.unique(val_a.labels)) == set(range(10))


def test_parses_a_small_valid_idx_file(tmp_path: Path) -> None:
    labels = bytes([3, 1, 4])
    path = write_gz(tmp_path / "l.gz", idx_header(data.IDX_LABELS_MAGIC, 3) + labels)
    assert data.read_idx(path, data.IDX_LABELS_MAGIC, 3).tolist() == [3, 1, 4]


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    payload = idx_header(data.IDX_IMAGES_MAGIC, 2, 28, 28) + bytes(28 * 28)  # one image of two
    path = write_gz(tmp_path / "truncated-images.gz", payload)
    with pytest.raises(DataError, match=r"truncated-images\.gz.*truncated"):
        data.read_idx(path, data.IDX_IMAGES_MAGIC, 2)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    real = data.find_file("t10k-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "cut.gz"
    path.write_bytes(real[: len(real) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: not a readable gzip"):
        data.read_idx(path, data.IDX_LABELS_MAGIC, 10_000)


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "foreign.gz", b"%PDF-1.4 definitely not IDX")
    with pytest.raises(DataError, match=r"foreign\.gz: IDX magic number"):
        data.read_idx(path, data.IDX_IMAGES_MAGIC, 1)


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "l.gz", idx_header(data.IDX_LABELS_MAGIC, 1) + b"\x05")
    with pytest.raises(DataError, match="md5"):
        data.read_idx(
            path, data.IDX_LABELS_MAGIC, 1, md5=data.MNIST_MD5["t10k-labels-idx1-ubyte.gz"]
        )


def test_zoo_data_dir_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    assert data.find_file("t10k-labels-idx1-ubyte.gz") == tmp_path / "t10k-labels-idx1-ubyte.gz"


def test_missing_data_without_network_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing local, and the only mirror is a closed port on this machine: a real failed download.
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path / "nowhere" / "project")
    monkeypatch.setattr(data, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(DataError, match=r"could not be downloaded.*ZOO_DATA_DIR"):
        data.find_file("t10k-labels-idx1-ubyte.gz")
