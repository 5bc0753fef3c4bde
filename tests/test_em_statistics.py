"""The E-step keeps, for each particle's most probable class at its best pose, the terms of its
log-likelihood (cryoSPARC's ``cross_cor``, ``slice_pow``, ``image_pow``), in every E-step mode."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import batch_frames, make_batch
from snapshot_factory import make_snapshot

from otf2d.core.wire import decode_batch
from otf2d.engine.em.assignments import assignments_from_posteriors
from otf2d.engine.em.estep import ChunkScores, Posteriors, force_max_posteriors, marginal_posteriors
from otf2d.engine.serving.em_adapter import judgements
from otf2d.engine.storage.journal import STATISTIC_COLUMNS, Journal
from otf2d.monitoring.snapshots.cryosparc import write_cryosparc_cs

R, T, K, B = 6, 5, 4, 7
EStep = Callable[[ChunkScores, torch.Tensor, float, bool], Posteriors]


def _scores(seed: int, b: int = B) -> ChunkScores:
    g = torch.Generator().manual_seed(seed)
    corr = 40.0 + 10.0 * torch.randn(R, T, K, b, generator=g, dtype=torch.float64)
    corr[:, :, :, 0] = -5.0  # a particle no class matches: α* = 0 with the per-particle scale
    norm = 15.0 + torch.rand(R, K, b, generator=g, dtype=torch.float64) * 10.0
    power = 500.0 + torch.rand(b, generator=g, dtype=torch.float64) * 50.0
    corr_max, corr_argmax = corr.max(dim=1)
    return ChunkScores(corr, corr_max, corr_argmax, norm, power)


def _check(post: Posteriors, scores: ChunkScores) -> None:
    a = assignments_from_posteriors(post, torch.zeros(T, 2, dtype=torch.float64), 360.0 / R, 1.0)
    torch.testing.assert_close(a.image_power, scores.power)
    particles = torch.arange(B)
    rotation = post.best_rotation[a.class_index, particles]
    shift = post.best_shift[a.class_index, particles]
    assert scores.corr is not None
    torch.testing.assert_close(a.cross_term, scores.corr[rotation, shift, a.class_index, particles])
    torch.testing.assert_close(a.norm_term, scores.norm[rotation, a.class_index, particles])
    # −LL = ‖X‖² − α·cross + α²·norm
    error = a.image_power - a.scale * a.cross_term + a.scale**2 * a.norm_term
    torch.testing.assert_close(-a.log_likelihood, error)


@pytest.mark.parametrize("scale", [False, True], ids=["alpha-1", "per-particle-scale"])
@pytest.mark.parametrize("estep", [force_max_posteriors, marginal_posteriors], ids=["force-max", "marginal"])
def test_chosen_terms_rebuild_the_log_likelihood(scale: bool, estep: EStep) -> None:
    scores = _scores(3)
    log_prior = torch.log(torch.full((K,), 1.0 / K, dtype=torch.float64))
    post = estep(scores, log_prior, 2.0, scale)
    _check(post, scores)
    if not scale:
        torch.testing.assert_close(post.best_scale, torch.ones(K, B, dtype=torch.float64))


def test_statistics_are_nan_when_the_estep_did_not_keep_them() -> None:
    scores = _scores(4)
    post = force_max_posteriors(scores, torch.zeros(K, dtype=torch.float64), 1.0, False)
    bare = Posteriors(*(getattr(post, name) for name in list(Posteriors.__dataclass_fields__)[:8]))
    a = assignments_from_posteriors(bare, torch.zeros(T, 2, dtype=torch.float64), 360.0 / R, 1.0)
    assert torch.isnan(a.image_power).all() and torch.isnan(a.cross_term).all() and torch.isnan(a.norm_term).all()


def test_engine_snapshots_carry_the_statistics_through_the_journal(tmp_path: Path) -> None:
    """E-step → the engine's judgements → journal → snapshot → particle ``.cs``."""
    snapshot = make_snapshot()
    n = len(snapshot.particles)
    post = force_max_posteriors(_scores(5, n), torch.zeros(K, dtype=torch.float64), 1.0, True)
    a = assignments_from_posteriors(post, torch.zeros(T, 2, dtype=torch.float64), 360.0 / R, 1.0)
    journal = Journal(tmp_path / "j", "s")
    journal.append_many([decode_batch(batch_frames(make_batch("s", 1, n), "s:1", ready=1000.0))])
    journal.store_assignments(np.arange(n), judgements(a))
    got = journal.assignments()
    stats = {c: getattr(got, c) for c in ("log_likelihood", *STATISTIC_COLUMNS)}
    parts = dataclasses.replace(snapshot.particles, **stats)
    cs = np.load(write_cryosparc_cs(dataclasses.replace(snapshot, particles=parts), tmp_path / "p.cs"))
    v = {f: cs[f"alignments2D/{f}"].astype(np.float64) for f in ("error", "image_pow", "cross_cor", "slice_pow")}
    alpha, alpha_min = cs["alignments2D/alpha"].astype(np.float64), cs["alignments2D/alpha_min"].astype(np.float64)
    np.testing.assert_allclose(
        v["error"], v["image_pow"] - alpha * v["cross_cor"] + alpha**2 * v["slice_pow"], rtol=1e-5
    )
    np.testing.assert_allclose(alpha, np.clip(alpha_min, 0.0, None), rtol=1e-5, atol=1e-7)
    assert alpha[0] == 0.0 and alpha.std() > 0  # particle 0 matches no class (negative cross term)
