"""Verdict timelines from real classification runs: ``benchmarks/verdict_timelines.py`` on smaller grids.

Three grids of the virtual microscope (good: 20 % junk, 5 views; junk-heavy: 80 % junk; preferred:
75 % of the particles about one view), 4,000 particles each, classified in arrival order by the
engine's classifier (K = 30, 30 particles per class to initialise: the benchmark's defaults) and
judged by the engine's monitoring every 500 particles; seeds 0, 1 and 2, 2 CPU threads. Everything
is compared with the simulator's truth.

Each seed is one classification run, and a run is chaotic: a rounding difference (another NumPy or
PyTorch build) changes which particles seed which class. One seed's numbers are therefore not a
property of the code; these tests assert what holds for each of three seeds, and judge the junk
fraction, a statistical estimate, by its mean over them. Measured 2026-12-04 (seeds 0 / 1 / 2 / 3),
the particle count from which every later verdict is the expected one:

- good → collect from 2,000 on, the first verdict (all seeds);
- junk-heavy → abandon from 2,000 on (seed 1: marginal at 2,000, then abandon); junk fraction at
  the last snapshot 94 / 71 / 78 / 87 % against a true 80 %: off by up to 0.14 in one run, by 0.01
  in the mean of seeds 0-2;
- preferred → marginal from 4,000 / 4,000 / 2,000 / 2,000 (before that "collect", while the classes
  of the main view are still forming and the largest view holds 45–60 % of the good particles).
  On 2026-11-21, with other library builds, seed 0 said marginal from 3,000.

The five distinct views of the good grid come out as 10-13 (the classifier splits a view over
classes that do not look alike enough to merge); the five biggest measured views are five different
true views, each mostly one: 71-87 % (seeds 0, 1) of their particles, but in seed 2 the largest
view (1,021 particles) is 59 % one true view and 41 % others, a partial merge, and the fifth true
view is left with a view of 86 particles. Hence a majority (> 50 %), not 60 % as seed 0 alone had
suggested.

Runs ~2 min on 2 idle cores (``@pytest.mark.slow``).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "verdict_timelines.py"

#: Particles per grid, the verdict cadence of this test, and the seeds of the runs.
PARTICLES = 4000
EVERY = 500
SEEDS = (0, 1, 2)
#: Bounds: the verdict is the expected one at every snapshot from this many particles on.
COLLECT_BY = 2500
JUNK_HEAVY_BY = 2500
PREFERRED_BY = PARTICLES
#: Largest allowed |measured − true| junk fraction at the last snapshot (good grid: each run;
#: junk-heavy grid: the mean over the seeds).
JUNK_FRACTION_TOLERANCE = 0.10
#: Largest allowed |measured − true| share of the preferred view at the last snapshot.
MAIN_VIEW_TOLERANCE = 0.15


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_verdict_timelines", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def seeded_runs() -> Iterator[dict[int, dict[str, Any]]]:
    """``{seed: {grid name: run}}``."""
    bench = load_benchmark()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = {}
        for seed in SEEDS:
            params = bench.classification_params(bench.parse_args(["--seeds", str(seed)]))
            out[seed] = {
                name: bench.run_grid(spec, n_particles=PARTICLES, every=EVERY, params=params, seed=seed)
                for name, spec in bench.GRIDS.items()
            }
        yield out
    finally:
        torch.set_num_threads(threads)


def _of_grid(seeded_runs: dict[int, dict[str, Any]], name: str) -> list[Any]:
    return [runs[name] for runs in seeded_runs.values()]


def _settled_by(run: Any, accepted: set[str]) -> int | None:
    """The particle count from which every verdict is in ``accepted`` (``None`` if the last is not)."""
    since = None
    for row in reversed(run.rows):
        if row.verdict not in accepted:
            break
        since = row.particles
    return since


def _timeline(run: Any) -> str:
    return "\n".join(f"{r.particles} {r.verdict} {r.junk_fraction:.2f} {r.largest_view_share:.2f}" for r in run.rows)


@pytest.mark.slow
def test_the_timelines_cover_the_grids_every_500_particles(seeded_runs: dict[int, dict[str, Any]]) -> None:
    for run in (run for runs in seeded_runs.values() for run in runs.values()):
        assert run.rows[-1].particles == PARTICLES
        judged = [r.particles for r in run.rows if r.particles >= 2000]
        assert judged == list(range(2000, PARTICLES + 1, EVERY))
        assert all(r.verdict == "pending" for r in run.rows if r.particles < 2000)  # VerdictConfig.min_particles
        assert all(abs(r.true_junk_fraction - run.spec.junk_fraction) < 0.05 for r in run.rows if r.particles >= 2000)


@pytest.mark.slow
def test_the_good_grid_says_collect(seeded_runs: dict[int, dict[str, Any]]) -> None:
    for run in _of_grid(seeded_runs, "good"):
        since = _settled_by(run, {"collect"})
        assert since is not None and since <= COLLECT_BY, _timeline(run)
        last = run.rows[-1]
        assert abs(last.junk_fraction - last.true_junk_fraction) <= JUNK_FRACTION_TOLERANCE, _timeline(run)
        assert run.good_kept >= 0.9  # true particles in classes flagged good


@pytest.mark.slow
def test_the_junk_heavy_grid_says_abandon_or_marginal_and_measures_its_junk(
    seeded_runs: dict[int, dict[str, Any]],
) -> None:
    runs = _of_grid(seeded_runs, "junk-heavy")
    for run in runs:
        since = _settled_by(run, {"abandon", "marginal"})
        assert since is not None and since <= JUNK_HEAVY_BY, _timeline(run)
        assert "junk" in run.rows[-1].reason
        # every junk kind mostly ends in classes flagged junk (ice and carbon edges included)
        for kind, (n, share) in run.junk_recall_by_type.items():
            assert n > 400 and share >= 0.7, f"{kind}: {share:.0%} of {n} in junk classes"
    measured = [run.rows[-1].junk_fraction for run in runs]
    true = [run.rows[-1].true_junk_fraction for run in runs]
    assert abs(sum(measured) - sum(true)) / len(runs) <= JUNK_FRACTION_TOLERANCE, (measured, true)


@pytest.mark.slow
def test_the_preferred_grid_says_abandon_or_marginal_for_its_views(seeded_runs: dict[int, dict[str, Any]]) -> None:
    for run in _of_grid(seeded_runs, "preferred"):
        since = _settled_by(run, {"abandon", "marginal"})
        assert since is not None and since <= PREFERRED_BY, _timeline(run)
        last = run.rows[-1]
        assert "views" in last.reason or "view holds" in last.reason
        assert run.true_main_view_share is not None
        assert abs(last.largest_view_share - run.true_main_view_share) <= MAIN_VIEW_TOLERANCE, _timeline(run)


@pytest.mark.slow
def test_views_of_the_good_grid_are_split_and_each_mostly_one_true_view(
    seeded_runs: dict[int, dict[str, Any]],
) -> None:
    for run in _of_grid(seeded_runs, "good"):
        assert run.true_views == 5
        assert run.rows[-1].distinct_views >= run.true_views
        biggest = sorted(run.view_purity, key=lambda v: -v[1])[: run.true_views]
        assert sorted(t for _, _, t, _ in biggest) == [1, 2, 3, 4, 5], run.view_purity
        # a majority of one true view each (seed 2's largest view is 59 % one view: a partial merge)
        assert all(purity > 0.5 for _, _, _, purity in biggest), run.view_purity
