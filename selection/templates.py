"""Class averages as picking templates: re-centred, low-passed, background 0, protein white.

For each chosen class average ``(h, w)``, in this order:

1. **re-centre**: the centre of mass of its density (``otf2d.monitoring.quality.density_centres_yx``:
   pixels more than 2σ of the background above the background, inside the mask) is moved onto the
   box centre ``(h // 2, w // 2)`` with a Fourier phase shift (sub-pixel,
   ``otf2d.monitoring.image_geometry.shift_images``; periodic, so what leaves one edge enters the other);
2. **low-pass**: a raised-cosine filter, transmission 1 below ``(1 − w/2)·f_c``, 0 above
   ``(1 + w/2)·f_c`` and ½(1 + cos) in between, with ``f_c = 1 / lowpass_angstrom`` (so exactly ½ at
   the given resolution) and ``w`` = :data:`EDGE_WIDTH_FRACTION`;
3. **background**: the median outside the mask is subtracted, so the background is ≈ 0.

**Sign convention**: protein is white (positive density) on a background of ≈ 0 — the contrast
of otf2d's class averages (RELION's convention after extraction, which inverts the micrograph
contrast). That is what RELION's autopick expects of references with its default settings (no
``--invert``), and what cryoSPARC's template picker takes. ``invert`` flips the sign for averages
that show protein dark. Templates are CTF-corrected (Wiener-filtered class averages), as RELION's
"References are CTF corrected" default assumes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import numpy.typing as npt

from otf2d.core.durable import atomic_output
from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.image_geometry import image_centre, radius_grid, shift_images
from otf2d.monitoring.quality import density_centres_yx, mask_radius_pixels

FloatArray = npt.NDArray[np.float64]

#: Default low-pass resolution of templates (Å): RELION autopick's default for references.
DEFAULT_LOWPASS_ANGSTROM = 20.0
#: Width of the raised-cosine edge as a fraction of the cut-off frequency.
EDGE_WIDTH_FRACTION = 0.2
#: The sign convention, as written into the MRC header and printed by the command.
SIGN_CONVENTION = "protein white (positive density), background ~0"
#: MRC header labels hold at most this many ASCII characters each, and at most this many labels.
MRC_LABEL_CHARS = 80
MRC_MAX_LABELS = 10


@dataclass(frozen=True)
class Templates:
    """Picking templates made from class averages.

    Attributes
    ----------
    images
        ``(n, h, w)`` float32 templates.
    class_numbers
        RELION class number (1-based) of each template.
    shifts_yx
        ``(n, 2)`` shift applied to each average to centre it (pixels, content moved by ``+shift``).
    pixel_size_angstrom
        Å per pixel.
    lowpass_angstrom
        Resolution of the low-pass (Å), ``None`` when not filtered.
    """

    images: np.ndarray
    class_numbers: list[int]
    shifts_yx: FloatArray
    pixel_size_angstrom: float
    lowpass_angstrom: float | None


def raised_cosine_lowpass(
    images: npt.ArrayLike,
    pixel_size_angstrom: float,
    lowpass_angstrom: float,
    *,
    edge_width_fraction: float = EDGE_WIDTH_FRACTION,
) -> FloatArray:
    """Low-pass images with a raised-cosine edge centred on ``1 / lowpass_angstrom``.

    Parameters
    ----------
    images
        ``(n, h, w)`` or ``(h, w)`` real images.
    pixel_size_angstrom
        Å per pixel.
    lowpass_angstrom
        Resolution (Å) where the transmission is ½; must be coarser than Nyquist (2 pixels).
    edge_width_fraction
        Width of the edge over the cut-off frequency (in (0, 2)).

    Returns
    -------
    numpy.ndarray
        Same shape as ``images``, float64.

    Raises
    ------
    InputError
        A non-positive pixel size, or a resolution at or beyond Nyquist.
    """
    arr = np.asarray(images, dtype=np.float64)
    if not pixel_size_angstrom > 0:
        raise InputError(None, f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    nyquist = 2.0 * pixel_size_angstrom
    if not lowpass_angstrom > nyquist:
        raise InputError(
            None,
            f"--lowpass {lowpass_angstrom:g} Å is not coarser than Nyquist ({nyquist:g} Å at "
            f"{pixel_size_angstrom:g} Å/px): give a larger value, or 0 for no low-pass",
        )
    if not 0.0 < edge_width_fraction < 2.0:
        raise InputError(None, f"edge width fraction must lie in (0, 2), got {edge_width_fraction}")
    h, w = arr.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    frequency = np.hypot(fy, fx) / pixel_size_angstrom  # 1/Å
    cutoff = 1.0 / lowpass_angstrom
    low, high = cutoff * (1.0 - edge_width_fraction / 2.0), cutoff * (1.0 + edge_width_fraction / 2.0)
    ramp = np.clip((frequency - low) / (high - low), 0.0, 1.0)
    transmission = 0.5 * (1.0 + np.cos(np.pi * ramp))
    return np.asarray(np.fft.irfft2(np.fft.rfft2(arr) * transmission, s=(h, w)))


def centring_shifts_yx(averages: npt.ArrayLike, mask_radius: float) -> FloatArray:
    """``(K, 2)`` shifts (pixels) that move each average's density centre of mass onto the box centre."""
    stack = np.asarray(averages, dtype=np.float64)
    cy, cx = image_centre(stack.shape)
    return np.asarray(np.array([cy, cx])[None, :] - density_centres_yx(stack, mask_radius))


