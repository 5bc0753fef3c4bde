"""Class quality: a junk score in [0, 1] per class from interpretable features, plus user overrides.

Each class average is described by a few numbers anyone can check on the image
(:func:`class_features`), all computed about the box centre ``(box // 2, box // 2)`` with the
circular mask of the classification (``mask_diameter_angstrom`` from the snapshot's parameters,
else 85 % of the box, as cryoSPARC):

``mask_rms_ratio``
    RMS of the average inside the mask over the RMS outside it, both about the median outside.
    Noise and empty boxes have ≈ 1; a particle sits well above.
``centre_offset_fraction``
    Distance of the centre of mass of the density (pixels more than 2 σ of the outside noise
    above the outside median) from the box centre, as a fraction of the mask radius. Classes are
    re-centred during classification, so a particle stays near 0; ice and carbon edges do not.
``radius_of_gyration_fraction``
    Radius of gyration of that density inside the mask, about its own centre of mass, over the mask
    radius (compactness). A particle is compact; noise, ice sheets, carbon and averages of mixed
    junk spread over the mask (a uniform disc filling it: 1/√2 ≈ 0.71).
``profile_correlation``
    Pearson correlation of the radial (rotationally averaged) profile with that of a projected
    solid sphere filling 80 % of the mask: a particle-like profile is bright in the middle and falls
    to the background before the mask edge.
``rotational_symmetry``
    Share of the variance inside the mask explained by the rotational average: a featureless
    "fuzzy ball" (averages of mixed junk) is ≈ 1, a view of a protein much less.
``resolution_angstrom`` and ``resolution_ratio``
    The class resolution when known (``inf`` otherwise) and its ratio to the median of the three
    best classes of the snapshot.
``particle_count``, ``particle_fraction``, ``share_of_uniform``
    Particles in the class, their fraction of all, and that fraction times K (1 = a fair share).

Each feature turns into *junk evidence* ``e ∈ [0, 1]`` by a linear ramp between a "good" and a
"junk" value (:data:`RULES`), and the junk score is a noisy-OR of the weighted evidence,
``1 − Π (1 − w·e)``: any one strong reason (off-centre, no signal in the mask) is enough, weak
reasons add up. The weights and ramps were set on class averages built from the virtual
microscope's ground truth (``tests/test_monitoring_quality.py``), then checked on the classes of
real classification runs (``benchmarks/verdict_timelines.py``). The contrast convention is
RELION's after extraction: protein is brighter than the background.

Measured on real runs (the phantom, box 64 at 4 Å/px, K = 30, 16 Å, 4,000 particles per grid): the
classifier re-centres every class and masks its images, so junk classes are *not* off-centre
(offset ≤ 0.10 for every class) and the inside/outside contrast is inflated for every class (2–55,
the outside being masked away); what does separate them is the spread. Classes of ≥ 80 % true
particles have a gyration radius of 0.22–0.37 of the mask radius (0.26–0.31 for the classes built
from truth); classes dominated by ice, carbon edges or mixed junk 0.42–0.74. With the first ramp
(0.45 → 0.75, weight 0.8) those at 0.42–0.55 — ice and carbon-edge classes, centred by the
classifier into round blobs — scored 0.3–0.45 and counted as good, so 11 % of the particles of the
20 %-junk grid sat in junk-dominated classes scored good and the junk fraction came out at 6 %. The
ramp is now 0.40 → 0.55 (weight 0.9). It assumes the mask is comfortably larger than the particle
(both cryoSPARC and RELION advise it): a particle filling the mask can itself reach 0.4–0.6.

A user can override any class (``"good"`` or ``"junk"``), keyed by its RELION class number
(1-based, as the gallery labels it); :func:`load_overrides` / :func:`save_overrides` keep them in
a small JSON file, written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from otf2d.core.durable import write_json_atomic
from otf2d.core.errors import InputError
from otf2d.core.snapshot import DEFAULT_JUNK_SCORE_THRESHOLD, ClassSnapshot
from otf2d.monitoring.image_geometry import image_centre, radial_profiles, radius_grid
from otf2d.monitoring.snapshots.class_quality import OVERRIDES_PARAMETER

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Classes whose (effective) junk score exceeds this are flagged junk.
JUNK_SCORE_THRESHOLD = DEFAULT_JUNK_SCORE_THRESHOLD
#: Default mask diameter as a fraction of the box (cryoSPARC's default).
DEFAULT_MASK_FRACTION = 0.85
#: The reference sphere of the radial profile fills this fraction of the mask radius.
REFERENCE_SPHERE_FRACTION = 0.8
#: Pixels more than this many outside-noise σ above the outside median count as density.
DENSITY_SIGMA = 2.0
#: Allowed override values.
OVERRIDE_VALUES = ("good", "junk")
#: Schema number of the overrides file.
OVERRIDES_SCHEMA = 1


@dataclass(frozen=True)
class EvidenceRule:
    """How one feature becomes junk evidence: a linear ramp from ``good_value`` (0) to ``junk_value`` (1).

    Attributes
    ----------
    feature
        Name of the feature (a key of :attr:`QualityReport.features`).
    good_value, junk_value
        Feature values giving evidence 0 and 1 (either order).
    weight
        How much full evidence alone counts (noisy-OR weight in [0, 1]).
    reason
        Format string of the reason given when the evidence is at least 0.5 (``{value}``).
    """

    feature: str
    good_value: float
    junk_value: float
    weight: float
    reason: str

    def evidence(self, values: FloatArray) -> FloatArray:
        """Evidence in [0, 1] for ``(K,)`` feature values; NaN where the feature is unknown."""
        v = np.asarray(values, dtype=np.float64)
        ramp = (v - self.good_value) / (self.junk_value - self.good_value)
        return np.asarray(np.where(np.isnan(v), np.nan, np.clip(ramp, 0.0, 1.0)))


#: The evidence rules, calibrated on simulated class averages (see the module docstring).
RULES: tuple[EvidenceRule, ...] = (
    EvidenceRule("mask_rms_ratio", 1.8, 1.15, 0.95, "signal inside the mask only {value:.2f}× outside"),
    EvidenceRule("centre_offset_fraction", 0.12, 0.30, 0.9, "off-centre ({value:.0%} of the mask radius)"),
    EvidenceRule("radius_of_gyration_fraction", 0.40, 0.55, 0.9, "spread out (gyration radius {value:.0%} of mask)"),
    EvidenceRule("profile_correlation", 0.35, 0.05, 0.8, "radial profile unlike a particle (r = {value:.2f})"),
    EvidenceRule("rotational_symmetry", 0.75, 0.95, 0.5, "featureless ({value:.0%} rotationally symmetric)"),
    EvidenceRule("resolution_ratio", 1.6, 3.0, 0.8, "resolution {value:.1f}× worse than the best classes"),
    EvidenceRule("resolution_angstrom", 40.0, 80.0, 0.8, "poor resolution ({value:.0f} Å)"),
    EvidenceRule("share_of_uniform", 0.25, 0.05, 0.4, "few particles ({value:.0%} of a fair share)"),
)


@dataclass(frozen=True)
class QualityReport:
    """Junk scores and the features behind them, for the K classes of one snapshot.

    Attributes
    ----------
    features
        Feature name → ``(K,)`` float64 values (NaN where unknown, e.g. an empty class).
    evidence
        Rule feature → ``(K,)`` junk evidence in [0, 1] (NaN where unknown).
    scores
        ``(K,)`` computed junk score in [0, 1] (overrides not applied).
    overrides
        RELION class number (1-based) → ``"good"`` / ``"junk"``, those that applied.
    threshold
        Score above which a class is junk.
    """

    features: dict[str, FloatArray]
    evidence: dict[str, FloatArray]
    scores: FloatArray
    overrides: dict[int, str] = field(default_factory=dict)
    threshold: float = JUNK_SCORE_THRESHOLD

    @property
    def n_classes(self) -> int:
        return int(self.scores.shape[0])

    @property
    def effective_scores(self) -> FloatArray:
        """``(K,)`` scores with overrides applied: 0 for a class overridden good, 1 for junk."""
        out = self.scores.copy()
        for number, value in self.overrides.items():
            out[number - 1] = 1.0 if value == "junk" else 0.0
        return out

    @property
    def junk(self) -> BoolArray:
        """``(K,)`` True for classes flagged junk (after overrides)."""
        return np.asarray(self.effective_scores > self.threshold)

    def reasons(self, k: int, min_evidence: float = 0.5) -> list[str]:
        """Reasons in words why class ``k`` (0-based) looks like junk, strongest first."""
        found: list[tuple[float, str]] = []
        for rule in RULES:
            e = float(self.evidence[rule.feature][k])
            if not math.isnan(e) and e >= min_evidence:
                found.append((rule.weight * e, rule.reason.format(value=float(self.features[rule.feature][k]))))
        reasons = [text for _, text in sorted(found, key=lambda item: -item[0])]
        override = self.overrides.get(k + 1)
        if override is not None:
            reasons.insert(0, f"marked {override} by a user")
        return reasons

    def to_json(self) -> list[dict[str, Any]]:
        """Per class: number (1-based), score, effective score, junk flag, override, features, reasons."""
        eff = self.effective_scores
        junk = self.junk
        rows = []
        for k in range(self.n_classes):
            rows.append(
                {
                    "class": k + 1,
                    "score": _finite_or_none(self.scores[k]),
                    "effective_score": _finite_or_none(eff[k]),
                    "junk": bool(junk[k]),
                    "override": self.overrides.get(k + 1),
                    "features": {name: _finite_or_none(values[k]) for name, values in self.features.items()},
                    "reasons": self.reasons(k),
                }
            )
        return rows


def _finite_or_none(value: float) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def mask_radius_pixels(snapshot_parameters: Mapping[str, Any], box: int, pixel_size_angstrom: float) -> float:
    """Radius of the classification mask in pixels of the class averages.

    ``mask_diameter_angstrom`` from the parameters when present (capped at the box), else
    :data:`DEFAULT_MASK_FRACTION` of the box.
    """
    diameter = snapshot_parameters.get("mask_diameter_angstrom")
    if isinstance(diameter, int | float) and not isinstance(diameter, bool) and diameter > 0:
        return float(min(float(diameter) / pixel_size_angstrom, box) / 2.0)
    return DEFAULT_MASK_FRACTION * box / 2.0


def _sphere_profile(radii: FloatArray, sphere_radius: float) -> FloatArray:
    return np.asarray(np.sqrt(np.maximum(sphere_radius**2 - radii**2, 0.0)))


def _masks(shape: tuple[int, ...], mask_radius: float) -> tuple[FloatArray, BoolArray, BoolArray]:
    """Radius grid, inside-mask and background (outside-mask) pixels of images of ``shape``."""
    r = radius_grid(shape)
    inside = r <= mask_radius
    outside = ~inside
    if outside.sum() < 8:  # a mask filling the box: take the outermost ring as the background
        outside = r >= 0.9 * min(shape[-2], shape[-1]) / 2.0
    return r, inside, outside


def density_map(averages: npt.ArrayLike, mask_radius: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Background-subtracted averages, their density and the background noise.

    Parameters
    ----------
    averages
        ``(K, h, w)`` class averages (protein bright); non-finite pixels count as 0.
    mask_radius
        Mask radius in pixels.

    Returns
    -------
    tuple of numpy.ndarray
        ``centred`` ``(K, h, w)``: the averages minus the median outside the mask; ``density``
        ``(K, h, w)``: ``max(centred − 2σ, 0)`` with σ the standard deviation outside the mask;
        ``noise`` ``(K,)``: that σ.
    """
    stack = np.asarray(averages, dtype=np.float64)
    if stack.ndim != 3:
        raise InputError(None, f"class averages must be (K, h, w), got {stack.shape}")
    if not mask_radius > 0:
        raise InputError(None, f"mask radius must be > 0 pixels, got {mask_radius}")
    _, _, outside = _masks(stack.shape, mask_radius)
    stack = np.where(np.isfinite(stack), stack, 0.0)
    background = np.median(stack[:, outside], axis=1)
    centred = stack - background[:, None, None]
    noise = centred[:, outside].std(axis=1)
    density = np.maximum(centred - DENSITY_SIGMA * noise[:, None, None], 0.0)
    return centred, density, np.asarray(noise)


