"""Small real-space image geometry for class averages: centring, rotation, polar and radial resampling.

Conventions (RELION's): images are indexed ``[y, x]`` and their centre is the pixel
``(box // 2, box // 2)``. All functions are pure NumPy and work on a stack ``(n, h, w)`` or on a
single image ``(h, w)`` where stated. Resampling is bilinear; samples falling outside the image
read as 0.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError

FloatArray = npt.NDArray[np.float64]


def image_centre(shape: tuple[int, ...]) -> tuple[float, float]:
    """``(cy, cx)``: the centre pixel ``(h // 2, w // 2)`` of images of ``shape`` ``(..., h, w)``."""
    return float(shape[-2] // 2), float(shape[-1] // 2)


def _stack(images: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(None, f"expected images (n, h, w) or (h, w), got shape {arr.shape}")
    return arr


def bilinear_sample(images: npt.ArrayLike, y: npt.ArrayLike, x: npt.ArrayLike) -> FloatArray:
    """Sample every image at the same fractional coordinates.

    Parameters
    ----------
    images
        ``(n, h, w)`` (or ``(h, w)``) real images.
    y, x
        Row and column coordinates in pixels, broadcast together to any shape ``S``.

    Returns
    -------
    numpy.ndarray
        ``(n, *S)`` float64; points outside the image contribute 0.
    """
    stack = _stack(images)
    n, h, w = stack.shape
    yy, xx = np.broadcast_arrays(np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64))
    shape = yy.shape
    yy, xx = yy.ravel(), xx.ravel()
    y0 = np.floor(yy).astype(np.int64)
    x0 = np.floor(xx).astype(np.int64)
    fy = yy - y0
    fx = xx - x0
    flat = stack.reshape(n, h * w)
    out = np.zeros((n, yy.size), dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yi = y0 + dy
            xi = x0 + dx
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            weight = np.where(inside, wy * wx, 0.0)
            index = np.where(inside, yi * w + xi, 0)
            out += np.take(flat, index, axis=1) * weight
    return out.reshape((n, *shape))


def rotate_images(images: npt.ArrayLike, angle_degrees: float, *, mirror: bool = False) -> FloatArray:
    """Rotate images about their centre pixel (bilinear).

    The output at ``p`` is the input at ``R(-angle) · p`` (about the centre), i.e. the content turns
    by ``+angle`` from +x towards +y in array coordinates. With ``mirror`` the image is first
    flipped along x (``x → -x`` about the centre).

    Parameters
    ----------
    images
        ``(n, h, w)`` or ``(h, w)``.
    angle_degrees
        Rotation angle in degrees.
    mirror
        Flip along x before rotating.

    Returns
    -------
    numpy.ndarray
        Same shape as ``images``, float64.
    """
    arr = np.asarray(images, dtype=np.float64)
    stack = _stack(arr)
    cy, cx = image_centre(stack.shape)
    yy, xx = np.mgrid[: stack.shape[1], : stack.shape[2]].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    a = np.radians(angle_degrees)
    src_x = np.cos(a) * dx + np.sin(a) * dy
    src_y = -np.sin(a) * dx + np.cos(a) * dy
    if mirror:
        src_x = -src_x
    out = bilinear_sample(stack, cy + src_y, cx + src_x)
    return out.reshape(arr.shape)


def shift_images(images: npt.ArrayLike, shift_y_pixels: npt.ArrayLike, shift_x_pixels: npt.ArrayLike) -> FloatArray:
    """Shift each image by a (sub-pixel) amount with a Fourier phase ramp (periodic).

    Parameters
    ----------
    images
        ``(n, h, w)`` or ``(h, w)``.
    shift_y_pixels, shift_x_pixels
        ``(n,)`` or scalar: content at ``p`` moves to ``p + shift``.

    Returns
    -------
    numpy.ndarray
        Same shape as ``images``, float64.
    """
    arr = np.asarray(images, dtype=np.float64)
    stack = _stack(arr)
    n, h, w = stack.shape
    sy = np.broadcast_to(np.asarray(shift_y_pixels, dtype=np.float64), (n,))
    sx = np.broadcast_to(np.asarray(shift_x_pixels, dtype=np.float64), (n,))
    fy = np.fft.fftfreq(h)[None, :, None]
    fx = np.fft.rfftfreq(w)[None, None, :]
    phase = np.exp(-2j * np.pi * (fy * sy[:, None, None] + fx * sx[:, None, None]))
    out = np.fft.irfft2(np.fft.rfft2(stack) * phase, s=(h, w))
    return np.asarray(out).reshape(arr.shape)


def radius_grid(shape: tuple[int, ...]) -> FloatArray:
    """``(h, w)`` distance of each pixel from the centre pixel, in pixels."""
    h, w = shape[-2], shape[-1]
    cy, cx = image_centre(shape)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    return np.asarray(np.hypot(yy - cy, xx - cx))


def radial_profiles(images: npt.ArrayLike, n_bins: int, max_radius_pixels: float) -> FloatArray:
    """Rotational averages of each image in ``n_bins`` rings of equal width out to ``max_radius_pixels``.

    Returns
    -------
    numpy.ndarray
        ``(n, n_bins)`` float64: the mean of the pixels in each ring (0 for an empty ring).
    """
    stack = _stack(images)
    r = radius_grid(stack.shape)
    bins = np.floor(r / max_radius_pixels * n_bins).astype(np.int64)
    keep = bins < n_bins
    idx = bins[keep]
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sums = np.stack([np.bincount(idx, weights=img[keep], minlength=n_bins) for img in stack])
    return np.asarray(np.where(counts > 0, sums / np.maximum(counts, 1.0), 0.0))


def polar_transform(
    images: npt.ArrayLike,
    *,
    n_radii: int,
    n_angles: int,
    max_radius_pixels: float,
    centres_yx: npt.ArrayLike | None = None,
) -> FloatArray:
    """Resample images on a polar grid.

    Ring ``j`` has radius ``(j + 0.5) · max_radius / n_radii``; angle ``m`` is ``2π m / n_angles``
    measured from +x towards +y. A rotation of the image by ``+α`` (:func:`rotate_images`) is a
    circular shift of the angle axis by ``+α · n_angles / 360``.

    Parameters
    ----------
    images
        ``(n, h, w)`` or ``(h, w)``.
    n_radii, n_angles
        Grid size.
    max_radius_pixels
        Outer radius sampled.
    centres_yx
        ``(n, 2)`` centre of each image in pixels; default the centre pixel.

    Returns
    -------
    numpy.ndarray
        ``(n, n_radii, n_angles)`` float64.
    """
    stack = _stack(images)
    n = stack.shape[0]
    if centres_yx is None:
        centres = np.tile(np.array(image_centre(stack.shape)), (n, 1))
    else:
        centres = np.asarray(centres_yx, dtype=np.float64).reshape(n, 2)
    radii = (np.arange(n_radii) + 0.5) * (max_radius_pixels / n_radii)
    theta = 2.0 * np.pi * np.arange(n_angles) / n_angles
    dy = radii[:, None] * np.sin(theta)[None, :]
    dx = radii[:, None] * np.cos(theta)[None, :]
    out = np.empty((n, n_radii, n_angles), dtype=np.float64)
    for i in range(n):
        out[i] = bilinear_sample(stack[i], centres[i, 0] + dy, centres[i, 1] + dx)[0]
    return out


__all__ = [
    "bilinear_sample",
    "image_centre",
    "polar_transform",
    "radial_profiles",
    "radius_grid",
    "rotate_images",
    "shift_images",
]
