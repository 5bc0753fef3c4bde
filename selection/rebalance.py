"""Flatten the view distribution: group good classes into views, drop particles from the big views.

1. The chosen (good, non-empty) classes are grouped into views exactly as the distinct-views
   metric groups them (``otf2d.monitoring.views.view_distribution``: rotation- and mirror-invariant
   similarity of the class averages, average-linkage clustering at ``threshold``).
2. Each view may keep at most ``cap`` particles. With a ``factor`` F in [0, 1] the cap follows
   cryoSPARC's "Rebalance 2D Classes" rule: after rebalancing, the smallest view is at least F
   times the largest, so ``cap = floor(smallest / F)`` — F = 0 keeps every particle, F = 1 makes
   every view as large as the smallest. ``max_view_particles`` sets the cap directly instead.
   Views smaller than ``min_view_particles`` are kept whole and do not set the cap, so a handful
   of stray particles cannot decide the size of every view.
3. In every view above the cap, ``cap`` particles are drawn uniformly at random without
   replacement (``numpy.random.default_rng(seed)``, views in order), whatever their class.

Particles left out before counting (``eligible`` False: ``otf2d rebalance --auto`` leaves out the
junk hiding in kept classes, as ``otf2d select --auto`` does) count in no view and are never kept.

The view distribution before and after is summarised by its Shannon entropy ``H`` (nats) and the
effective number of views ``exp(H)`` (``otf2d.monitoring.views.distribution_entropy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.quality import mask_radius_pixels
from otf2d.monitoring.views import SAME_VIEW_SIMILARITY, ViewReport, distribution_entropy, view_distribution

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Default: views with fewer particles are kept whole and do not set the cap.
DEFAULT_MIN_VIEW_PARTICLES = 50


@dataclass(frozen=True)
class ViewBalance:
    """The views of the chosen classes and the particles kept from each.

    Attributes
    ----------
    views
        The view grouping (``class_view``: view of each class, -1 for classes not chosen; views
        numbered 0.. by particles, largest first; ``view_classes``: class numbers per view).
    before, after
        ``(V,)`` particles per view before and after rebalancing.
    cap
        Most particles a view keeps, or ``None`` when nothing is dropped.
    keep_index
        ``(m,)`` positions (snapshot order, ascending) of the particles kept.
    """

    views: ViewReport
    before: IntArray
    after: IntArray
    cap: int | None
    keep_index: IntArray

    @property
    def entropy_before(self) -> float:
        """Shannon entropy (nats) of the view distribution before."""
        return distribution_entropy(self.before)[0]

    @property
    def entropy_after(self) -> float:
        """Shannon entropy (nats) of the view distribution after."""
        return distribution_entropy(self.after)[0]

    @property
    def effective_views_before(self) -> float:
        """``exp(H)`` before."""
        return distribution_entropy(self.before)[2]

    @property
    def effective_views_after(self) -> float:
        """``exp(H)`` after."""
        return distribution_entropy(self.after)[2]


def view_cap(
    view_particles: npt.ArrayLike,
    factor: float,
    *,
    min_view_particles: int = DEFAULT_MIN_VIEW_PARTICLES,
    max_view_particles: int | None = None,
) -> int | None:
    """The most particles any view keeps (see the module docstring), or ``None`` for no cap.

    Parameters
    ----------
    view_particles
        ``(V,)`` particles per view.
    factor
        Rebalance factor in [0, 1].
    min_view_particles
        Views smaller than this do not set the cap.
    max_view_particles
        A cap given directly (wins over ``factor``).

    Raises
    ------
    InputError
        ``factor`` outside [0, 1], or ``max_view_particles`` below 1.
    """
    if not 0.0 <= factor <= 1.0:
        raise InputError(None, f"--factor must lie in [0, 1], got {factor}")
    if max_view_particles is not None:
        if max_view_particles < 1:
            raise InputError(None, f"--max-view-particles must be >= 1, got {max_view_particles}")
        return int(max_view_particles)
    counts = np.asarray(view_particles, dtype=np.int64)
    eligible = counts[(counts >= max(min_view_particles, 1))]
    if factor == 0.0 or eligible.size == 0:
        return None
    return max(1, math.floor(int(eligible.min()) / factor + 1e-9))


def draw_kept(particle_view: npt.ArrayLike, targets: npt.ArrayLike, seed: int) -> IntArray:
    """Positions of the particles kept: ``targets[v]`` drawn at random from the members of each view ``v``.

    Parameters
    ----------
    particle_view
        ``(n,)`` view of each particle, -1 for particles not in any chosen view (never kept).
    targets
        ``(V,)`` particles to keep per view (at most its members).
    seed
        Seed of ``numpy.random.default_rng``; the same seed gives the same particles.

    Returns
    -------
    numpy.ndarray
        ``(m,)`` int64 positions, ascending.
    """
    views = np.asarray(particle_view, dtype=np.int64)
    want = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    kept: list[IntArray] = []
    for v, target in enumerate(want):
        members = np.flatnonzero(views == v)
        if target >= len(members):
            kept.append(members)
        else:
            kept.append(np.sort(rng.choice(members, size=int(target), replace=False)))
    return np.sort(np.concatenate(kept)).astype(np.int64) if kept else np.zeros(0, dtype=np.int64)


def group_views(
    snapshot: ClassSnapshot,
    chosen_classes: npt.ArrayLike,
    *,
    threshold: float = SAME_VIEW_SIMILARITY,
    eligible: npt.ArrayLike | None = None,
) -> ViewReport:
    """The chosen classes grouped into views (``otf2d.monitoring.views.view_distribution``).

    Parameters
    ----------
    snapshot
        Class averages and particles.
    chosen_classes
        ``(K,)`` bool, True for the classes to group (the good ones).
    threshold
        Similarity at or above which two classes show the same view.
    eligible
        ``(n,)`` bool, the particles that count (``None``: all).
    """
    _, h, w = snapshot.averages.shape
    radius = mask_radius_pixels(snapshot.parameters, max(h, w), snapshot.pixel_size_angstrom)
    classes = np.asarray(snapshot.particles.class_index, dtype=np.int64)
    if eligible is not None:
        classes = classes[np.asarray(eligible, dtype=bool)]
    counts = np.bincount(classes, minlength=snapshot.n_classes)
    return view_distribution(
        snapshot.averages, counts, np.asarray(chosen_classes, dtype=bool), radius, threshold=threshold
    )


def rebalance_views(
    snapshot: ClassSnapshot,
    chosen_classes: npt.ArrayLike,
    factor: float,
    *,
    seed: int = 0,
    min_view_particles: int = DEFAULT_MIN_VIEW_PARTICLES,
    max_view_particles: int | None = None,
    threshold: float = SAME_VIEW_SIMILARITY,
    eligible: npt.ArrayLike | None = None,
) -> ViewBalance:
    """Group the chosen classes into views and drop particles from the over-represented ones.

    Parameters
    ----------
    snapshot
        Class averages ``(K, h, w)`` and every particle's class.
    chosen_classes
        ``(K,)`` bool, the good classes; particles of other classes are not kept.
    factor
        Rebalance factor in [0, 1] (0 keeps all; 1 makes the views equal).
    seed
        Seed of the random draw.
    min_view_particles, max_view_particles
        See :func:`view_cap`.
    threshold
        Similarity at or above which two classes show the same view.
    eligible
        ``(n,)`` bool: the particles that may be kept (``None``: all); the others count in no view.

    Returns
    -------
    ViewBalance
        Views, particles per view before and after, the cap and the particles kept.

    Raises
    ------
    InputError
        ``factor`` outside [0, 1], or no chosen class with particles.
    """
    chosen = np.asarray(chosen_classes, dtype=bool)
    if chosen.shape != (snapshot.n_classes,):
        raise InputError(None, f"chosen_classes must have shape ({snapshot.n_classes},), got {chosen.shape}")
    n = len(snapshot.particles)
    allowed = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if allowed.shape != (n,):
        raise InputError(None, f"eligible must have shape ({n},), got {allowed.shape}")
    report = group_views(snapshot, chosen, threshold=threshold, eligible=allowed)
    if report.n_views == 0:
        raise InputError(None, "no chosen class holds particles: nothing to rebalance")
    before = np.asarray(report.view_particles, dtype=np.int64)
    cap = view_cap(before, factor, min_view_particles=min_view_particles, max_view_particles=max_view_particles)
    targets = before if cap is None else np.minimum(before, cap)
    class_view = report.class_view[np.asarray(snapshot.particles.class_index, dtype=np.int64)]
    particle_view = np.where(allowed, class_view, -1)
    keep = draw_kept(particle_view, targets, seed)
    after = np.bincount(particle_view[keep], minlength=report.n_views).astype(np.int64)
    return ViewBalance(views=report, before=before, after=after, cap=cap, keep_index=keep)


__all__ = [
    "DEFAULT_MIN_VIEW_PARTICLES",
    "ViewBalance",
    "draw_kept",
    "group_views",
    "rebalance_views",
    "view_cap",
]
