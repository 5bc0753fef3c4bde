"""Reading a planned batch back from disk when it is sent (the backlog lives on disk, not in memory)."""

from __future__ import annotations

import numpy as np

from otf2d.core.errors import InputError
from otf2d.core.particles import CtfParams, ParticleBatch
from otf2d.core.readers import read_images, read_stack_header
from otf2d.core.wire import CTF_FIELDS
from otf2d.streamer.ledger import PlannedBatch


def load_planned(planned: PlannedBatch, session: str) -> ParticleBatch:
    """The :class:`ParticleBatch` of a planned batch: metadata from the ledger, images from the stacks.

    Parameters
    ----------
    planned
        From the ledger.
    session
        Session name of the particle keys.

    Returns
    -------
    ParticleBatch
        ``images`` ``(n, h, w)``: float16 when every stack is MRC mode 12, else float32.

    Raises
    ------
    InputError
        A stack vanished, shrank, changed box, or holds NaN/Inf (the subclass says which).
    """
    stacks = np.asarray(planned.stack_paths, dtype=str)
    indices = np.asarray(planned.indices, dtype=np.int64)
    headers = {s: read_stack_header(f, referenced_by=planned.source) for s, f in planned.stack_files.items()}
    boxes = {(h.height, h.width) for h in headers.values()}
    if len(boxes) != 1:
        raise InputError(planned.source, f"stacks of one batch have different boxes {sorted(boxes)}")
    height, width = boxes.pop()
    half = all(h.mode == 12 for h in headers.values())
    images = np.empty((len(indices), height, width), dtype=np.float16 if half else np.float32)
    for stack, header in headers.items():
        members = np.flatnonzero(stacks == stack)
        images[members] = read_images(header, indices[members], referenced_by=planned.source)
    batch = ParticleBatch(
        images=images,
        pixel_size_angstrom=planned.pixel_size_angstrom,
        ctf=CtfParams(**{name: planned.ctf[:, k] for k, name in enumerate(CTF_FIELDS)}),
        session=session,
        stack_paths=stacks,
        indices=indices,
        optics_groups=np.asarray(planned.optics_groups, dtype=np.int64),
    )
    batch.check_finite(source=planned.source)
    return batch


__all__ = ["load_planned"]
