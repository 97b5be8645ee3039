"""Image loading: tensors pass through, pictures are made MNIST-like (client.images)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from client.images import load_images
from zoo.errors import InvalidArgumentError


def bar_picture(size: tuple[int, int], ink: int, paper: int, mode: str = "L") -> Image.Image:
    """A vertical bar (a '1') drawn off-centre on a canvas of the given size."""
    picture = Image.new("L", size, paper)
    width, height = size
    ImageDraw.Draw(picture).rectangle(
        [width // 5, height // 4, width // 5 + width // 12, 3 * height // 4], fill=ink
    )
    return picture.convert(mode)


def test_uint8_tensor_is_scaled_and_batched() -> None:
    digit = np.arange(784, dtype=np.uint8).reshape(28, 28)
    batch = load_images(digit)
    assert batch.shape == (1, 1, 28, 28) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, 0], digit / 255.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 1, 28, 28)])
def test_float_batches_pass_through(shape: tuple[int, ...]) -> None:
    images = np.random.default_rng(0).random(shape, dtype=np.float32)
    batch = load_images(images)
    assert batch.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(batch.reshape(images.shape), images)


def test_float_tensor_outside_unit_range_is_refused() -> None:
    with pytest.raises(
        InvalidArgumentError, match=r"expected pixel values in \[0, 1\].*got values in \[0, 255\]"
    ):
        load_images(np.full((28, 28), 255.0))


def test_wrong_shape_is_refused_with_the_shape() -> None:
    with pytest.raises(InvalidArgumentError, match=r"got shape \[2, 3, 28, 28\]"):
        load_images(np.zeros((2, 3, 28, 28), np.float32))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_dark_ink_on_light_paper_becomes_white_on_black(mode: str) -> None:
    tensor = load_images(bar_picture((200, 120), ink=20, paper=235, mode=mode))[0, 0]
    assert tensor.shape == (28, 28)
    assert tensor[0].max() == 0.0 and tensor[:, 0].max() == 0.0  # black border
    assert tensor.max() > 0.9  # contrast stretched to white


def test_picture_is_centred_by_mass_and_fits_the_mnist_box() -> None:
    tensor = load_images(bar_picture((300, 300), ink=255, paper=0))[0, 0]
    rows, _ = np.nonzero(tensor > 0.2)
    assert rows.max() - rows.min() + 1 <= 20  # scaled into the 20 x 20 box
    centre = (tensor.sum(axis=1) @ np.arange(28)) / tensor.sum()
    assert abs(centre - 13.5) <= 1.0
    centre_x = (tensor.sum(axis=0) @ np.arange(28)) / tensor.sum()
    assert abs(centre_x - 13.5) <= 1.0  # moved from the left fifth to the middle


def test_transparent_background_counts_as_paper() -> None:
    picture = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(picture).rectangle([28, 10, 36, 54], fill=(0, 0, 0, 255))
    tensor = load_images(picture)[0, 0]
    assert tensor[0].max() == 0.0 and tensor.max() > 0.9


def test_28x28_picture_is_only_scaled() -> None:
    digit = np.zeros((28, 28), np.uint8)
    digit[5:20, 12:15] = 200
    np.testing.assert_allclose(load_images(Image.fromarray(digit))[0, 0], digit / 255.0)


def test_blank_picture_gives_a_black_image() -> None:
    assert load_images(Image.new("L", (50, 50), 255)).max() == 0.0


def test_files_png_jpeg_and_npy(tmp_path) -> None:
    bar_picture((90, 90), 0, 255).save(tmp_path / "a.png")
    bar_picture((90, 90), 0, 255, mode="RGB").save(tmp_path / "b.jpg", quality=80)
    np.save(tmp_path / "c.npy", np.zeros((2, 28, 28), np.uint8))
    batch = load_images([tmp_path / "a.png", str(tmp_path / "b.jpg"), tmp_path / "c.npy"])
    assert batch.shape == (4, 1, 28, 28)
    assert np.abs(batch[0] - batch[1]).mean() < 0.05  # JPEG noise does not move the digit


def test_unreadable_and_missing_files_say_which(tmp_path) -> None:
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(
        InvalidArgumentError, match=r"notes.png' is unreadable: expected a PNG, JPEG or .npy"
    ):
        load_images(tmp_path / "notes.png")
    with pytest.raises(InvalidArgumentError, match=r"gone\.png': no such file"):
        load_images(tmp_path / "gone.png")


def test_empty_sequence_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="no images given"):
        load_images([])
