"""Turn what a user holds into the zoo models' input: FP32 [N, 1, 28, 28] pixels in [0, 1].

Every zoo model takes a white digit on a black background, as in MNIST (see zoo.card).
Two kinds of input are accepted:

*Tensors* - numpy arrays whose last two dimensions are 28 x 28 ([28, 28], [N, 28, 28],
[N, 1, 28, 28]), and `.npy` files holding one - are taken as they are: uint8 is divided
by 255, floats must already lie in [0, 1]. They are assumed to be MNIST-like already.

*Pictures* - PIL images, PNG/JPEG (or any format Pillow reads) files, and arrays of
another size ([H, W] or [H, W, channels]) - are converted the way MNIST's own digits
were made (LeCun et al., 1998, "Gradient-based learning applied to document recognition"):

1. Converted to 8-bit grayscale; transparent pixels are laid on white first, because a
   digit drawn on a transparent canvas is usually dark ink.
2. Inverted when the background is light, i.e. when the median of the border pixels is
   above mid-grey: a photo or scan of dark ink on paper becomes white-on-black.
3. A 28 x 28 picture is then used as is. A picture of any other size has its background
   level subtracted, its contrast stretched to the full range, its digit's bounding box
   scaled to fit 20 x 20 (aspect ratio kept), and is placed on a black 28 x 28 canvas with
   the digit's centre of mass at the centre.
4. Scaled to [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from zoo.errors import InvalidArgumentError

ImageLike = np.ndarray | Image.Image | str | os.PathLike

MNIST_SIDE = 28
# MNIST digits were size-normalised into a 20 x 20 box, then centred by mass in 28 x 28.
MNIST_DIGIT_BOX = 20
# Pixels brighter than this fraction of the maximum count as ink when finding the digit's
# bounding box, so that JPEG noise around it does not widen the box.
INK_FRACTION = 0.2
MID_GREY = 127.5


def load_images(images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
    """One float32 [N, 1, 28, 28] batch in [0, 1] from one input or a sequence of them."""
    if isinstance(images, (np.ndarray, Image.Image, str, os.PathLike)):
        return to_tensor(images)
    if len(images) == 0:
        raise InvalidArgumentError("no images given: expected at least one image")
    return np.concatenate([to_tensor(image) for image in images])


def to_tensor(image: ImageLike) -> np.ndarray:
    """One input (which may hold several images) as float32 [N, 1, 28, 28] in [0, 1]."""
    if isinstance(image, np.ndarray):
        return array_to_tensor(image)
    if isinstance(image, Image.Image):
        return picture_to_tensor(image)[None, None]
    return read_image_file(Path(image))


def read_image_file(path: Path) -> np.ndarray:
    """A `.npy` tensor file or a picture file as float32 [N, 1, 28, 28]."""
    if not path.is_file():
        raise InvalidArgumentError(f"image {str(path)!r}: no such file")
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    try:
        with Image.open(path) as picture:
            picture.load()
            return picture_to_tensor(picture)[None, None]
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidArgumentError(
            f"image {str(path)!r} is unreadable: expected a PNG, JPEG or .npy file ({error})"
        ) from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        # allow_pickle=False: an .npy file from elsewhere must not run code when loaded.
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InvalidArgumentError(
            f"image {str(path)!r} is not a readable .npy file ({error})"
        ) from None
    try:
        return array_to_tensor(array)
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"image {str(path)!r}: {error}") from None


def array_to_tensor(array: np.ndarray) -> np.ndarray:
    """A tensor array ([..., 28, 28]) as is, or a picture array of another size converted."""
    if array.ndim in (2, 3, 4) and array.shape[-2:] == (MNIST_SIDE, MNIST_SIDE):
        if array.ndim == 4 and array.shape[1] != 1:
            raise InvalidArgumentError(
                f"expected an image batch [N, 1, 28, 28], got shape {list(array.shape)}"
            )
        return _scale_pixels(array).reshape(-1, 1, MNIST_SIDE, MNIST_SIDE)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        picture = Image.fromarray(_as_uint8(array).squeeze())
        return picture_to_tensor(picture)[None, None]
    raise InvalidArgumentError(
        "expected an image array of shape [28, 28], [N, 28, 28], [N, 1, 28, 28], [H, W] or "
        f"[H, W, channels], got shape {list(array.shape)}"
    )


def _scale_pixels(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise InvalidArgumentError(f"expected uint8 or float pixels, got dtype {array.dtype}")
    pixels = array.astype(np.float32)
    low, high = float(pixels.min(initial=0.0)), float(pixels.max(initial=0.0))
    if low < 0.0 or high > 1.0 or not np.isfinite(pixels).all():
        raise InvalidArgumentError(
            f"expected pixel values in [0, 1] (or uint8), got values in [{low:g}, {high:g}]"
        )
    return pixels


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    return np.round(_scale_pixels(array) * 255.0).astype(np.uint8)


def picture_to_tensor(picture: Image.Image) -> np.ndarray:
    """Float32 [28, 28] in [0, 1], white digit on black, by the steps in the module docstring."""
    gray = np.asarray(_to_grayscale(picture), dtype=np.float32)
    if _border_median(gray) > MID_GREY:
        gray = 255.0 - gray
    if gray.shape != (MNIST_SIDE, MNIST_SIDE):
        gray = _fit_like_mnist(gray)
    return gray / 255.0


def _to_grayscale(picture: Image.Image) -> Image.Image:
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        canvas = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(canvas, picture.convert("RGBA"))
    return picture.convert("L")


def _border_median(gray: np.ndarray) -> float:
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(np.median(border))


def _fit_like_mnist(gray: np.ndarray) -> np.ndarray:
    """Crop to the digit, scale it into 20 x 20, centre its mass on a 28 x 28 canvas."""
    ink = np.clip(gray - _border_median(gray), 0.0, None)
    if ink.max() <= 0.0:
        return np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    ink *= 255.0 / ink.max()
    rows, cols = np.nonzero(ink > INK_FRACTION * 255.0)
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = MNIST_DIGIT_BOX / max(digit.shape)
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))
    resized = Image.fromarray(digit.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    return _place_by_centre_of_mass(np.asarray(resized, dtype=np.float32))


def _place_by_centre_of_mass(digit: np.ndarray) -> np.ndarray:
    height, width = digit.shape
    mass = digit.sum()
    centre_y = (digit.sum(axis=1) @ np.arange(height)) / mass if mass else height / 2
    centre_x = (digit.sum(axis=0) @ np.arange(width)) / mass if mass else width / 2
    half = (MNIST_SIDE - 1) / 2  # the centre of a 28-pixel row, in pixel indices
    top = int(np.clip(round(half - centre_y), 0, MNIST_SIDE - height))
    left = int(np.clip(round(half - centre_x), 0, MNIST_SIDE - width))
    canvas = np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = digit
    return canvas
