"""The E-step keeps, for each particle's most probable class at its best pose, the terms of its
log-likelihood (cryoSPARC's ``cross_cor``, ``slice_pow``, ``image_pow``), in every E-step mode."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from otf2d.engine.em.assignments import assignments_from_posteriors
from otf2d.engine.em.estep import ChunkScores, Posteriors, force_max_posteriors, marginal_posteriors

R, T, K, B = 6, 5, 4, 7
EStep = Callable[[ChunkScores, torch.Tensor, float, bool], Posteriors]


def _scores(seed: int) -> ChunkScores:
    g = torch.Generator().manual_seed(seed)
    corr = 40.0 + 10.0 * torch.randn(R, T, K, B, generator=g, dtype=torch.float64)
    corr[:, :, :, 0] = -5.0  # a particle no class matches: α* = 0 with the per-particle scale
    norm = 15.0 + torch.rand(R, K, B, generator=g, dtype=torch.float64) * 10.0
    power = 500.0 + torch.rand(B, generator=g, dtype=torch.float64) * 50.0
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
