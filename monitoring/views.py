"""Distinct views: good classes clustered by rotation-invariant similarity, and the view distribution.

A 2D classification often spends several classes on one view (the same projection at different
in-plane angles, or mirrored, which is the projection from the opposite direction and carries the
same information). To count *views*, not classes:

1. each good class average is centred on the centre of mass of its density
   (:func:`otf2d.monitoring.quality.density_centres_yx`), low-passed (Gaussian, ``lowpass_pixels``) and
   resampled on a polar grid out to the mask radius;
2. each ring's mean is removed (the rotational average, which every compact particle shares, so
   that only the angular structure is compared) and the image is normalised (area-weighted);
3. the similarity of two classes is the largest normalised cross-correlation over all in-plane
   rotations (one FFT along the angle axis), and over the mirror too (:func:`rotational_similarity`);
4. classes are merged by average-linkage clustering while the similarity of the closest clusters
   is at least ``threshold`` (:func:`cluster_views`); the average weights each class by its
   particles (:func:`view_distribution`), so that a big class, whose average is well determined,
   counts more than a small noisy one.

Calibration on the virtual microscope's phantom (box 64, 4 Å/px, SNR 0.05; class averages from
truth, 14 views, the second copy of each view from other particles and turned in-plane): the same
view scores at least 0.87 (median 0.92) with 60 particles per class and 0.96 (median 0.98) with
200; views more than 40° apart score a median 0.72, 90th percentile 0.85, at most 0.90 — some
views of a compact protein do look alike in 2D. The default threshold 0.85 therefore merges the
same view reliably once classes hold ~60 particles, and views that look the same.

On the classes of real classification runs (``benchmarks/verdict_timelines.py``: the phantom at
16 Å, K = 30, 4,000 particles) the classes are less pure than averages built from truth — 65–90 %
of a big class's particles come from its main view — and the separation is narrower: pairs of
classes (≥ 30 particles, ≥ 70 % one view) of the same view score 0.85–0.96, of different views at
most 0.83 (median 0.66); small or mixed classes score lower with everything. With the unweighted
average, one small mixed class was enough to keep the classes of the preferred view of the
preferred-orientation grid apart (mean similarity between the two halves 0.83) and its largest view
fell from 75 % to 40 % of the good particles from one snapshot to the next; weighted by particles,
the halves score 0.86 and stay one view, while the five views of the good grid stay apart. The
classifier also splits a view over several classes that do not look alike enough to be merged, so
on real runs the number of distinct views is an upper bound (11 found for 5 true views); the share
of the largest view is the robust number (77 % measured for 72 % true on the preferred grid).

The view distribution is the number of good particles per view. Its Shannon entropy ``H`` gives
the *effective number of views* ``exp(H)`` and the evenness ``H / ln(V)`` over the ``V`` views
(0 when there is a single view); the share of the largest view is the plainest warning of
preferred orientation. The same entropy over all classes gives the class-distribution entropy
ratio ``H / ln(K)`` and the effective number of classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError
from otf2d.monitoring.image_geometry import polar_transform
from otf2d.monitoring.quality import density_centres_yx

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Default similarity at or above which two classes show the same view.
SAME_VIEW_SIMILARITY = 0.85
#: Default Gaussian low-pass (real-space σ, pixels) applied before comparing.
LOWPASS_PIXELS = 1.0
#: Default number of in-plane angles of the polar grid.
POLAR_ANGLES = 128
#: Rows of the similarity matrix computed at once (bounds memory to ~block·K·n_angles floats).
SIMILARITY_BLOCK = 64


def distribution_entropy(counts: npt.ArrayLike) -> tuple[float, float, float]:
    """Shannon entropy of a distribution given by counts, with its normalised and effective forms.

    Parameters
    ----------
    counts
        ``(n,)`` non-negative counts (zeros are ignored).

    Returns
    -------
    tuple of float
        ``(H, H / ln(m), exp(H))`` in nats, with ``m`` the number of non-zero entries; the ratio is
        0 when ``m ≤ 1``, and ``exp(H)`` is 0 for an empty distribution.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or (c < 0).any() or not np.isfinite(c).all():
        raise InputError(None, "counts must be a 1-D array of finite non-negative numbers")
    c = c[c > 0]
    if len(c) == 0:
        return 0.0, 0.0, 0.0
    p = c / c.sum()
    h = float(-(p * np.log(p)).sum())
    ratio = h / math.log(len(p)) if len(p) > 1 else 0.0
    return h, ratio, math.exp(h)


