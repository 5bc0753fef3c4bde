"""A simulated collection session written to disk micrograph by micrograph, like RELION Extract.

Layout under the output (= RELION project) directory::

    Extract/job005/Movies/mic_00001.mrcs           stack of micrograph 1 (float32)
    Extract/job005/Movies/mic_00001_extract.star   its particles (data_images), renamed into place
    Extract/job005/particles.star                  optics + all particles so far, renamed into place
    truth.csv                                      ground truth, one row per particle, appended
    simulation.json                                the configuration and derived values
    truth_map.mrc                                  the map that was projected

Ground truth follows RELION's conventions (``otf2d.simulator.projection``): a particle written with
``rlnOriginXAngst = ox`` has its centre at ``box // 2 - ox / pixel_size``, so a classifier's
``rlnOriginXAngst`` can be compared with ``truth.csv`` directly. Junk rows have ``is_junk = 1``
and a ``junk_type``; their pose columns hold the pose of the projection inside (a decoy's, the
first member of an aggregate's) or are empty.

Example::

    from otf2d.simulator.config import SimulationConfig
    from otf2d.simulator.session import simulate_session
    summary = simulate_session(SimulationConfig(n_particles=200, n_micrographs=4), "/tmp/sim")
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

from otf2d.core import __version__
from otf2d.core.errors import ConfigError
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.particles import (
    SimulatedParticles,
    SimulationSetup,
    draw_ctf,
    prepare_simulation,
    simulate_particles,
)
from otf2d.simulator.relion_output import (
    append_truth,
    extract_table,
    optics_table,
    start_truth,
    write_stack,
    write_star,
)
from otf2d.simulator.views import PREFERRED_VIEWS_DEGREES

#: Side of the virtual micrographs (pixels at the micrograph pixel size) that picks lie on.
MICROGRAPH_SIDE = 4096


@dataclass(frozen=True)
class MicrographResult:
    """One micrograph written to disk.

    Attributes
    ----------
    index
        1-based micrograph number.
    micrograph_name
        ``rlnMicrographName`` (relative to the project).
    stack_path, extract_star_path
        Absolute paths of the stack and its ``_extract.star``.
    particles
        The images and their ground truth.
    written_at
        ``time.monotonic()`` when the ``_extract.star`` appeared.
    """

    index: int
    micrograph_name: str
    stack_path: Path
    extract_star_path: Path
    particles: SimulatedParticles
    written_at: float


@dataclass(frozen=True)
class SessionSummary:
    """What a finished session wrote."""

    out_dir: Path
    n_micrographs: int
    n_particles: int
    n_junk: int
    junk_counts: dict[str, int]
    elapsed_seconds: float
    particles_star: Path
    truth_csv: Path
    box: int
    pixel_size_angstrom: float
    particle_diameter_angstrom: float
    source: str
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        """A few human-readable lines."""
        rate = 60.0 * self.n_particles / self.elapsed_seconds if self.elapsed_seconds > 0 else float("inf")
        junk = ", ".join(f"{k} {v}" for k, v in sorted(self.junk_counts.items())) or "none"
        return "\n".join(
            [
                f"wrote {self.n_particles} particles ({self.n_junk} junk: {junk}) on {self.n_micrographs} "
                f"micrographs in {self.elapsed_seconds:.1f} s ({rate:.0f} particles/min)",
                f"  map: {self.source}; box {self.box} px at {self.pixel_size_angstrom:g} Å/px; "
                f"particle diameter {self.particle_diameter_angstrom:.0f} Å",
                f"  particles: {self.particles_star}",
                f"  truth:     {self.truth_csv}",
            ]
        )


def particles_per_micrograph(config: SimulationConfig) -> list[int]:
    """How many images each micrograph gets: ``n_particles`` spread as evenly as possible."""
    base, extra = divmod(config.n_particles, config.n_micrographs)
    return [base + (1 if m < extra else 0) for m in range(config.n_micrographs)]


def _paths(config: SimulationConfig, out_dir: Path, index: int) -> tuple[str, str, Path, Path]:
    stack_rel = f"{config.extract_job}/Movies/mic_{index:05d}.mrcs"
    mic_name = f"{config.motioncorr_job}/Movies/mic_{index:05d}.mrc"
    stack = out_dir / stack_rel
    star = stack.with_name(f"mic_{index:05d}_extract.star")
    return stack_rel, mic_name, stack, star


def _prepare_out_dir(config: SimulationConfig, out_dir: Path, overwrite: bool) -> None:
    job = out_dir / config.extract_job
    ours = [job / "particles.star", out_dir / "truth.csv", out_dir / "simulation.json", out_dir / "truth_map.mrc"]
    ours += sorted((job / "Movies").glob("mic_*")) if (job / "Movies").is_dir() else []
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            out_dir, f"holds a previous session ({existing[0].name}, …); choose another --out or pass --overwrite"
        )
    for p in existing:
        p.unlink()
    (job / "Movies").mkdir(parents=True, exist_ok=True)


def _write_provenance(setup: SimulationSetup, out_dir: Path) -> None:
    cfg = setup.config
    record = {
        "otf2d_version": __version__,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "box": setup.box,
        "pixel_size_angstrom": setup.pixel_size_angstrom,
        "map_source": setup.source,
        "map_pixel_size_angstrom": setup.volume_pixel_size_angstrom,
        "particle_diameter_angstrom": setup.particle_diameter_angstrom,
        "noise_sigma_before_normalisation": setup.noise_sigma,
        "preferred_views_rot_tilt_degrees": [list(v) for v in PREFERRED_VIEWS_DEGREES],
        "conventions": "RELION 3.1: Euler ZYZ (rot, tilt, psi); particle centre at box//2 - origin/pixel; "
        "rlnImageName indices 1-based; truth.csv columns use RELION labels",
    }
    tmp = out_dir / "simulation.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "simulation.json")
    tmp_map = out_dir / "truth_map.mrc.tmp"
    with mrcfile.new(tmp_map, overwrite=True) as mrc:
        mrc.set_data(setup.volume.astype(np.float32))
        mrc.voxel_size = setup.volume_pixel_size_angstrom
    os.replace(tmp_map, out_dir / "truth_map.mrc")


def iter_session(
    config: SimulationConfig | SimulationSetup, out_dir: str | Path, *, overwrite: bool = False
) -> Iterator[MicrographResult]:
    """Write the session micrograph by micrograph, yielding each one as it lands on disk.

    Parameters
    ----------
    config
        The configuration (or a setup prepared from it).
    out_dir
        Project directory; created if needed.
    overwrite
        Replace the files of an earlier session in ``out_dir`` (only the files a session writes).

    Yields
    ------
    MicrographResult
        After its stack, ``_extract.star``, ``particles.star`` and truth rows are written.

    Raises
    ------
    ConfigError
        If ``out_dir`` holds an earlier session and ``overwrite`` is false.
    """
    setup = config if isinstance(config, SimulationSetup) else prepare_simulation(config)
    cfg = setup.config
    out = Path(out_dir).resolve()
    _prepare_out_dir(cfg, out, overwrite)
    _write_provenance(setup, out)
    truth_csv = out / "truth.csv"
    start_truth(truth_csv)
    mic_pixel = cfg.micrograph_pixel_size_angstrom or setup.pixel_size_angstrom / 4.0
    optics = optics_table(
        pixel_size_angstrom=setup.pixel_size_angstrom,
        micrograph_pixel_size_angstrom=mic_pixel,
        box=setup.box,
        voltage_kv=cfg.voltage_kv,
        spherical_aberration_mm=cfg.spherical_aberration_mm,
        amplitude_contrast=cfg.amplitude_contrast,
    )
    tables: list[pd.DataFrame] = []
    start = time.monotonic()
    written = 0
    margin = setup.box * setup.pixel_size_angstrom / mic_pixel / 2
    for m, n_here in enumerate(particles_per_micrograph(cfg), start=1):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2, m]))
        mic_ctf = draw_ctf(cfg, 1, rng)
        particles = simulate_particles(setup, n_here, rng, ctf=mic_ctf.take(np.zeros(n_here, dtype=np.int64)))
        coords = rng.uniform(margin, MICROGRAPH_SIDE - margin, (2, n_here))
        max_res = float(rng.uniform(max(3.0, 2.2 * mic_pixel), 7.0))
        fom = float(rng.uniform(0.05, 0.3))
        if cfg.rate_per_minute > 0:
            delay = start + 60.0 * written / cfg.rate_per_minute - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        stack_rel, mic_name, stack, star = _paths(cfg, out, m)
        write_stack(stack, particles.images, setup.pixel_size_angstrom, growth=cfg.stack_growth)
        table = extract_table(
            stack_path=stack_rel,
            micrograph_name=mic_name,
            coordinates_x=coords[0],
            coordinates_y=coords[1],
            defocus_u_angstrom=float(mic_ctf.defocus_u_angstrom[0]),
            defocus_v_angstrom=float(mic_ctf.defocus_v_angstrom[0]),
            defocus_angle_degrees=float(mic_ctf.defocus_angle_degrees[0]),
            ctf_max_resolution_angstrom=max_res,
            ctf_figure_of_merit=fom,
        )
        write_star(star, {"images": table})
        tables.append(table)
        write_star(
            out / cfg.extract_job / "particles.star",
            {"optics": optics, "particles": pd.concat(tables, ignore_index=True)},
        )
        append_truth(truth_csv, _truth_rows(table, particles))
        written += n_here
        yield MicrographResult(m, mic_name, stack, star, particles, time.monotonic())


def _truth_rows(table: pd.DataFrame, p: SimulatedParticles) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnImageName": table["rlnImageName"],
            "rlnMicrographName": table["rlnMicrographName"],
            "is_junk": p.is_junk.astype(np.int64),
            "junk_type": p.junk_type,
            "rlnAngleRot": p.rot,
            "rlnAngleTilt": p.tilt,
            "rlnAnglePsi": p.psi,
            "rlnOriginXAngst": p.origin_x_angstrom,
            "rlnOriginYAngst": p.origin_y_angstrom,
            "rlnDefocusU": p.ctf.defocus_u_angstrom,
            "rlnDefocusV": p.ctf.defocus_v_angstrom,
            "rlnDefocusAngle": p.ctf.defocus_angle_degrees,
        }
    )


def simulate_session(
    config: SimulationConfig | SimulationSetup,
    out_dir: str | Path,
    *,
    progress: Callable[[MicrographResult, int, float], None] | None = None,
    overwrite: bool = False,
) -> SessionSummary:
    """Write a whole session and summarise it.

    Parameters
    ----------
    config
        The configuration (or a setup prepared from it).
    out_dir
        Project directory.
    progress
        Called after each micrograph with the result, the particles written so far and the
        seconds since the start.
    overwrite
        See ``iter_session``.

    Returns
    -------
    SessionSummary
        Counts, paths and timing.
    """
    setup = config if isinstance(config, SimulationSetup) else prepare_simulation(config)
    out = Path(out_dir).resolve()
    start = time.monotonic()
    n = n_junk = n_mics = 0
    junk_counts: dict[str, int] = {}
    files: list[Path] = []
    for result in iter_session(setup, out, overwrite=overwrite):
        p = result.particles
        n += len(p)
        n_junk += int(p.is_junk.sum())
        n_mics += 1
        for kind in p.junk_type[p.is_junk]:
            junk_counts[str(kind)] = junk_counts.get(str(kind), 0) + 1
        files += [result.stack_path, result.extract_star_path]
        if progress is not None:
            progress(result, n, time.monotonic() - start)
    job = out / setup.config.extract_job
    return SessionSummary(
        out_dir=out,
        n_micrographs=n_mics,
        n_particles=n,
        n_junk=n_junk,
        junk_counts=junk_counts,
        elapsed_seconds=time.monotonic() - start,
        particles_star=job / "particles.star",
        truth_csv=out / "truth.csv",
        box=setup.box,
        pixel_size_angstrom=setup.pixel_size_angstrom,
        particle_diameter_angstrom=setup.particle_diameter_angstrom,
        source=setup.source,
        files=files,
    )


__all__ = ["MicrographResult", "SessionSummary", "iter_session", "particles_per_micrograph", "simulate_session"]
