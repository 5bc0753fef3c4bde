"""The input options that ``otf2d classify`` and ``otf2d inspect`` share, and the table they read.

Both commands read a particle file the same way (``otf2d.core.readers.read_particle_table``): where
its stacks live (``--project-dir``), whose optics apply to an ``_extract.star`` (``--optics-from``)
and the microscope values a file may lack (``--pixel-size``, ``--voltage``, ``--cs``,
``--amplitude-contrast``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from otf2d.core.readers import ParticleTable, read_particle_table


def add_input_args(parser: argparse.ArgumentParser | Any) -> None:
    """Add the input options to ``parser`` (a parser or an argument group)."""
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=None,
        help="directory the stack paths are relative to (default: found from the input's location)",
    )
    parser.add_argument(
        "--optics-from", type=Path, default=None, help="RELION file whose data_optics applies (for _extract.star input)"
    )
    parser.add_argument("--pixel-size", type=float, default=None, metavar="A", help="A/px (overrides the file)")
    parser.add_argument("--voltage", type=float, default=None, metavar="KV", help="kV (overrides the file)")
    parser.add_argument(
        "--cs", type=float, default=None, metavar="MM", help="spherical aberration, mm (overrides the file)"
    )
    parser.add_argument(
        "--amplitude-contrast", type=float, default=None, metavar="Q0", help="fraction, e.g. 0.1 (overrides the file)"
    )


def read_table_from_args(path: str | Path, args: argparse.Namespace) -> ParticleTable:
    """The particle table of ``path`` read with the options of :func:`add_input_args`."""
    return read_particle_table(
        path,
        project_dir=args.project_dir,
        optics_from=args.optics_from,
        pixel_size_angstrom=args.pixel_size,
        voltage_kv=args.voltage,
        spherical_aberration_mm=args.cs,
        amplitude_contrast=args.amplitude_contrast,
    )


__all__ = ["add_input_args", "read_table_from_args"]
