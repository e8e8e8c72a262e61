"""The reference augmentations in NumPy: one implementation for every backend.

Each policy is two steps, kept apart so that they can be tested and reused:

1. ``sample(policy, rng, batch, image_shape)`` draws the random parameters of
   a batch from a ``numpy.random.Generator``: integer shifts, flip flags,
   rotation angles;
2. ``apply(policy, images, params)`` applies them to a batch of ``(B, H, W, C)``
   images (any dtype; uint8 stays uint8).

The geometry is the one of the ``tf.data`` path (`keras_tfkd.data` with
``engine="tf.data"``): every pixel reads its source pixel through the same
affine map, nearest neighbour, zeros outside the image, so the two paths draw
from the same distribution. The distributions (the reference code's
torchvision transforms):

=================  ==========================================================
policy             per image
=================  ==========================================================
``shift``          shift ``(dx, dy)`` uniform on the integers ``[-p, p]``
                   (zero fill; ``p = round(H / 14)``, at least 1: 1 px for 8x8
                   digits, 2 px for 28x28 Fashion-MNIST)
``cifar``          shift with ``p = 4`` (``RandomCrop(32, padding=4)``), then a
                   horizontal flip with probability 1/2, then a rotation
                   uniform in ``[-15, 15]`` degrees about the image centre
``tiny_imagenet``  rotation uniform in ``[-20, 20]`` degrees, then a flip
``imagenet``       a flip (the random-resized crop happens when each file is
                   read: `random_resized_crop`)
``none``           nothing
=================  ==========================================================

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> images = np.zeros((4, 32, 32, 3), np.uint8)
    >>> params = sample("cifar", rng, 4, (32, 32))
    >>> sorted(params)
    ['angle', 'flip', 'shift']
    >>> apply("cifar", images, params).shape
    (4, 32, 32, 3)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "POLICIES",
    "apply",
    "flip",
    "random_resized_crop",
    "resize_centre_crop",
    "rotate",
    "sample",
    "shift",
    "shift_pad",
]

#: Policy names (the same as `keras_tfkd.data.AUGMENTATIONS`).
POLICIES = ("none", "shift", "cifar", "tiny_imagenet", "imagenet")

CIFAR_PAD = 4
CIFAR_DEGREES = 15.0
TINY_IMAGENET_DEGREES = 20.0


def shift_pad(image_height: int) -> int:
    """The shift range ``p`` of the ``shift`` policy for images of this height.

    Example:
        >>> shift_pad(8), shift_pad(28)
        (1, 2)
    """
    return max(1, int(round(image_height / 14)))


def sample(policy: str, rng: np.random.Generator, batch: int, image_shape) -> dict:
    """Random parameters of one batch under ``policy``.

    Returns a dict with some of ``shift`` (int ``(B, 2)``, ``(dx, dy)``),
    ``flip`` (bool ``(B,)``) and ``angle`` (float ``(B,)``, degrees). The
    draws are made in that order from ``rng``.
    """
    height = int(image_shape[0])
    params = {}
    if policy in ("shift", "cifar"):
        pad = CIFAR_PAD if policy == "cifar" else shift_pad(height)
        params["shift"] = rng.integers(-pad, pad + 1, size=(batch, 2))
    if policy in ("cifar", "tiny_imagenet", "imagenet"):
        params["flip"] = rng.random(batch) < 0.5
    if policy in ("cifar", "tiny_imagenet"):
        degrees = CIFAR_DEGREES if policy == "cifar" else TINY_IMAGENET_DEGREES
        params["angle"] = rng.uniform(-degrees, degrees, size=batch)
    if policy not in POLICIES:
        raise ValueError(f"Unknown augmentation {policy!r}; valid: {POLICIES}")
    return params


def apply(policy: str, images: np.ndarray, params: dict) -> np.ndarray:
    """Apply the parameters drawn by `sample` to ``images`` ``(B, H, W, C)``.

    The order is the reference's: shift (crop), flip, rotation for ``cifar``;
    rotation, flip for ``tiny_imagenet``.
    """
    if policy not in POLICIES:
        raise ValueError(f"Unknown augmentation {policy!r}; valid: {POLICIES}")
    if policy == "tiny_imagenet":
        return flip(rotate(images, params["angle"]), params["flip"])
    if "shift" in params:
        images = shift(images, params["shift"])
    if "flip" in params:
        images = flip(images, params["flip"])
    if "angle" in params:
        images = rotate(images, params["angle"])
    return images


def shift(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shift each image: output pixel ``(x, y)`` reads ``(x + dx, y + dy)``.

    ``offsets`` is ``(B, 2)`` integer ``(dx, dy)``; pixels read from outside
    the image are 0. This is zero padding followed by a crop.

    Example:
        >>> x = np.arange(9).reshape(1, 3, 3, 1)
        >>> shift(x, np.array([[1, 0]]))[0, :, :, 0]
        array([[1, 2, 0],
               [4, 5, 0],
               [7, 8, 0]])
    """
    images = np.asarray(images)
    offsets = np.asarray(offsets, dtype=np.int64)
    batch, height, width = images.shape[:3]
    pad = int(np.max(np.abs(offsets))) if offsets.size else 0
    if pad == 0:
        return images.copy()
    padded = np.zeros(
        (batch, height + 2 * pad, width + 2 * pad, *images.shape[3:]), images.dtype
    )
    padded[:, pad : pad + height, pad : pad + width] = images
    rows = np.arange(height)[None, :] + pad + offsets[:, 1:2]  # (B, H)
    cols = np.arange(width)[None, :] + pad + offsets[:, 0:1]  # (B, W)
    b = np.arange(batch)[:, None, None]
    return padded[b, rows[:, :, None], cols[:, None, :]]