def density_centres_yx(averages: npt.ArrayLike, mask_radius: float) -> FloatArray:
    """``(K, 2)`` centre of mass ``(y, x)`` in pixels of each average's density (:func:`density_map`).

    The box centre where an average has no density.
    """
    _, density, _ = density_map(averages, mask_radius)
    return _centres(density)


def _centres(density: FloatArray) -> FloatArray:
    _, h, w = density.shape
    mass = density.sum(axis=(1, 2))
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    cy, cx = image_centre(density.shape)
    safe = np.where(mass > 0, mass, 1.0)
    com_y = np.where(mass > 0, (density * yy).sum(axis=(1, 2)) / safe, cy)
    com_x = np.where(mass > 0, (density * xx).sum(axis=(1, 2)) / safe, cx)
    return np.stack([com_y, com_x], axis=1)


def image_features(averages: npt.ArrayLike, mask_radius: float) -> dict[str, FloatArray]:
    """The image features of the module docstring for ``(K, h, w)`` class averages.

    Parameters
    ----------
    averages
        ``(K, h, w)`` real-space class averages (protein bright).
    mask_radius
        Mask radius in pixels.

    Returns
    -------
    dict
        ``mask_rms_ratio``, ``centre_offset_fraction``, ``radius_of_gyration_fraction``,
        ``profile_correlation``, ``rotational_symmetry``: each ``(K,)`` float64 (NaN for a flat
        image).
    """
    centred, density, _ = density_map(averages, mask_radius)
    k, h, w = centred.shape
    r, inside, outside = _masks(centred.shape, mask_radius)
    rms_in = np.sqrt((centred[:, inside] ** 2).mean(axis=1))
    rms_out = np.sqrt((centred[:, outside] ** 2).mean(axis=1))
    mass = density.sum(axis=(1, 2))
    centres = _centres(density)
    cy, cx = image_centre(centred.shape)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    com_y, com_x = centres[:, 0], centres[:, 1]
    offset = np.hypot(com_y - cy, com_x - cx) / mask_radius
    # The spread counts the density inside the mask only: noise outside it is not part of the class.
    inside_density = np.where(inside, density, 0.0)
    inside_mass = inside_density.sum(axis=(1, 2))
    inside_centres = _centres(inside_density)
    in_y, in_x = inside_centres[:, 0], inside_centres[:, 1]
    spread = (inside_density * ((yy - in_y[:, None, None]) ** 2 + (xx - in_x[:, None, None]) ** 2)).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        gyration = np.sqrt(spread / inside_mass) / mask_radius
        mask_ratio = rms_in / rms_out

    n_bins = max(8, int(min(h, w) // 4))
    outer = min(h, w) / 2.0
    profiles = radial_profiles(centred, n_bins, outer)
    bin_radii = (np.arange(n_bins) + 0.5) * outer / n_bins
    reference = _sphere_profile(bin_radii, REFERENCE_SPHERE_FRACTION * mask_radius)
    profile_corr = np.array([_pearson(p, reference) for p in profiles])

    ring = np.minimum(np.floor(r).astype(np.int64), math.ceil(mask_radius))
    counts = np.bincount(ring[inside], minlength=ring.max() + 1).astype(np.float64)
    symmetry = np.empty(k)
    for i in range(k):
        values = centred[i][inside]
        sums = np.bincount(ring[inside], weights=values, minlength=ring.max() + 1)
        rotational = (sums / np.maximum(counts, 1.0))[ring[inside]]
        total = ((values - values.mean()) ** 2).sum()
        symmetry[i] = 1.0 - ((values - rotational) ** 2).sum() / total if total > 0 else np.nan

    no_density = ~(mass > 0)
    # A noise-free background (rms_out = 0) with signal inside is a perfect contrast: ratio +inf.
    mask_ratio = np.where(rms_out > 0, mask_ratio, np.where(rms_in > 0, np.inf, np.nan))
    result = {
        "mask_rms_ratio": mask_ratio,
        "centre_offset_fraction": np.where(no_density, np.nan, offset),
        "radius_of_gyration_fraction": np.where(inside_mass > 0, gyration, np.nan),
        "profile_correlation": profile_corr,
        "rotational_symmetry": symmetry,
    }
    return {name: np.asarray(values, dtype=np.float64) for name, values in result.items()}


def _pearson(a: FloatArray, b: FloatArray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def count_features(particle_counts: npt.ArrayLike) -> dict[str, FloatArray]:
    """``particle_count``, ``particle_fraction`` and ``share_of_uniform`` (fraction × K), each ``(K,)``."""
    counts = np.asarray(particle_counts, dtype=np.float64)
    total = counts.sum()
    fraction = counts / total if total > 0 else np.zeros_like(counts)
    return {
        "particle_count": counts,
        "particle_fraction": fraction,
        "share_of_uniform": fraction * len(counts),
    }


def resolution_features(resolution_angstrom: npt.ArrayLike) -> dict[str, FloatArray]:
    """``resolution_angstrom`` (NaN where unknown) and ``resolution_ratio`` to the 3 best classes, ``(K,)``."""
    res = np.asarray(resolution_angstrom, dtype=np.float64)
    known = np.isfinite(res) & (res > 0)
    res = np.where(known, res, np.nan)
    if known.any():
        best = float(np.median(np.sort(res[known])[:3]))
        ratio = res / best
    else:
        ratio = np.full_like(res, np.nan)
    return {"resolution_angstrom": res, "resolution_ratio": ratio}


def class_features(snapshot: ClassSnapshot) -> dict[str, FloatArray]:
    """Every feature of the module docstring for the classes of ``snapshot``, each ``(K,)``.

    Image features of empty classes are NaN (their averages carry no information).
    """
    _, h, w = snapshot.averages.shape
    radius = mask_radius_pixels(snapshot.parameters, max(h, w), snapshot.pixel_size_angstrom)
    features = image_features(snapshot.averages, radius)
    counts = np.asarray(snapshot.particle_counts)
    empty = counts <= 0
    for name in features:
        features[name] = np.where(empty, np.nan, features[name])
    features.update(count_features(counts))
    features.update(resolution_features(snapshot.resolution_angstrom))
    return features


def _validate_overrides(overrides: Mapping[int, str], where: str | os.PathLike[str] | None) -> dict[int, str]:
    clean: dict[int, str] = {}
    for key, value in overrides.items():
        if isinstance(key, bool) or not isinstance(key, int | np.integer) or int(key) < 1:
            raise InputError(where, f"override key {key!r} is not a class number (1, 2, ...)")
        if value not in OVERRIDE_VALUES:
            raise InputError(where, f"override of class {key} is {value!r}, not one of {OVERRIDE_VALUES}")
        clean[int(key)] = str(value)
    return clean


def score_features(
    features: Mapping[str, FloatArray],
    *,
    overrides: Mapping[int, str] | None = None,
    threshold: float = JUNK_SCORE_THRESHOLD,
) -> QualityReport:
    """Combine features into junk scores (noisy-OR of :data:`RULES`) and apply overrides.

    Parameters
    ----------
    features
        Feature name → ``(K,)`` values; every rule's feature must be present (NaN = unknown).
    overrides
        RELION class number (1-based) → ``"good"`` or ``"junk"``; numbers beyond K are ignored.
    threshold
        Score above which a class is junk.

    Returns
    -------
    QualityReport
        Scores, evidence and the overrides that applied.
    """
    missing = [rule.feature for rule in RULES if rule.feature not in features]
    if missing:
        raise InputError(None, f"features missing for the junk score: {missing}")
    k = len(features[RULES[0].feature])
    keep_good = np.ones(k)
    evidence: dict[str, FloatArray] = {}
    for rule in RULES:
        e = rule.evidence(features[rule.feature])
        evidence[rule.feature] = e
        keep_good *= 1.0 - rule.weight * np.nan_to_num(e, nan=0.0)
    clean = _validate_overrides(overrides or {}, None)
    applied = {number: value for number, value in clean.items() if number <= k}
    return QualityReport(
        features={name: np.asarray(v, dtype=np.float64) for name, v in features.items()},
        evidence=evidence,
        scores=np.clip(1.0 - keep_good, 0.0, 1.0),
        overrides=applied,
        threshold=threshold,
    )


def score_classes(
    snapshot: ClassSnapshot,
    overrides: Mapping[int, str] | None = None,
    *,
    threshold: float = JUNK_SCORE_THRESHOLD,
) -> QualityReport:
    """Junk scores of the classes of ``snapshot`` (see the module docstring), user overrides on top.

    Parameters
    ----------
    snapshot
        Class averages ``(K, h, w)``, counts and resolutions.
    overrides
        RELION class number (1-based) → ``"good"`` or ``"junk"``.
    threshold
        Score above which a class is flagged junk.

    Returns
    -------
    QualityReport
        Per-class features, evidence, scores and junk flags.

    Raises
    ------
    InputError
        An override that is not ``"good"``/``"junk"`` or not keyed by a class number.
    """
    return score_features(class_features(snapshot), overrides=overrides, threshold=threshold)


def with_junk_scores(snapshot: ClassSnapshot, report: QualityReport) -> ClassSnapshot:
    """``snapshot`` scored: its ``junk_score`` and the parameters the snapshot writers read.

    Parameters
    ----------
    snapshot
        The snapshot ``report`` was computed from.
    report
        Its quality (:func:`score_classes`).

    Returns
    -------
    ClassSnapshot
        A copy with ``junk_score`` = ``report.effective_scores`` (``(K,)``, overrides applied) and
        ``parameters["class_overrides"]`` (snapshot class number → ``"good"``/``"junk"``) and
        ``junk_score_threshold`` (see ``otf2d.monitoring.snapshots.class_quality``), so that
        the RELION ``_model.star`` and the class-average ``.cs`` carry the scores, flags and overrides.

    Raises
    ------
    InputError
        If ``report`` has another number of classes than ``snapshot``.
    """
    if report.n_classes != snapshot.n_classes:
        raise InputError(None, f"quality of {report.n_classes} classes for a snapshot of {snapshot.n_classes}")
    parameters = {
        **snapshot.parameters,
        OVERRIDES_PARAMETER: {str(number): value for number, value in sorted(report.overrides.items())},
    }
    return dataclasses.replace(
        snapshot,
        junk_score=report.effective_scores,
        junk_score_threshold=float(report.threshold),
        parameters=parameters,
    )


def score_snapshot(
    snapshot: ClassSnapshot,
    overrides: Mapping[int, str] | None = None,
    *,
    threshold: float = JUNK_SCORE_THRESHOLD,
) -> ClassSnapshot:
    """:func:`score_classes` then :func:`with_junk_scores`: the snapshot ready to be written, scored.

    Parameters
    ----------
    snapshot
        Class averages ``(K, h, w)``, counts and resolutions.
    overrides
        RELION class number (1-based) → ``"good"`` or ``"junk"``.
    threshold
        Score above which a class is flagged junk.

    Returns
    -------
    ClassSnapshot
        ``snapshot`` with its ``(K,)`` effective junk scores and quality parameters.
    """
    return with_junk_scores(snapshot, score_classes(snapshot, overrides, threshold=threshold))


#: File of an engine session's class overrides, in its folder (``<data>/sessions/<name>/``).
SESSION_OVERRIDES_FILE = "class_overrides.json"


def overrides_for_snapshot(engine_overrides: Mapping[int, str], order: Sequence[int]) -> dict[int, str]:
    """Overrides keyed by engine class number (1-based) → keyed by the snapshot's class number (1-based).

    Parameters
    ----------
    engine_overrides
        Engine class number (``engine class index + 1``) → ``"good"`` / ``"junk"``.
    order
        ``order[i]`` = engine class index shown as snapshot class ``i + 1`` (``ClassSnapshot.engine_class_order()``).

    Returns
    -------
    dict
        Snapshot class number → value; overrides of classes the snapshot lacks are dropped.
    """
    snapshot_number = {engine: i + 1 for i, engine in enumerate(order)}
    return {
        snapshot_number[number - 1]: value
        for number, value in engine_overrides.items()
        if (number - 1) in snapshot_number
    }


def load_overrides(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read user overrides written by :func:`save_overrides`; an absent file means none.

    Raises
    ------
    InputError
        If the file exists but is not a valid overrides file (the message names it).
    """
    target = Path(path)
    try:
        record = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(target, f"cannot read class overrides ({exc})") from exc
    if not isinstance(record, dict) or record.get("schema") != OVERRIDES_SCHEMA:
        raise InputError(target, f"not a class-overrides file (expected schema {OVERRIDES_SCHEMA})")
    classes = record.get("classes")
    if not isinstance(classes, dict):
        raise InputError(target, "'classes' must map class numbers to 'good' or 'junk'")
    parsed: dict[int, str] = {}
    for key, value in classes.items():
        try:
            number = int(key)
        except ValueError as exc:
            raise InputError(target, f"override key {key!r} is not a class number") from exc
        parsed[number] = value
    return _validate_overrides(parsed, target)


def save_overrides(path: str | os.PathLike[str], overrides: Mapping[int, str]) -> Path:
    """Write ``overrides`` (class number → ``"good"``/``"junk"``) to ``path`` atomically.

    Raises
    ------
    InputError
        An invalid override (nothing is written then).
    """
    clean = _validate_overrides(overrides, path)
    record = {"schema": OVERRIDES_SCHEMA, "classes": {str(k): clean[k] for k in sorted(clean)}}
    return write_json_atomic(path, record)


__all__ = [
    "DENSITY_SIGMA",
    "JUNK_SCORE_THRESHOLD",
    "OVERRIDE_VALUES",
    "RULES",
    "SESSION_OVERRIDES_FILE",
    "EvidenceRule",
    "QualityReport",
    "class_features",
    "count_features",
    "density_centres_yx",
    "density_map",
    "image_features",
    "load_overrides",
    "mask_radius_pixels",
    "overrides_for_snapshot",
    "resolution_features",
    "save_overrides",
    "score_classes",
    "score_features",
    "score_snapshot",
    "with_junk_scores",
]
