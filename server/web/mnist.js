/* A picture made MNIST-like in the page: the recipe of client/images.py, step for step,
 * with Pillow's integer arithmetic where the client uses Pillow, so that the page sends the
 * models the tensor that `zoo infer` would send for the same picture.
 *
 *   1. 8-bit grayscale (Pillow's ITU-R 601-2 luma in 16-bit fixed point); transparent
 *      pixels are laid on white first (the caller draws the picture on white).
 *   2. Inverted when the median of the border pixels is above mid-grey.
 *   3. A 28 x 28 picture is used as is. Any other size: background level subtracted,
 *      contrast stretched to 0..255, cropped to the digit's bounding box (pixels above a
 *      fifth of the maximum), resized into 20 x 20 keeping the aspect ratio with Pillow's
 *      Lanczos filter, and placed on a black 28 x 28 canvas with the digit's centre of mass
 *      at the centre (LeCun et al., 1998, "Gradient-based learning applied to document
 *      recognition": how MNIST's own digits were made).
 *   4. Scaled to [0, 1].
 *
 * Float32 steps are done in float32 (Math.fround) where numpy does them in float32, and
 * Python's round() (half to even) is used where the client rounds.
 */
(function (global) {
  "use strict";

  const MNIST_SIDE = 28;
  const MNIST_DIGIT_BOX = 20;
  const INK_FRACTION = 0.2;
  const MID_GREY = 127.5;
  // Pillow's 8-bit resampling keeps its filter weights as integers with this many
  // fraction bits (32 - 8 - 2: 8 for the pixel, 2 for overshoot of negative lobes).
  const PILLOW_PRECISION_BITS = 22;
  const PILLOW_ONE = 1 << PILLOW_PRECISION_BITS;
  const LANCZOS_SUPPORT = 3;

  /** Python's round(): to the nearest integer, halves to the even one. */
  function roundHalfEven(x) {
    const floor = Math.floor(x);
    const rest = x - floor;
    if (rest > 0.5) return floor + 1;
    if (rest < 0.5) return floor;
    return floor % 2 === 0 ? floor : floor + 1;
  }

  /** Pillow's convert("L") of RGBA bytes (alpha already laid on white): integer levels. */
  function grayscale(rgba, width, height) {
    const gray = new Float32Array(width * height);
    for (let i = 0, j = 0; i < gray.length; i += 1, j += 4) {
      gray[i] = (rgba[j] * 19595 + rgba[j + 1] * 38470 + rgba[j + 2] * 7471 + 0x8000) >>> 16;
    }
    return gray;
  }

  /** numpy's median of the first and last rows and columns (corners counted twice). */
  function borderMedian(gray, width, height) {
    const border = [];
    for (let x = 0; x < width; x += 1) border.push(gray[x], gray[(height - 1) * width + x]);
    for (let y = 0; y < height; y += 1) border.push(gray[y * width], gray[y * width + width - 1]);
    border.sort((a, b) => a - b);
    const middle = border.length >> 1;
    if (border.length % 2 === 1) return border[middle];
    return Math.fround((border[middle - 1] + border[middle]) / 2);
  }

  function lanczos(x) {
    if (x < -LANCZOS_SUPPORT || x >= LANCZOS_SUPPORT) return 0;
    return sinc(x) * sinc(x / LANCZOS_SUPPORT);
  }

  function sinc(x) {
    if (x === 0) return 1;
    const angle = x * Math.PI;
    return Math.sin(angle) / angle;
  }

  /** Pillow's precompute_coeffs + normalize_coeffs_8bpc: for each output pixel, the first
   *  input pixel it reads and its integer weights. */
  function resampleWeights(inSize, outSize) {
    const scale = inSize / outSize;
    const filterScale = Math.max(scale, 1);
    const support = LANCZOS_SUPPORT * filterScale;
    const inverseFilterScale = 1 / filterScale; // Pillow multiplies by it, not divides
    const taps = [];
    for (let out = 0; out < outSize; out += 1) {
      const centre = (out + 0.5) * scale;
      const first = Math.max(0, Math.trunc(centre - support + 0.5));
      const end = Math.min(inSize, Math.trunc(centre + support + 0.5));
      const weights = [];
      let total = 0;
      for (let x = first; x < end; x += 1) {
        const w = lanczos((x - centre + 0.5) * inverseFilterScale);
        weights.push(w);
        total += w;
      }
      const fixed = weights.map((w) => {
        const normalised = total !== 0 ? w / total : w;
        return Math.trunc(normalised < 0 ? normalised * PILLOW_ONE - 0.5 : normalised * PILLOW_ONE + 0.5);
      });
      taps.push({ first, weights: fixed });
    }
    return taps;
  }

  function clip8(sum) {
    return Math.min(255, Math.max(0, Math.floor(sum / PILLOW_ONE)));
  }

  /** One pass of Pillow's 8-bit resampling along x (horizontal) or y. */
  function resamplePass(pixels, width, height, outSize, horizontal) {
    const taps = resampleWeights(horizontal ? width : height, outSize);
    const outWidth = horizontal ? outSize : width;
    const outHeight = horizontal ? height : outSize;
    const out = new Uint8Array(outWidth * outHeight);
    for (let y = 0; y < outHeight; y += 1) {
      for (let x = 0; x < outWidth; x += 1) {
        const tap = taps[horizontal ? x : y];
        let sum = PILLOW_ONE / 2;
        for (let k = 0; k < tap.weights.length; k += 1) {
          const source = horizontal
            ? pixels[y * width + tap.first + k]
            : pixels[(tap.first + k) * width + x];
          sum += source * tap.weights[k];
        }
        out[y * outWidth + x] = clip8(sum);
      }
    }
    return out;
  }

  /** Pillow's Image.resize(size, LANCZOS) of an 8-bit image: two passes, each rounded to
   *  8 bits. Pillow 13 runs the vertical pass first when the height shrinks by more than
   *  twice as many pixels as the width (earlier versions always ran the horizontal first);
   *  the order changes the result by a grey level here and there. */
  function resizeLanczos(pixels, width, height, outWidth, outHeight) {
    const shrinkY = height - outHeight;
    const verticalFirst = shrinkY > 0 && shrinkY > (width - outWidth) * 2;
    let current = pixels;
    if (verticalFirst) {
      current = resamplePass(current, width, height, outHeight, false);
      if (outWidth !== width) current = resamplePass(current, width, outHeight, outWidth, true);
      return current;
    }
    if (outWidth !== width) current = resamplePass(current, width, height, outWidth, true);
    if (outHeight !== height) current = resamplePass(current, outWidth, height, outHeight, false);
    return current;
  }

  /** Crop to the digit, scale it into 20 x 20, centre its mass on a 28 x 28 canvas. */
  function fitLikeMnist(gray, width, height) {
    const background = borderMedian(gray, width, height);
    const ink = new Float32Array(gray.length);
    let max = 0;
    for (let i = 0; i < gray.length; i += 1) {
      ink[i] = Math.max(0, gray[i] - background);
      if (ink[i] > max) max = ink[i];
    }
    if (max <= 0) return new Float32Array(MNIST_SIDE * MNIST_SIDE);
    const stretch = Math.fround(255 / max);
    let top = height, bottom = -1, left = width, right = -1;
    for (let y = 0; y < height; y += 1) {
      for (let x = 0; x < width; x += 1) {
        const i = y * width + x;
        ink[i] = Math.fround(ink[i] * stretch);
        if (ink[i] > INK_FRACTION * 255) {
          top = Math.min(top, y); bottom = Math.max(bottom, y);
          left = Math.min(left, x); right = Math.max(right, x);
        }
      }
    }
    const digitWidth = right - left + 1;
    const digitHeight = bottom - top + 1;
    const digit = new Uint8Array(digitWidth * digitHeight);
    for (let y = 0; y < digitHeight; y += 1) {
      for (let x = 0; x < digitWidth; x += 1) {
        digit[y * digitWidth + x] = Math.trunc(ink[(top + y) * width + left + x]);
      }
    }
    const scale = MNIST_DIGIT_BOX / Math.max(digitWidth, digitHeight);
    const outWidth = Math.max(1, roundHalfEven(digitWidth * scale));
    const outHeight = Math.max(1, roundHalfEven(digitHeight * scale));
    const resized = resizeLanczos(digit, digitWidth, digitHeight, outWidth, outHeight);
    return placeByCentreOfMass(resized, outWidth, outHeight);
  }

  function placeByCentreOfMass(digit, width, height) {
    let mass = 0, momentY = 0, momentX = 0;
    for (let y = 0; y < height; y += 1) {
      for (let x = 0; x < width; x += 1) {
        const value = digit[y * width + x];
        mass += value; momentY += value * y; momentX += value * x;
      }
    }
    const centreY = mass ? momentY / mass : height / 2;
    const centreX = mass ? momentX / mass : width / 2;
    const half = (MNIST_SIDE - 1) / 2; // the centre of a 28-pixel row, in pixel indices
    const top = Math.min(Math.max(roundHalfEven(half - centreY), 0), MNIST_SIDE - height);
    const left = Math.min(Math.max(roundHalfEven(half - centreX), 0), MNIST_SIDE - width);
    const canvas = new Float32Array(MNIST_SIDE * MNIST_SIDE);
    for (let y = 0; y < height; y += 1) {
      for (let x = 0; x < width; x += 1) {
        canvas[(top + y) * MNIST_SIDE + left + x] = digit[y * width + x];
      }
    }
    return canvas;
  }

  /** RGBA bytes (ImageData.data, alpha already laid on white) -> Float32Array(784) in
   *  [0, 1], row-major, white digit on black. */
  function toTensor(rgba, width, height) {
    let gray = grayscale(rgba, width, height);
    if (borderMedian(gray, width, height) > MID_GREY) gray = gray.map((v) => 255 - v);
    if (width !== MNIST_SIDE || height !== MNIST_SIDE) gray = fitLikeMnist(gray, width, height);
    return gray.map((v) => v / 255);
  }

  /** The pixels of a canvas (drawn on an opaque background) as the models' input. */
  function fromCanvas(canvas) {
    const context = canvas.getContext("2d", { willReadFrequently: true });
    const image = context.getImageData(0, 0, canvas.width, canvas.height);
    return toTensor(image.data, canvas.width, canvas.height);
  }

  /** A decoded picture (ImageBitmap, <img>) laid on white at its own size: its RGBA bytes. */
  function pictureOnWhite(picture) {
    const canvas = document.createElement("canvas");
    canvas.width = picture.width;
    canvas.height = picture.height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(picture, 0, 0);
    return context.getImageData(0, 0, canvas.width, canvas.height);
  }

  /** Decode a picture file (a Blob) as Pillow does: no colour management, alpha kept. */
  function decodePicture(blob) {
    return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  }

  /** A picture file (PNG, JPEG, ...) as the models' input: {tensor, picture}. */
  async function fromBlob(blob) {
    const picture = await decodePicture(blob);
    const image = pictureOnWhite(picture);
    return { tensor: toTensor(image.data, image.width, image.height), picture };
  }

  global.ZooMnist = Object.freeze({
    MNIST_SIDE, toTensor, fromCanvas, fromBlob, roundHalfEven, resizeLanczos,
  });
})(globalThis);