def make_templates(
    snapshot: ClassSnapshot,
    class_numbers: Sequence[int],
    *,
    lowpass_angstrom: float | None = DEFAULT_LOWPASS_ANGSTROM,
    recentre: bool = True,
    invert: bool = False,
) -> Templates:
    """Templates from the averages of ``class_numbers`` (see the module docstring).

    Parameters
    ----------
    snapshot
        Class averages ``(K, h, w)`` at ``snapshot.pixel_size_angstrom``.
    class_numbers
        RELION class numbers (1-based), in the order of the output stack.
    lowpass_angstrom
        Low-pass resolution (Å); ``None`` or 0 for none.
    recentre
        Move each average's density centre of mass onto the box centre.
    invert
        Multiply by −1 (for averages that show protein dark).

    Raises
    ------
    InputError
        No class, a class number the snapshot lacks, or a resolution beyond Nyquist.
    """
    k = snapshot.n_classes
    numbers = [int(c) for c in class_numbers]
    if not numbers:
        raise InputError(None, "no class to make templates of")
    unknown = sorted({c for c in numbers if not 1 <= c <= k})
    if unknown:
        raise InputError(None, f"class(es) {unknown} do not exist: this snapshot has classes 1..{k}")
    averages = np.asarray(snapshot.averages, dtype=np.float64)[np.asarray(numbers) - 1]
    averages = np.where(np.isfinite(averages), averages, 0.0)
    if invert:
        averages = -averages
    _, h, w = averages.shape
    radius = mask_radius_pixels(snapshot.parameters, max(h, w), snapshot.pixel_size_angstrom)
    shifts = centring_shifts_yx(averages, radius) if recentre else np.zeros((len(numbers), 2))
    images = shift_images(averages, shifts[:, 0], shifts[:, 1]) if recentre else averages
    if lowpass_angstrom:
        images = raised_cosine_lowpass(images, snapshot.pixel_size_angstrom, float(lowpass_angstrom))
    outside = radius_grid(images.shape) > radius
    if outside.sum() >= 8:
        images = images - np.median(images[:, outside], axis=1)[:, None, None]
    return Templates(
        images=np.ascontiguousarray(images, dtype=np.float32),
        class_numbers=numbers,
        shifts_yx=np.asarray(shifts, dtype=np.float64),
        pixel_size_angstrom=float(snapshot.pixel_size_angstrom),
        lowpass_angstrom=float(lowpass_angstrom) if lowpass_angstrom else None,
    )


def header_labels(templates: Templates, source: str = "") -> list[str]:
    """The MRC header labels (ASCII, ≤ 80 characters each) describing ``templates``."""
    lowpass = (
        f"low-pass {templates.lowpass_angstrom:g} A (raised cosine)" if templates.lowpass_angstrom else "no low-pass"
    )
    numbers = ",".join(str(c) for c in templates.class_numbers)
    labels = [
        f"otf2d templates: {len(templates.class_numbers)} class averages {source}".strip(),
        f"sign: {SIGN_CONVENTION}",
        "centred on the density centre of mass (Fourier shift); CTF-corrected averages",
        f"{lowpass}; pixel {templates.pixel_size_angstrom:g} A",
        f"classes {numbers}",
    ]
    clean = [label.encode("ascii", "replace").decode("ascii") for label in labels]
    return [label if len(label) <= MRC_LABEL_CHARS else label[: MRC_LABEL_CHARS - 3] + "..." for label in clean]


def write_templates_mrcs(path: str | os.PathLike[str], templates: Templates, *, labels: Sequence[str] = ()) -> Path:
    """Write ``templates`` as a float32 MRC image stack (``ispg`` 0) atomically.

    The pixel size goes into the header (``voxel_size``), ``labels`` into its text labels.

    Returns
    -------
    Path
        ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = [str(label)[:MRC_LABEL_CHARS] for label in labels][:MRC_MAX_LABELS]
    with atomic_output(target) as tmp, mrcfile.new(tmp) as mrc:
        mrc.set_data(np.ascontiguousarray(templates.images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = templates.pixel_size_angstrom
        for i, label in enumerate(text):
            mrc.header.label[i] = label.encode("ascii", "replace")
        if text:
            mrc.header.nlabl = len(text)
        mrc.update_header_stats()
        mrc.flush()
    return target


__all__ = [
    "DEFAULT_LOWPASS_ANGSTROM",
    "EDGE_WIDTH_FRACTION",
    "SIGN_CONVENTION",
    "Templates",
    "centring_shifts_yx",
    "header_labels",
    "make_templates",
    "raised_cosine_lowpass",
    "write_templates_mrcs",
]
