"""MNIST from the four standard gzipped IDX files.

Where the files are looked for, in order: `$ZOO_DATA_DIR`, `../shared/data/mnist`
beside the project, the user cache (`$XDG_CACHE_HOME/modelzoo/mnist`), and only then
the public mirrors (downloaded into the cache). The md5 of each unpacked file is
checked against the well-known MNIST checksums, and IDX headers are checked for
their magic number and sizes, so a truncated or foreign file fails with its name.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from zoo.errors import DataError

log = logging.getLogger(__name__)

Split = Literal["train", "test"]

# Mean and standard deviation of the MNIST training pixels in [0, 1]; every model
# applies them as its fixed first step (zoo.models.layers.Normalize).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# (images file, labels file, number of items) per split, with the md5 of the unpacked files.
MNIST_FILES: dict[Split, tuple[str, str, int]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# IDX magic numbers: 0x08 = unsigned byte, last byte = number of dimensions.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VALIDATION_SIZE = 5_000
VALIDATION_SEED = 0


def candidate_dirs() -> list[Path]:
    dirs = []
    if env := os.environ.get("ZOO_DATA_DIR"):
        dirs.append(Path(env))
    dirs.append(PROJECT_ROOT.parent / "shared" / "data" / "mnist")
    dirs.append(cache_dir())
    return dirs


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "modelzoo" / "mnist"


def find_file(filename: str, *, download: bool = True) -> Path:
    for folder in candidate_dirs():
        if (folder / filename).is_file():
            return folder / filename
    if not download:
        raise DataError(
            f"MNIST file {filename} not found in {', '.join(map(str, candidate_dirs()))}"
        )
    return _download(filename)


def _download(filename: str) -> Path:
    target = cache_dir() / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in MNIST_MIRRORS:
        log.info("downloading %s from %s", filename, mirror)
        try:
            with urllib.request.urlopen(mirror + filename, timeout=30) as response:
                payload = response.read()
        except OSError as error:
            errors.append(f"{mirror}: {error}")
            continue
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(payload)
        os.replace(tmp, target)
        return target
    raise DataError(
        f"MNIST file {filename} is not on this machine and could not be downloaded "
        f"({'; '.join(errors)}); set ZOO_DATA_DIR to a folder holding it"
    )


def read_idx(path: Path, magic: int, expected_count: int, md5: str | None = None) -> np.ndarray:
    """Parse one gzipped IDX file into a uint8 array, checking checksum, magic and sizes."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a readable gzip file ({error})") from None
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        raise DataError(
            f"{path}: md5 of the unpacked content is {hashlib.md5(raw).hexdigest()}, expected {md5}"
        )
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DataError(
            f"{path}: IDX magic number {got!r:}, expected {magic:#010x}: not an MNIST IDX file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[0] != expected_count:
        raise DataError(f"{path}: holds {dims[0]} items, expected {expected_count}")
    expected_bytes = header + int(np.prod(dims))
    if len(raw) != expected_bytes:
        raise DataError(
            f"{path}: {len(raw)} bytes, expected {expected_bytes} for shape {dims} (truncated?)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@dataclass(frozen=True)
class MnistSplit:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 [N, 1, 28, 28] pixels in [0, 1] (what every model takes) and int64 labels."""
        x = torch.from_numpy(self.images.astype(np.float32) / 255.0).unsqueeze(1)
        return x, torch.from_numpy(self.labels)

    def subset(self, index: np.ndarray) -> MnistSplit:
        return MnistSplit(self.images[index], self.labels[index])


@functools.lru_cache(maxsize=2)
def load_mnist(split: Split, *, download: bool = True) -> MnistSplit:
    images_file, labels_file, count = MNIST_FILES[split]
    images = read_idx(
        find_file(images_file, download=download), IDX_IMAGES_MAGIC, count, MNIST_MD5[images_file]
    )
    labels = read_idx(
        find_file(labels_file, download=download), IDX_LABELS_MAGIC, count, MNIST_MD5[labels_file]
    )
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_file}: images of shape {images.shape[1:]}, expected (28, 28)")
    return MnistSplit(images, labels.astype(np.int64))


def train_val_split(
    val_size: int = VALIDATION_SIZE, seed: int = VALIDATION_SEED
) -> tuple[MnistSplit, MnistSplit]:
    """Carve a validation set from the training set with a fixed seed (the same for every model)."""
    train = load_mnist("train")
    order = np.random.default_rng(seed).permutation(len(train))
    return train.subset(order[val_size:]), train.subset(order[:val_size])
