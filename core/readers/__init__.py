"""Readers of particle files, shared by the streamer and ``otf2d classify``.

Metadata first, pixels later::

    table = read_particle_table("Extract/job007/particles.star")   # RELION STAR or cryoSPARC .cs
    for batch in iter_batches(table, batch_size=256):              # ParticleBatch, images read lazily
        ...

``read_particle_table`` sniffs the format (RELION 3.0–5 ``particles.star``, per-micrograph
``_extract.star`` with ``optics_from=``, cryoSPARC ``.cs``); ``load_batch`` reads any subset;
``check_stacks`` verifies stacks without reading pixels; ``read_stack_images`` reads a bare stack.
"""

from otf2d.core.readers.check import StackCheck, check_stacks
from otf2d.core.readers.loader import StackPool, iter_batches, load_batch
from otf2d.core.readers.sniff import read_particle_table, sniff_format
from otf2d.core.readers.stacks import StackHeader, read_images, read_stack_header, read_stack_images
from otf2d.core.readers.table import Alignments2D, ParticleTable

__all__ = [
    "Alignments2D",
    "ParticleTable",
    "StackCheck",
    "StackHeader",
    "StackPool",
    "check_stacks",
    "iter_batches",
    "load_batch",
    "read_images",
    "read_particle_table",
    "read_stack_header",
    "read_stack_images",
    "sniff_format",
]
