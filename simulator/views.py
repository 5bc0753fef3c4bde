"""Particle orientations: uniform on the sphere, or concentrated about preferred views.

Angles are RELION's (degrees): the viewing direction of ``(rot, tilt)`` is
``(sin tilt · cos rot, sin tilt · sin rot, cos tilt)`` (``otf2d.simulator.projection.viewing_direction``);
psi, the in-plane angle, is always uniform.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from otf2d.simulator.projection import viewing_direction

FloatArray = npt.NDArray[np.float64]

#: The two preferred views of ``--preferred-orientation`` as RELION ``(rot, tilt)``, degrees.
PREFERRED_VIEWS_DEGREES: tuple[tuple[float, float], ...] = ((30.0, 50.0), (-120.0, 110.0))


def direction_to_angles(direction: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """RELION ``(rot, tilt)`` in degrees of unit viewing directions ``(n, 3)`` given as ``(x, y, z)``."""
    d = np.atleast_2d(np.asarray(direction, dtype=np.float64))
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    rot = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    tilt = np.degrees(np.arccos(np.clip(d[:, 2], -1.0, 1.0)))
    return rot, tilt


def uniform_views(n: int, rng: np.random.Generator) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``n`` views uniform on the sphere with uniform psi: ``(rot, tilt, psi)``, degrees."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(-180.0, 180.0, n)
    return rot, tilt, psi


def views_near(
    direction: npt.ArrayLike, spread_degrees: float, n: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """``(rot, tilt)`` of ``n`` directions scattered about ``direction``.

    The offset from ``direction`` is a 2D Gaussian in its tangent plane with ``spread_degrees``
    per axis, so the angle to it follows a Rayleigh law (≈ 96 % within 2.5 spreads).
    """
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    offset = rng.normal(0.0, np.radians(spread_degrees), size=(n, 2))
    angle = np.linalg.norm(offset, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(angle[:, None] > 0, offset / angle[:, None], 0.0)
    tangent = unit[:, :1] * e1 + unit[:, 1:] * e2
    moved = np.cos(angle)[:, None] * d + np.sin(angle)[:, None] * tangent
    return direction_to_angles(moved)


def preferred_views(
    n: int,
    rng: np.random.Generator,
    *,
    fractions: tuple[float, float],
    spread_degrees: float,
    views_degrees: tuple[tuple[float, float], ...] = PREFERRED_VIEWS_DEGREES,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``n`` views, a fraction about each preferred view and the rest uniform: ``(rot, tilt, psi)``.

    Parameters
    ----------
    n
        Number of views.
    rng
        Random generator.
    fractions
        Probability of the first and second preferred view (the rest is uniform).
    spread_degrees
        Gaussian spread per tangent axis about a preferred view.
    views_degrees
        The preferred views as ``(rot, tilt)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``rot``, ``tilt``, ``psi`` in degrees, each ``(n,)``.
    """
    rot, tilt, psi = uniform_views(n, rng)
    p = np.array([fractions[0], fractions[1], 1.0 - fractions[0] - fractions[1]])
    which = rng.choice(3, size=n, p=p)
    for k in (0, 1):
        sel = np.flatnonzero(which == k)
        direction = viewing_direction(*views_degrees[k])[0]
        rot[sel], tilt[sel] = views_near(direction, spread_degrees, len(sel), rng)
    return rot, tilt, psi


__all__ = ["PREFERRED_VIEWS_DEGREES", "direction_to_angles", "preferred_views", "uniform_views", "views_near"]
