"""Junk hiding inside good classes: ``otf2d select --auto`` with and without the per-particle junk score.

Simulates sessions with ground truth (the virtual microscope), classifies each with ``otf2d classify``
(10 classes, the short schedule of the selection tests), then compares, on the truth, whole-class
selection (``--particle-junk-threshold 1``) with the default (particles scoring above 0.5 left out):
junk kept, good kept, and which kinds of junk the per-particle score removed.

Sessions (``SESSIONS``): ``preferred`` (1,000 particles, 25 % junk, preferred orientation, seed 3: the
selection tests' session) and ``uniform`` (2,000 particles, the simulator's defaults: 20 % junk, seed 4).

Usage::

    .venv/bin/python benchmarks/particle_junk.py            # ~1 min on 2 idle cores
    .venv/bin/python benchmarks/particle_junk.py --out /tmp/pj --sessions uniform
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from otf2d.core.cli import main as otf2d
from otf2d.monitoring.particle_junk import DEFAULT_PARTICLE_THRESHOLD, particle_junk_scores
from otf2d.monitoring.snapshots.reader import read_snapshot
from otf2d.selection.choose import choose_classes
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.session import simulate_session

SESSIONS = {
    "preferred": SimulationConfig(
        n_particles=1000, n_micrographs=5, snr=0.1, junk_fraction=0.25, preferred_orientation=True, seed=3
    ),
    "uniform": SimulationConfig(n_particles=2000, n_micrographs=20, seed=4),
}
CLASSIFY = [
    "--classes", "10", "--batch-per-class", "30", "--online-em-iterations", "12", "--in-plane-step", "10",
    "--max-res", "12", "--max-shift", "12", "--threads", "2", "--seed", "0", "--quiet",
]  # fmt: skip


def measure(name: str, out: Path) -> list[str]:
    """Simulate, classify and compare the two selections of one session; the report lines."""
    summary = simulate_session(SESSIONS[name], out / name)
    run_dir = summary.out_dir / "Class2D" / "otf2d"
    if otf2d(["classify", str(summary.particles_star), "--out", str(run_dir), *CLASSIFY]) != 0:
        raise SystemExit(f"otf2d classify failed on session {name}")
    snapshot = read_snapshot(run_dir).snapshot
    truth = pd.read_csv(summary.truth_csv).set_index("rlnImageName").loc[snapshot.particles.image_names()]
    junk = truth["is_junk"].astype(str).str.lower().isin(["1", "true"]).to_numpy()
    whole = choose_classes(snapshot, auto=True, source=run_dir).particle_index(snapshot)
    scores = particle_junk_scores(snapshot)
    kept = whole[scores[whole] <= DEFAULT_PARTICLE_THRESHOLD]
    removed = np.setdiff1d(whole, kept)
    kinds = truth["junk_type"].fillna("good").astype(str).to_numpy()
    kinds = np.where(junk, kinds, "good")
    removed_kinds = pd.Series(kinds[removed]).value_counts().to_dict()
    lines = [f"session {name}: {len(junk)} particles, {int(junk.sum())} junk"]
    for label, index in (("whole classes", whole), ("+ particle score <= 0.5", kept)):
        lines.append(
            f"  {label:<24} kept {len(index):>5}   junk kept {int(junk[index].sum()):>4} / {int(junk.sum())}"
            f"   good kept {int((~junk[index]).sum()):>5} / {int((~junk).sum())}"
        )
    lines.append(f"  removed by the particle score: {removed_kinds or 'nothing'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where to simulate (default: a temporary folder)")
    parser.add_argument("--sessions", nargs="+", choices=sorted(SESSIONS), default=sorted(SESSIONS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for name in args.sessions:
            print("\n".join(measure(name, out)))


if __name__ == "__main__":
    main()
