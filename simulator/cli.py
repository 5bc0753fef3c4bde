"""Simulate a collection session: RELION Extract output, micrograph by micrograph, with ground truth.

The virtual microscope projects a 3D map (the built-in asymmetric phantom, or --map) at random
RELION Euler angles, shifts each particle by a few pixels, applies RELION's CTF of its micrograph
(300 kV, Cs 2.7 mm, amplitude contrast 0.1, defocus 0.8-2.5 um, up to 400 A astigmatism), adds
white noise at --snr (signal variance inside the particle circle / noise variance), mixes in junk
(pure noise, ice, carbon edges, aggregates, a different protein) and normalises like RELION.

Written under --out (the RELION project directory), in RELION's order:
  Extract/job005/Movies/mic_NNNNN.mrcs          float32 stack, pixel size in the header
  Extract/job005/Movies/mic_NNNNN_extract.star  data_images, via .tmp + rename
  Extract/job005/particles.star                 optics + all particles so far, via .tmp + rename
  truth.csv                                     truth per particle (RELION labels), appended
  simulation.json, truth_map.mrc                provenance

Defaults: 2,000 particles on 20 micrographs; the phantom (~150 A) in a 64 px box at 4 A/px.
With --map: the map's own box (rounded up to even) and voxel size; a map whose header voxel size
is 0 (e.g. ASPIRE's 65^3 ribosome) needs --map-pixel-size, else it is taken to be sampled at
--pixel-size (4 A/px when that is not given either).

Example:
  otf2d simulate --out /tmp/session --particles 5000 --micrographs 50 --rate 600 --preferred-orientation
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.session import MicrographResult, simulate_session


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``otf2d simulate``."""
    parser.add_argument("--out", required=True, type=Path, help="project directory to write into")
    parser.add_argument("--map", type=Path, default=None, help="MRC map to project (default: built-in phantom)")
    parser.add_argument(
        "--map-pixel-size",
        type=float,
        default=None,
        metavar="A",
        help="voxel size of --map in A (overrides its header; needed when the header says 0)",
    )
    parser.add_argument("--particles", type=int, default=2000, help="particles in the session (default 2000)")
    parser.add_argument("--micrographs", type=int, default=20, help="micrographs to spread them over (default 20)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="PER_MIN",
        help="particles per minute to write at; 0 = as fast as possible (default)",
    )
    parser.add_argument("--snr", type=float, default=0.05, help="signal/noise variance in the particle (default 0.05)")
    parser.add_argument("--junk-fraction", type=float, default=0.2, help="share of junk images (default 0.2)")
    parser.add_argument(
        "--preferred-orientation",
        action="store_true",
        help="75%% of the views about one view (Gaussian, 6 degrees per axis), 10%% about a second",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give identical files (default 0)")
    parser.add_argument(
        "--box",
        type=int,
        default=None,
        metavar="PX",
        help="particle box, even (default 64 for the phantom, the map's box for --map)",
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="A",
        help="A/px of the particles (default 4 for the phantom, the map's voxel size for --map)",
    )
    parser.add_argument(
        "--stack-growth",
        choices=("atomic", "append"),
        default="atomic",
        help="write stacks via .tmp + rename, or grow them image by image like RELION",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier session's files in --out")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def main(args: argparse.Namespace) -> int:
    """Run ``otf2d simulate``; returns the exit status."""
    config = SimulationConfig(
        n_particles=args.particles,
        n_micrographs=args.micrographs,
        map_path=args.map,
        map_pixel_size_angstrom=args.map_pixel_size,
        box=args.box,
        pixel_size_angstrom=args.pixel_size,
        snr=args.snr,
        junk_fraction=args.junk_fraction,
        preferred_orientation=args.preferred_orientation,
        rate_per_minute=args.rate,
        seed=args.seed,
        stack_growth=args.stack_growth,
    )

    def report(result: MicrographResult, total: int, elapsed: float) -> None:
        if args.quiet:
            return
        p = result.particles
        rate = 60.0 * total / elapsed if elapsed > 0 else float("inf")
        print(
            f"micrograph {result.index}/{config.n_micrographs}: {len(p)} images ({int(p.is_junk.sum())} junk) "
            f"-> {result.stack_path.name}; {total} so far, {rate:.0f}/min",
            flush=True,
        )

    summary = simulate_session(config, args.out, progress=report, overwrite=args.overwrite)
    print(summary.describe(), file=sys.stdout)
    return 0
