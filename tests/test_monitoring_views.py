"""Distinct views: the same view seen twice counts once; different views count separately; entropies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from monitoring_truth import DISTINCT_VIEWS, good_class, simulation_setup

from otf2d.core.errors import InputError
from otf2d.monitoring.image_geometry import polar_transform, rotate_images, shift_images
from otf2d.monitoring.views import (
    SAME_VIEW_SIMILARITY,
    cluster_views,
    distribution_entropy,
    rotational_similarity,
    view_distribution,
)
from otf2d.simulator.projection import project

MASK_RADIUS = 0.85 * 64 / 2


@pytest.fixture(scope="module")
def setup():
    return simulation_setup()


@pytest.fixture(scope="module")
def clean_projection(setup) -> np.ndarray:
    """A noise-free projection of the phantom (an asymmetric view)."""
    return project(setup.spectrum, 30.0, 50.0, 0.0, setup.box, setup.pixel_size_angstrom)[0]


def test_rotation_is_a_circular_shift_of_the_polar_grid(clean_projection) -> None:
    n_angles = 90
    polar = polar_transform(clean_projection, n_radii=20, n_angles=n_angles, max_radius_pixels=20.0)[0]
    turned = polar_transform(
        rotate_images(clean_projection, 40.0), n_radii=20, n_angles=n_angles, max_radius_pixels=20.0
    )[0]
    shift = round(40.0 * n_angles / 360.0)
    inner = slice(0, 16)  # interpolation differs most at the edge
    err = np.abs(turned[inner] - np.roll(polar, shift, axis=1)[inner]).max()
    assert err < 0.08 * np.abs(polar).max()
    wrong = np.abs(turned[inner] - np.roll(polar, -shift, axis=1)[inner]).max()
    assert wrong > 3 * err


def test_similarity_is_invariant_to_in_plane_rotation_shift_and_mirror(clean_projection) -> None:
    turned = rotate_images(clean_projection, 133.0)
    mirrored = rotate_images(clean_projection, -70.0, mirror=True)
    shifted = shift_images(clean_projection, 2.5, -1.5)
    stack = np.stack([clean_projection, turned, mirrored, shifted])
    s = rotational_similarity(stack, MASK_RADIUS)
    assert np.allclose(s, s.T)
    assert np.allclose(np.diag(s), 1.0)
    assert s[0, 1:].min() > 0.95
    without_mirror = rotational_similarity(stack, MASK_RADIUS, include_mirrors=False)
    assert without_mirror[0, 1] > 0.95  # rotation alone is still found
    assert without_mirror[0, 2] < s[0, 2] - 0.1  # an asymmetric view differs from its mirror image


def test_the_same_view_seen_three_times_counts_once(setup) -> None:
    """Three classes of one view from different particles, turned in-plane and one mirrored."""
    a = good_class(setup, 30.0, 50.0, 60, seed=1).average
    b = rotate_images(good_class(setup, 30.0, 50.0, 60, seed=2).average, 77.0)
    c = rotate_images(good_class(setup, 30.0, 50.0, 60, seed=3).average, 200.0, mirror=True)
    report = view_distribution(np.stack([a, b, c]), np.array([500, 300, 200]), np.ones(3, bool), MASK_RADIUS)
    assert report.n_views == 1, report.similarity
    assert report.view_particles.tolist() == [1000]
    assert report.view_classes == [[1, 2, 3]]
    assert report.largest_share == 1.0
    assert report.entropy_ratio == 0.0
    assert report.effective_views == pytest.approx(1.0)


def test_different_views_count_separately_and_junk_is_left_out(setup) -> None:
    averages = [good_class(setup, r, t, 60, seed=10 + i).average for i, (r, t) in enumerate(DISTINCT_VIEWS)]
    duplicate = rotate_images(good_class(setup, *DISTINCT_VIEWS[0], 60, seed=99).average, 45.0)
    rng = np.random.default_rng(0)
    junk = rng.normal(size=(64, 64))
    stack = np.stack([*averages, duplicate, junk])
    counts = np.array([100, 200, 300, 400, 500, 150, 999])
    good = np.array([True] * 6 + [False])
    report = view_distribution(stack, counts, good, MASK_RADIUS)
    print("similarity of the good classes:\n", np.round(report.similarity, 2))
    assert report.n_views == len(DISTINCT_VIEWS), report.similarity
    assert report.class_view[-1] == -1  # junk is not a view
    assert report.class_view[0] == report.class_view[5]  # the duplicate joins its view
    assert sorted(report.view_particles.tolist(), reverse=True) == report.view_particles.tolist()
    assert report.view_particles.tolist() == [500, 400, 300, 250, 200]
    assert report.view_particles.sum() == counts[good].sum()
    p = np.array([500, 400, 300, 250, 200]) / 1650
    h = -(p * np.log(p)).sum()
    assert report.entropy_ratio == pytest.approx(h / math.log(5), rel=1e-12)
    assert report.effective_views == pytest.approx(math.exp(h), rel=1e-12)
    assert report.largest_share == pytest.approx(500 / 1650)


def test_entropy_rises_for_a_flatter_distribution() -> None:
    skewed = distribution_entropy([90, 5, 5])
    flatter = distribution_entropy([40, 30, 30])
    flat = distribution_entropy([1, 1, 1])
    assert skewed[1] < flatter[1] < flat[1]
    assert skewed[2] < flatter[2] < flat[2]
    assert flat[1] == pytest.approx(1.0)
    assert flat[2] == pytest.approx(3.0)
    p = np.array([0.9, 0.05, 0.05], dtype=np.float64)
    assert skewed[0] == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)
    assert distribution_entropy([0, 7, 0]) == (0.0, 0.0, 1.0)
    assert distribution_entropy([]) == (0.0, 0.0, 0.0)
    with pytest.raises(InputError):
        distribution_entropy([1, -1])


def test_average_linkage_merges_blocks_above_the_threshold() -> None:
    s = np.full((5, 5), 0.2)
    s[:3, :3] = 0.9
    s[3:, 3:] = 0.95
    s[0, 1] = s[1, 0] = 0.82  # below the threshold alone, but the block's mean similarity is above
    np.fill_diagonal(s, 1.0)
    labels = cluster_views(s, SAME_VIEW_SIMILARITY)
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert cluster_views(s, 0.99).tolist() == [0, 1, 2, 3, 4]
    assert cluster_views(s, 0.1).tolist() == [0, 0, 0, 0, 0]
    with pytest.raises(InputError):
        cluster_views(np.zeros((2, 3)))


def test_no_good_class_means_no_view() -> None:
    report = view_distribution(np.zeros((2, 64, 64)), np.array([5, 5]), np.zeros(2, bool), MASK_RADIUS)
    assert report.n_views == 0
    assert report.largest_share == 0.0
    assert report.effective_views == 0.0
    assert report.class_view.tolist() == [-1, -1]


def test_weighted_linkage_lets_big_classes_decide() -> None:
    """Two big classes of one view, each with a small noisy class: by particles they are one view."""
    # order: A (1000), a (10), B (1000), b (10); A~a and B~b 0.95, A~B 0.9, the small ones differ
    s = np.array(
        [
            [1.0, 0.95, 0.9, 0.7],
            [0.95, 1.0, 0.7, 0.5],
            [0.9, 0.7, 1.0, 0.95],
            [0.7, 0.5, 0.95, 1.0],
        ]
    )
    w = np.array([1000.0, 10.0, 1000.0, 10.0])
    between = (0.9 * 1000 * 1000 + 0.7 * 1000 * 10 + 0.7 * 10 * 1000 + 0.5 * 10 * 10) / (1010 * 1010)
    assert between == pytest.approx(0.8960, abs=1e-4)  # ≥ 0.85, while the plain mean is 0.7
    assert cluster_views(s, SAME_VIEW_SIMILARITY, w).tolist() == [0, 0, 0, 0]
    assert cluster_views(s, SAME_VIEW_SIMILARITY).tolist() == [0, 0, 1, 1]
    assert cluster_views(s, between + 1e-9, w).tolist() == [0, 0, 1, 1]
    with pytest.raises(InputError, match="weights"):
        cluster_views(s, 0.85, [1.0, 0.0, 1.0, 1.0])
