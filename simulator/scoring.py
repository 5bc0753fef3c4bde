"""Scoring a 2D classification against the simulator's ground truth (``truth.csv``).

One scorer serves the quality tests and the benchmark, for otf2d and for RELION alike. Inputs are
what both programs write: per particle its class and in-plane angle, per class its average.

Measures (see ``QualityReport``):

- **junk isolation**: share of junk particles that end in junk-majority classes;
- **good kept**: share of true particles that end in classes that are *not* junk-majority;
- **view purity**: per class, the angle between each true member's viewing direction and the
  class's medoid direction (2D classes do not fold v and −v); the pooled median over good members;
- **in-plane consistency**: per class, the circular standard deviation of the members' in-plane
  orientation once their estimated ψ is undone and their viewing directions are turned onto the
  class's medoid direction (for members of one direction this is the spread of ψ_est − ψ_true; it
  also holds where rot and ψ trade off, e.g. near tilt 0); the particle-weighted median over classes;
- **populated classes**: classes holding at least ``min_class_particles`` particles;
- **class fidelity**: each good class average aligned (rotation and shift search) to clean,
  CTF-free projections of the map at the views of some of its members; the best Pearson
  correlation inside the particle circle and the FRC-0.5 resolution; medians over good classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from PIL import Image

from otf2d.simulator.projection import VolumeSpectrum, euler_matrix_relion, project, viewing_direction

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class QualityReport:
    """Numbers of one classification run against ground truth (angles in degrees, resolution in Å)."""

    n_particles: int
    n_junk: int
    populated_classes: int
    junk_isolation: float
    good_kept: float
    view_purity_degrees: float
    in_plane_spread_degrees: float
    fidelity_correlation: float
    fidelity_resolution_angstrom: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _angles_between(u: FloatArray, v: FloatArray) -> FloatArray:
    """Angles in degrees between unit vectors ``u (n, 3)`` and ``v (3,)``."""
    return np.degrees(np.arccos(np.clip(u @ v, -1.0, 1.0)))


def medoid_direction(directions: FloatArray, *, max_points: int = 300, seed: int = 0) -> FloatArray:
    """The member direction with the smallest summed angle to the others (subsampled above ``max_points``)."""
    d = directions
    if len(d) > max_points:
        d = d[np.random.default_rng(seed).choice(len(d), max_points, replace=False)]
    angles = np.arccos(np.clip(d @ d.T, -1.0, 1.0))
    return d[int(np.argmin(angles.sum(axis=1)))]


def circular_std_degrees(angles_degrees: npt.ArrayLike) -> float:
    """Circular standard deviation ``sqrt(-2 ln R)`` of angles in degrees, in degrees."""
    z = np.exp(1j * np.radians(np.asarray(angles_degrees, dtype=np.float64)))
    r = min(float(np.abs(z.mean())), 1.0)
    return float(np.degrees(np.sqrt(-2.0 * np.log(max(r, 1e-12)))))


def in_plane_spread_degrees(
    rot_degrees: npt.ArrayLike,
    tilt_degrees: npt.ArrayLike,
    psi_true_degrees: npt.ArrayLike,
    psi_estimated_degrees: npt.ArrayLike,
) -> float:
    """In-plane consistency of one class: the spread of its members' orientations in the class frame.

    Member ``i`` has the true orientation ``A_i = R(ψ_i)·R(tilt_i)·R(rot_i)`` (RELION); undoing its
    estimated in-plane angle gives ``B_i = R(−ψ_est,i)·A_i``, which a consistent classifier makes the
    same for every member up to the spread of their views. Each ``B_i``'s image x-axis (first row)
    is turned by the smallest rotation that takes its viewing direction (third row) onto the
    members' medoid direction; the result is the circular standard deviation of those axes' angles
    in the plane normal to the medoid. For members of one viewing direction it equals
    ``circular_std_degrees(ψ_est − ψ_true)``; unlike that, it is not inflated where rot and ψ trade
    off (near tilt 0 or 180°, where only rot + ψ shapes the image).

    Parameters
    ----------
    rot_degrees, tilt_degrees, psi_true_degrees
        ``(n,)`` true RELION Euler angles of the members (degrees).
    psi_estimated_degrees
        ``(n,)`` estimated ``rlnAnglePsi`` (degrees).

    Returns
    -------
    float
        Degrees; 0 for a perfectly consistent class, about 120–140 for random angles.
    """
    psi_rel = np.asarray(psi_true_degrees, dtype=np.float64) - np.asarray(psi_estimated_degrees, dtype=np.float64)
    b = euler_matrix_relion(rot_degrees, tilt_degrees, psi_rel)  # R(ψ_true − ψ_est)·R(tilt)·R(rot)
    directions, axes = b[:, 2], b[:, 0]
    medoid = medoid_direction(directions)
    cross = np.cross(directions, medoid)
    sin = np.linalg.norm(cross, axis=1)
    cos = directions @ medoid
    k = cross / np.maximum(sin, 1e-12)[:, None]
    # Rodrigues: turn each axis about k by the angle between its direction and the medoid.
    turned = (
        axes * cos[:, None]
        + np.cross(k, axes) * sin[:, None]
        + k * np.einsum("ij,ij->i", k, axes)[:, None] * (1.0 - cos)[:, None]
    )
    turned = np.where((sin > 1e-9)[:, None], turned, axes)
    helper = np.array([1.0, 0.0, 0.0]) if abs(medoid[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = helper - (helper @ medoid) * medoid
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(medoid, e1)
    return circular_std_degrees(np.degrees(np.arctan2(turned @ e2, turned @ e1)))


def fourier_ring_correlation(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """FRC of two square images ``(n, n)`` for rings 0 .. n//2 − 1 (ring index = frequency in 1/box)."""
    fa, fb = np.fft.fft2(np.asarray(a, dtype=np.float64)), np.fft.fft2(np.asarray(b, dtype=np.float64))
    n = fa.shape[0]
    f = np.fft.fftfreq(n) * n
    ring = np.rint(np.hypot(f[:, None], f[None, :])).astype(np.int64).ravel()
    keep = ring < n // 2
    ring = ring[keep]
    num = np.bincount(ring, (fa * np.conj(fb)).real.ravel()[keep], minlength=n // 2)
    den_a = np.bincount(ring, (np.abs(fa) ** 2).ravel()[keep], minlength=n // 2)
    den_b = np.bincount(ring, (np.abs(fb) ** 2).ravel()[keep], minlength=n // 2)
    return np.asarray(num / np.sqrt(np.maximum(den_a * den_b, 1e-30)), dtype=np.float64)


def frc_resolution_angstrom(frc: FloatArray, box: int, pixel_size_angstrom: float, threshold: float = 0.5) -> float:
    """Resolution where the FRC first drops below ``threshold`` (Nyquist if it never does)."""
    below = np.flatnonzero(frc[1:] < threshold)
    ring = int(below[0]) + 1 if below.size else len(frc)
    ring = max(ring - 1, 1) if below.size else ring
    return float(box * pixel_size_angstrom / ring)


def _rotate(image: FloatArray, degrees: float) -> FloatArray:
    """Counter-clockwise rotation (in the displayed ``[y, x]`` array) about the box centre, bilinear."""
    pil = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(pil.rotate(degrees, resample=Image.Resampling.BILINEAR), dtype=np.float64)


def _circle(box: int, radius_pixels: float) -> npt.NDArray[np.bool_]:
    y, x = np.mgrid[:box, :box] - box // 2
    return np.asarray(np.hypot(x, y) <= radius_pixels)


def align_to_reference(
    image: FloatArray, reference: FloatArray, *, step_degrees: float = 3.0, radius_pixels: float | None = None
) -> tuple[float, FloatArray]:
    """Best Pearson correlation of ``image`` with rotated, shifted copies of ``reference``.

    Searches in-plane rotations on a ``step_degrees`` grid and all cyclic shifts (by FFT), then
    measures the correlation inside a circle of ``radius_pixels``. Returns the correlation and the
    aligned reference.
    """
    box = image.shape[0]
    mask = _circle(box, radius_pixels if radius_pixels is not None else box / 2 - 1)
    img = (image - image[mask].mean()) * mask
    fi = np.conj(np.fft.fft2(img))
    best, best_ref = -np.inf, reference
    for angle in np.arange(0.0, 360.0, step_degrees):
        rot = _rotate(reference, float(angle))
        cc = np.fft.ifft2(np.fft.fft2(rot) * fi).real
        dy, dx = np.unravel_index(int(np.argmax(cc)), cc.shape)
        moved = np.roll(rot, (-int(dy), -int(dx)), axis=(0, 1))
        a, b = img[mask], moved[mask] - moved[mask].mean()
        corr = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-30))
        if corr > best:
            best, best_ref = corr, moved
    return best, best_ref


def _class_fidelity(
    average: FloatArray,
    members: pd.DataFrame,
    spectrum: VolumeSpectrum,
    pixel_size_angstrom: float,
    radius_pixels: float,
    n_views: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Best correlation and FRC-0.5 resolution of one class average against clean projections."""
    box = average.shape[0]
    views = members[["rlnAngleRot", "rlnAngleTilt"]].to_numpy()
    directions = viewing_direction(views[:, 0], views[:, 1])
    medoid = medoid_direction(directions)
    pick = [int(np.argmin(_angles_between(directions, medoid)))]
    if len(views) > 1:
        extra = rng.choice(len(views), size=min(n_views - 1, len(views)), replace=False)
        pick.extend(int(i) for i in extra)
    projections = project(spectrum, views[pick, 0], views[pick, 1], 0.0, box, pixel_size_angstrom)
    best_corr, best_res = -1.0, float("inf")
    for proj in projections:
        corr, aligned = align_to_reference(average, proj, radius_pixels=radius_pixels)
        if corr > best_corr:
            frc = fourier_ring_correlation(average * _circle(box, radius_pixels), aligned)
            best_corr, best_res = corr, frc_resolution_angstrom(frc, box, pixel_size_angstrom)
    return best_corr, best_res


def score_classification(
    truth: pd.DataFrame,
    image_names: npt.ArrayLike,
    class_numbers: npt.ArrayLike,
    psi_degrees: npt.ArrayLike,
    class_averages: npt.ArrayLike | None = None,
    class_pixel_size_angstrom: float | None = None,
    spectrum: VolumeSpectrum | None = None,
    *,
    particle_diameter_angstrom: float | None = None,
    min_class_particles: int = 5,
    fidelity_views: int = 3,
    seed: int = 0,
    first_class_label: int | None = None,
) -> QualityReport:
    """Score one classification against ``truth.csv``.

    Parameters
    ----------
    truth
        The simulator's ``truth.csv`` as a DataFrame (``rlnImageName``, ``is_junk``, angles).
    image_names, class_numbers, psi_degrees
        ``(n,)`` per classified particle: ``rlnImageName``, class (any integer labels) and
        estimated ``rlnAnglePsi``.
    class_averages
        ``(K, h, w)`` averages; class label ``c`` has average ``c - first_class_label``;
        ``None`` skips class fidelity (reported as NaN).
    class_pixel_size_angstrom
        Pixel size of ``class_averages``.
    spectrum
        The map used by the simulator, prepared with ``otf2d.simulator.projection.prepare_volume``.
    particle_diameter_angstrom
        Diameter of the circle for correlations; ``None`` = 80 % of the box.
    first_class_label
        The label of ``class_averages[0]`` (0 or 1). ``None`` guesses it from the smallest label
        present (0 or 1, else 0), which is wrong when the first class is empty (RELION often leaves
        classes empty): pass it whenever averages are given.
    """
    classified = pd.DataFrame(
        {
            "rlnImageName": np.asarray(image_names, dtype=str),
            "cls": np.asarray(class_numbers, dtype=np.int64),
            "psi_est": np.asarray(psi_degrees, dtype=np.float64),
        }
    )
    merged = classified.merge(truth, on="rlnImageName", how="inner", validate="one_to_one")
    if len(merged) != len(classified):
        missing = len(classified) - len(merged)
        raise ValueError(f"{missing} classified particle(s) are not in the truth table")
    junk = merged["is_junk"].astype(str).str.lower().isin(["1", "true"]).to_numpy()
    merged["junk"] = junk
    junk_share = merged.groupby("cls")["junk"].mean()
    junk_classes = set(junk_share.index[junk_share > 0.5])
    in_junk_class = merged["cls"].isin(junk_classes).to_numpy()
    counts = merged["cls"].value_counts()
    n_junk = int(junk.sum())
    n_good = int((~junk).sum())

    purity_angles: list[FloatArray] = []
    spreads: list[tuple[float, int]] = []
    good = merged[~junk]
    for cls, members in good.groupby("cls"):
        if cls in junk_classes or len(members) < min_class_particles:
            continue
        directions = viewing_direction(members["rlnAngleRot"].to_numpy(), members["rlnAngleTilt"].to_numpy())
        purity_angles.append(_angles_between(directions, medoid_direction(directions)))
        spread = in_plane_spread_degrees(
            members["rlnAngleRot"], members["rlnAngleTilt"], members["rlnAnglePsi"], members["psi_est"]
        )
        spreads.append((spread, len(members)))

    fidelity_corr, fidelity_res = float("nan"), float("nan")
    if class_averages is not None and spectrum is not None and class_pixel_size_angstrom is not None:
        averages = np.asarray(class_averages, dtype=np.float64)
        if first_class_label is not None:
            offset = int(first_class_label)
        else:
            offset = int(merged["cls"].min()) if int(merged["cls"].min()) in (0, 1) else 0
        box = averages.shape[1]
        diameter_px = (
            particle_diameter_angstrom / class_pixel_size_angstrom if particle_diameter_angstrom else 0.8 * box
        )
        rng = np.random.default_rng(seed)
        corrs, resolutions = [], []
        for cls, members in good.groupby("cls"):
            if cls in junk_classes or len(members) < min_class_particles:
                continue
            corr, res = _class_fidelity(
                averages[int(cls) - offset],
                members,
                spectrum,
                class_pixel_size_angstrom,
                min(diameter_px / 2, box / 2 - 1),
                fidelity_views,
                rng,
            )
            corrs.append(corr)
            resolutions.append(res)
        if corrs:
            fidelity_corr, fidelity_res = float(np.median(corrs)), float(np.median(resolutions))

    return QualityReport(
        n_particles=len(merged),
        n_junk=n_junk,
        populated_classes=int((counts >= min_class_particles).sum()),
        junk_isolation=float(in_junk_class[junk].mean()) if n_junk else float("nan"),
        good_kept=float((~in_junk_class[~junk]).mean()) if n_good else float("nan"),
        view_purity_degrees=float(np.median(np.concatenate(purity_angles))) if purity_angles else float("nan"),
        in_plane_spread_degrees=_weighted_median(spreads),
        fidelity_correlation=fidelity_corr,
        fidelity_resolution_angstrom=fidelity_res,
    )


def _weighted_median(values_and_weights: list[tuple[float, int]]) -> float:
    if not values_and_weights:
        return float("nan")
    values = np.array([v for v, _ in values_and_weights])
    weights = np.array([w for _, w in values_and_weights], dtype=np.float64)
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


__all__ = [
    "QualityReport",
    "align_to_reference",
    "circular_std_degrees",
    "fourier_ring_correlation",
    "frc_resolution_angstrom",
    "in_plane_spread_degrees",
    "medoid_direction",
    "score_classification",
]