def _lowpass(images: FloatArray, sigma_pixels: float) -> FloatArray:
    if sigma_pixels <= 0:
        return images
    h, w = images.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma_pixels) ** 2 * (fx**2 + fy**2))
    return np.asarray(np.fft.irfft2(np.fft.rfft2(images) * kernel, s=(h, w)))


def polar_signatures(
    averages: npt.ArrayLike,
    mask_radius: float,
    *,
    lowpass_pixels: float = LOWPASS_PIXELS,
    n_angles: int = POLAR_ANGLES,
) -> FloatArray:
    """Centred, ring-mean-free, normalised polar images ``(K, n_radii, n_angles)`` (steps 1–2 above).

    ``n_radii`` is ``ceil(mask_radius)``; the norm is area-weighted (each ring by its radius), so
    ``Σ_r r · Σ_θ p² = 1`` for every class with any angular structure (all zeros otherwise).
    """
    stack = np.asarray(averages, dtype=np.float64)
    if stack.ndim != 3:
        raise InputError(None, f"class averages must be (K, h, w), got {stack.shape}")
    if len(stack) == 0:
        return np.zeros((0, 1, n_angles))
    centres = density_centres_yx(stack, mask_radius)
    n_radii = max(2, math.ceil(mask_radius))
    polar = polar_transform(
        _lowpass(np.where(np.isfinite(stack), stack, 0.0), lowpass_pixels),
        n_radii=n_radii,
        n_angles=n_angles,
        max_radius_pixels=mask_radius,
        centres_yx=centres,
    )
    polar -= polar.mean(axis=2, keepdims=True)
    weight = ((np.arange(n_radii) + 0.5) / n_radii)[None, :, None]
    norm = np.sqrt((weight * polar**2).sum(axis=(1, 2), keepdims=True))
    return np.asarray(np.where(norm > 0, polar / np.where(norm > 0, norm, 1.0), 0.0))


