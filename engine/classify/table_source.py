"""A particle table on disk as a random-access ``ParticleSource`` (``otf2d.engine.em.driver``).

``otf2d classify`` never loads a whole data set: the driver asks for mini-batches of random rows
during online EM and for consecutive chunks during full passes, and each request reads only those
particles' images (``otf2d.core.readers.load_batch`` through a shared stack-header cache, images memory
mapped). Every read is reported to an optional callback, which is how the progress bar knows how
far a full pass has got.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError
from otf2d.core.particles import ParticleBatch
from otf2d.core.readers import ParticleTable, StackPool, load_batch


class TableSource:
    """Rows of a ``ParticleTable`` read on demand (satisfies ``otf2d.engine.em.driver.ParticleSource``).

    Parameters
    ----------
    table
        From ``otf2d.core.readers.read_particle_table``.
    on_read
        Called with the number of particles of every read, after it.
    check_finite
        Refuse images holding NaN or Inf (``NonFiniteError`` naming the stack).

    Raises
    ------
    InputError
        An empty table.
    """

    def __init__(
        self,
        table: ParticleTable,
        *,
        on_read: Callable[[int], None] | None = None,
        check_finite: bool = True,
    ) -> None:
        if len(table) == 0:
            raise InputError(table.source, "the file lists no particles")
        self.table = table
        self.on_read = on_read
        self.check_finite = check_finite
        self.pool = StackPool(table)
        self.particles_read = 0

    def __len__(self) -> int:
        return len(self.table)

    def take(self, index: npt.ArrayLike) -> ParticleBatch:
        """The particles at rows ``index`` (0-based, in that order), images read now.

        Parameters
        ----------
        index
            ``(m,)`` integer row numbers.

        Returns
        -------
        ParticleBatch
            ``images`` ``(m, box, box)``.
        """
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        batch = load_batch(self.table, rows, check_finite=self.check_finite, pool=self.pool)
        self.particles_read += len(rows)
        if self.on_read is not None:
            self.on_read(len(rows))
        return batch

    def labels(self, index: npt.ArrayLike) -> ParticleTable:
        """The rows ``index`` of the table (who the particles are), no image read
        (``otf2d.engine.em.distributed.LabelledSource``)."""
        return self.table.take(np.asarray(index, dtype=np.int64).reshape(-1))


__all__ = ["TableSource"]