def flip(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mirror (left-right) the images where ``mask`` is True.

    Example:
        >>> x = np.arange(4).reshape(2, 1, 2, 1)
        >>> flip(x, np.array([True, False]))[:, 0, :, 0]
        array([[1, 0],
               [2, 3]])
    """
    out = np.array(images, copy=True)
    mask = np.asarray(mask, dtype=bool)
    out[mask] = out[mask][:, :, ::-1]
    return out


def _round_half_away(values: np.ndarray) -> np.ndarray:
    # C's std::round, as TensorFlow's nearest-neighbour sampling uses.
    return np.copysign(np.floor(np.abs(values) + 0.5), values)


def rotate(images: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Rotate each image by its angle about the centre (nearest, zero fill).

    Output pixel ``(x, y)`` reads the input at ``R(angle) (x - c) + c`` with
    ``c = ((W - 1) / 2, (H - 1) / 2)``, rounded to the nearest pixel; pixels
    read from outside the image are 0. A positive angle turns the picture
    counter-clockwise as displayed (rows growing downwards).

    Example:
        >>> x = np.arange(4).reshape(1, 2, 2, 1)
        >>> rotate(x, np.array([90.0]))[0, :, :, 0]
        array([[1, 3],
               [0, 2]])
    """
    images = np.asarray(images)
    angle = np.asarray(degrees, dtype=np.float32) * np.float32(math.pi / 180.0)
    batch, height, width = images.shape[:3]
    cx, cy = np.float32((width - 1) / 2.0), np.float32((height - 1) / 2.0)
    ys = (np.arange(height, dtype=np.float32) - cy)[None, :, None]
    xs = (np.arange(width, dtype=np.float32) - cx)[None, None, :]
    cos = np.cos(angle)[:, None, None]
    sin = np.sin(angle)[:, None, None]
    src_x = _round_half_away(cos * xs - sin * ys + cx).astype(np.int32)
    src_y = _round_half_away(sin * xs + cos * ys + cy).astype(np.int32)
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    # One flat gather: pixel (b, y, x) is row (b * H + y) * W + x.
    flat = (np.arange(batch, dtype=np.int32)[:, None, None] * height + src_y) * width
    flat = np.where(inside, flat + src_x, 0)
    out = images.reshape(batch * height * width, -1)[flat.ravel()]
    out[~inside.ravel()] = 0
    return out.reshape(images.shape)


# ---------------------------------------------------------------- image files
def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int],
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    attempts: int = 10,
) -> np.ndarray:
    """torchvision's ``RandomResizedCrop``: a random box, resized to ``size``.

    The box covers a fraction of the area uniform in ``scale`` and has an
    aspect ratio log-uniform in ``ratio``; after ``attempts`` boxes that do
    not fit, the centre crop of the nearest admissible ratio is used. The
    crop is resized with PIL's antialiased bilinear filter. ``image`` is
    uint8 ``(H, W, 3)``; the result is uint8 ``(size[0], size[1], 3)``.
    """
    height, width = image.shape[:2]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return _resize(image[top : top + h, left : left + w], size)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return _resize(image[top : top + h, left : left + w], size)


def resize_centre_crop(
    image: np.ndarray, resize: int, size: tuple[int, int]
) -> np.ndarray:
    """Resize the short side to ``resize``, then take the centre ``size`` crop."""
    height, width = image.shape[:2]
    scale = resize / min(height, width)
    new = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
    image = _resize(image, new)
    top = max(0, (new[0] - size[0]) // 2)
    left = max(0, (new[1] - size[1]) // 2)
    crop = image[top : top + size[0], left : left + size[1]]
    if crop.shape[:2] != tuple(size):  # smaller than the crop: pad with zeros
        out = np.zeros((size[0], size[1], image.shape[2]), image.dtype)
        out[: crop.shape[0], : crop.shape[1]] = crop
        crop = out
    return crop


def _resize(image: np.ndarray, size) -> np.ndarray:
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    resized = Image.fromarray(image).resize(
        (int(size[1]), int(size[0])), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def read_image(path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to uint8 RGB ``(H, W, 3)``; resize it to ``size``.

    Example:
        >>> read_image("photo.jpg", (64, 64)).shape  # doctest: +SKIP
        (64, 64, 3)
    """
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    if size is not None:
        array = _resize(array, size)
    return array