def rotational_similarity(
    averages: npt.ArrayLike,
    mask_radius: float,
    *,
    include_mirrors: bool = True,
    lowpass_pixels: float = LOWPASS_PIXELS,
    n_angles: int = POLAR_ANGLES,
) -> FloatArray:
    """Pairwise rotation-invariant similarity of class averages.

    Parameters
    ----------
    averages
        ``(K, h, w)`` class averages (protein bright).
    mask_radius
        Radius (pixels) of the disc compared.
    include_mirrors
        Also compare each class with the mirror image of the other (the projection from the
        opposite direction: the same view for a reconstruction).
    lowpass_pixels
        Gaussian low-pass σ in pixels applied first (0 = none).
    n_angles
        In-plane angles of the polar grid (the rotation search step is ``360 / n_angles`` degrees).

    Returns
    -------
    numpy.ndarray
        ``(K, K)`` symmetric, in [-1, 1]: the maximum over in-plane rotations (and mirrors) of the
        normalised cross-correlation; 1 on the diagonal.
    """
    sig = polar_signatures(averages, mask_radius, lowpass_pixels=lowpass_pixels, n_angles=n_angles)
    k, n_radii, _ = sig.shape
    if k == 0:
        return np.zeros((0, 0))
    weight = ((np.arange(n_radii) + 0.5) / n_radii)[None, :, None]
    spectra = np.fft.rfft(sig, axis=2)
    candidates = [spectra]
    if include_mirrors:
        # x → -x about the centre is θ → π − θ on the polar grid.
        mirrored_index = (n_angles // 2 - np.arange(n_angles)) % n_angles
        candidates.append(np.fft.rfft(sig[:, :, mirrored_index], axis=2))
    best = np.full((k, k), -np.inf)
    weighted = np.conj(spectra) * weight
    for other in candidates:
        for start in range(0, k, SIMILARITY_BLOCK):
            stop = min(k, start + SIMILARITY_BLOCK)
            cross = np.einsum("irm,jrm->ijm", weighted[start:stop], other)  # Σ over rings, per frequency
            correlation = np.fft.irfft(cross, n=n_angles, axis=2)  # (block, K, n_angles)
            best[start:stop] = np.maximum(best[start:stop], correlation.max(axis=2))
    best = np.clip((best + best.T) / 2.0, -1.0, 1.0)
    np.fill_diagonal(best, 1.0)
    return np.asarray(best)


def cluster_views(
    similarity: npt.ArrayLike, threshold: float = SAME_VIEW_SIMILARITY, weights: npt.ArrayLike | None = None
) -> IntArray:
    """Average-linkage clustering of classes by similarity.

    Clusters are merged, closest first, while the (weighted) mean similarity between their members
    is at least ``threshold``: for clusters ``A`` and ``B``,
    ``Σ_{i∈A, j∈B} w_i w_j s_ij / (Σ_{i∈A} w_i · Σ_{j∈B} w_j)``.

    Parameters
    ----------
    similarity
        ``(n, n)`` symmetric similarity matrix.
    threshold
        Smallest mean similarity of two clusters that are merged.
    weights
        ``(n,)`` positive weight of each item (e.g. its particles); ``None`` weighs all equally.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64 cluster label of each item, ``0..C-1`` in order of first appearance.
    """
    s = np.asarray(similarity, dtype=np.float64)
    n = s.shape[0] if s.ndim == 2 else -1
    if s.ndim != 2 or s.shape != (n, n):
        raise InputError(None, f"similarity must be a square matrix, got shape {s.shape}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not (np.isfinite(w).all() and (w > 0).all()):
        raise InputError(None, f"weights must be {n} positive finite numbers, got shape {w.shape}")
    labels = np.arange(n)
    if n < 2:
        return labels.astype(np.int64)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    # Weighted sums of pairwise similarities between clusters: merging is a row/column addition.
    sums = s * np.outer(w, w)
    np.fill_diagonal(sums, 0.0)
    sizes = w.copy()
    active = np.ones(n, dtype=bool)
    while active.sum() > 1:
        mean = sums / np.outer(sizes, sizes)
        mean[~active, :] = -np.inf
        mean[:, ~active] = -np.inf
        np.fill_diagonal(mean, -np.inf)
        flat = int(np.argmax(mean))
        a, b = divmod(flat, n)
        if mean[a, b] < threshold:
            break
        sums[a, :] += sums[b, :]
        sums[:, a] += sums[:, b]
        sums[a, a] = 0.0
        sizes[a] += sizes[b]
        active[b] = False
        members[a].extend(members.pop(b))
    for cluster, items in members.items():
        labels[items] = cluster
    _, first = np.unique(labels, return_index=True)
    order = {label: rank for rank, label in enumerate(labels[np.sort(first)])}
    return np.array([order[label] for label in labels], dtype=np.int64)


@dataclass(frozen=True)
class ViewReport:
    """The distinct views of one snapshot and how the good particles spread over them.

    Attributes
    ----------
    class_view
        ``(K,)`` view of each class, ``0..V-1`` with view 0 the most populated; -1 for classes
        left out (junk or empty).
    view_particles
        ``(V,)`` good particles per view, largest first.
    view_classes
        RELION class numbers (1-based) of each view, largest class first.
    similarity
        ``(G, G)`` similarity of the good classes compared (in class order).
    """

    class_view: IntArray
    view_particles: IntArray
    view_classes: list[list[int]]
    similarity: FloatArray

    @property
    def n_views(self) -> int:
        """Number of distinct views."""
        return len(self.view_particles)

    @property
    def entropy_ratio(self) -> float:
        """``H / ln(V)`` of the view distribution (0 for fewer than two views)."""
        return distribution_entropy(self.view_particles)[1]

    @property
    def effective_views(self) -> float:
        """``exp(H)`` of the view distribution (0 with no good particle)."""
        return distribution_entropy(self.view_particles)[2]

    @property
    def largest_share(self) -> float:
        """Fraction of the good particles in the most populated view (0 with none)."""
        total = int(self.view_particles.sum())
        return float(self.view_particles[0] / total) if total > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        """Plain JSON: views with their particles and classes, and the summary numbers."""
        return {
            "n_views": self.n_views,
            "entropy_ratio": self.entropy_ratio,
            "effective_views": self.effective_views,
            "largest_share": self.largest_share,
            "views": [
                {"view": v + 1, "particles": int(n), "classes": classes}
                for v, (n, classes) in enumerate(zip(self.view_particles, self.view_classes, strict=True))
            ],
        }


def view_distribution(
    averages: npt.ArrayLike,
    particle_counts: npt.ArrayLike,
    good: npt.ArrayLike,
    mask_radius: float,
    *,
    threshold: float = SAME_VIEW_SIMILARITY,
    include_mirrors: bool = True,
    lowpass_pixels: float = LOWPASS_PIXELS,
) -> ViewReport:
    """Cluster the good, non-empty classes into views and count the particles of each.

    Parameters
    ----------
    averages
        ``(K, h, w)`` class averages.
    particle_counts
        ``(K,)`` particles per class.
    good
        ``(K,)`` bool, True for classes that are not junk.
    mask_radius
        Radius of the disc compared, pixels.
    threshold, include_mirrors, lowpass_pixels
        See :func:`rotational_similarity` and :func:`cluster_views` (each class weighs as many as its
        particles in the average linkage).

    Returns
    -------
    ViewReport
        Views sorted by particles, largest first.
    """
    stack = np.asarray(averages, dtype=np.float64)
    counts = np.asarray(particle_counts, dtype=np.int64)
    keep = np.asarray(good, dtype=bool)
    k = stack.shape[0] if stack.ndim == 3 else -1
    if k < 0 or counts.shape != (k,) or keep.shape != (k,):
        raise InputError(None, f"averages {stack.shape}, counts {counts.shape} and good {keep.shape} disagree")
    chosen = np.flatnonzero(keep & (counts > 0))
    similarity = rotational_similarity(
        stack[chosen], mask_radius, include_mirrors=include_mirrors, lowpass_pixels=lowpass_pixels
    )
    labels = cluster_views(similarity, threshold, counts[chosen]) if len(chosen) else np.zeros(0, dtype=np.int64)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    per_cluster = np.array([counts[chosen[labels == c]].sum() for c in range(n_clusters)], dtype=np.int64)
    order = np.argsort(-per_cluster, kind="stable")
    rank = np.empty(n_clusters, dtype=np.int64)
    rank[order] = np.arange(n_clusters)
    class_view = np.full(k, -1, dtype=np.int64)
    class_view[chosen] = rank[labels]
    view_classes: list[list[int]] = []
    for c in order:
        members = chosen[labels == c]
        members = members[np.argsort(-counts[members], kind="stable")]
        view_classes.append([int(m) + 1 for m in members])
    return ViewReport(
        class_view=class_view,
        view_particles=per_cluster[order],
        view_classes=view_classes,
        similarity=similarity,
    )


__all__ = [
    "LOWPASS_PIXELS",
    "SAME_VIEW_SIMILARITY",
    "ViewReport",
    "cluster_views",
    "distribution_entropy",
    "polar_signatures",
    "rotational_similarity",
    "view_distribution",
]
