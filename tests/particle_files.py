"""Writers of small particle files with known content, shared by the reader and inspect tests.

They write the formats by hand (STAR text, ``np.save`` of a structured array, ``mrcfile.new``) so that
the readers are checked against files produced independently of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import mrcfile
import numpy as np


def write_stack(path: Path, images: np.ndarray, *, voxel_size: float = 0.0) -> Path:
    """Write ``images`` (``(n, h, w)`` or ``(h, w)``) as an MRC file, in their own dtype."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, data=images, overwrite=True) as mrc:
        if images.ndim == 3:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_size
    return path


def random_images(n: int, box: int, seed: int = 0) -> np.ndarray:
    """``(n, box, box)`` float32 noise with a distinct mean per image."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, box, box)) + np.arange(n)[:, None, None]).astype(np.float32)


def star_loop(name: str, columns: Mapping[str, Sequence[object]]) -> str:
    """One ``data_<name>`` loop block as STAR text."""
    labels = list(columns)
    n = len(columns[labels[0]])
    lines = [f"data_{name}", "", "loop_"]
    lines += [f"_{label} #{i + 1}" for i, label in enumerate(labels)]
    for row in range(n):
        lines.append(" ".join(str(columns[label][row]) for label in labels))
    return "\n".join(lines) + "\n\n"


def write_star(path: Path, *blocks: str, version: bool = True) -> Path:
    """Write STAR text made of :func:`star_loop` blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "\n# version 30001\n\n" if version else ""
    path.write_text(head + "".join(blocks))
    return path


def write_cs(path: Path, fields: dict[str, np.ndarray]) -> Path:
    """Write a cryoSPARC-style ``.cs``: a structured array saved with ``np.save`` (no ``.npy`` added)."""
    n = len(next(iter(fields.values())))
    dtype = [(name, values.dtype, values.shape[1:]) for name, values in fields.items()]
    records = np.zeros(n, dtype=dtype)
    for name, values in fields.items():
        records[name] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.save(fh, records)
    return path
