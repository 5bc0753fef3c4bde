"""Gallery PNGs: tile order by class size, read back from the PNG's pixels; junk and empty marks."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from snapshot_factory import make_snapshot

from otf2d.core.config import VerdictConfig
from otf2d.core.errors import InputError
from otf2d.monitoring.snapshots.gallery import (
    class_order,
    gallery_layout,
    render_class_png,
    render_gallery,
    to_uint8,
    write_gallery_png,
)
from otf2d.monitoring.state import compute_state

COUNTS = (5, 12, 0, 20, 3, 10)
SIZE_ORDER = [3, 1, 5, 0, 4, 2]  # classes by particle count, largest first


def _distinct_averages(k: int = len(COUNTS), box: int = 32, seed: int = 0) -> np.ndarray:
    """Class ``i`` is a bright square at a position unique to ``i`` on weak noise."""
    rng = np.random.default_rng(seed)
    out = rng.normal(scale=0.05, size=(k, box, box)).astype(np.float32)
    for i in range(k):
        r, c = divmod(i, 3)
        out[i, 4 + 12 * r : 12 + 12 * r, 4 + 9 * c : 12 + 9 * c] += 1.0
    return out


def _tile(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(image.convert("L").crop(box), dtype=np.float64)


def _best_match(tile: np.ndarray, averages: np.ndarray) -> int:
    """Class whose average (resized like the gallery) correlates best with a tile read from the PNG."""
    scores = []
    for avg in averages:
        ref = Image.fromarray(to_uint8(avg)).resize(tile.shape[::-1], Image.Resampling.BILINEAR)
        a, b = tile.ravel(), np.asarray(ref, dtype=np.float64).ravel()
        scores.append(np.corrcoef(a, b)[0, 1])
    return int(np.argmax(scores))


def test_class_order_is_by_size_then_class_number() -> None:
    np.testing.assert_array_equal(class_order(np.array(COUNTS)), SIZE_ORDER)
    np.testing.assert_array_equal(class_order(np.array([2, 5, 2, 5])), [1, 3, 0, 2])


def test_to_uint8_clips_each_image_to_its_own_percentiles() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(64, 64))
    img[0, 0], img[0, 1] = 1e6, -1e6  # outliers must not squash the contrast
    out = to_uint8(img)
    lo, hi = np.percentile(img, [0.5, 99.5])
    inside = (img > lo) & (img < hi)
    expected = np.rint((img[inside] - lo) / (hi - lo) * 255)
    np.testing.assert_array_equal(out[inside], expected)
    assert out[0, 0] == 255 and out[0, 1] == 0
    assert np.mean(out == 255) < 0.01 and np.mean(out == 0) < 0.01
    assert np.all(to_uint8(np.full((8, 8), 3.0)) == 128)
    scaled = to_uint8(img * 1000 + 50)  # each class is scaled on its own: offset/gain invariant
    assert np.abs(scaled.astype(int) - out.astype(int)).max() <= 1


def test_tiles_are_in_size_order_read_back_from_the_png(tmp_path: Path) -> None:
    averages = _distinct_averages()
    snapshot = make_snapshot(COUNTS, averages=averages)
    path = write_gallery_png(snapshot, tmp_path / "gallery.png", columns=3, tile_px=96)
    image = Image.open(path)
    image.load()
    assert image.mode == "RGB"
    layout = gallery_layout(len(COUNTS), box_px=32, columns=3, tile_px=96)
    assert image.size == layout.size
    assert 3 * 96 < image.size[0] < 4 * 96 and 2 * 96 < image.size[1] < 3 * 96
    for position, expected in enumerate(SIZE_ORDER):
        tile = _tile(image, layout.tile_box(position))
        if COUNTS[expected] == 0:
            continue  # the empty class is dimmed and crossed out; checked below
        assert _best_match(tile, averages) == expected, position
    tiles = [_tile(image, layout.tile_box(p)) for p in range(len(COUNTS))]
    for i in range(len(tiles)):
        for j in range(i + 1, len(tiles)):
            assert np.abs(tiles[i] - tiles[j]).mean() > 5


def test_largest_class_with_a_unique_bright_pattern_lands_in_the_first_tile() -> None:
    averages = np.zeros((6, 32, 32), dtype=np.float32)
    averages += np.random.default_rng(1).normal(scale=0.1, size=averages.shape).astype(np.float32)
    averages[3, :16, :16] += 5.0  # only class 3 (the largest) is bright in its top-left quadrant
    image = render_gallery(make_snapshot(COUNTS, averages=averages), tile_px=64, columns=6)
    layout = gallery_layout(6, box_px=32, tile_px=64, columns=6)
    first = _tile(image, layout.tile_box(0))
    assert first[:32, :32].mean() > 200 and first[32:, 32:].mean() < 150
    for position in range(1, 6):
        assert _tile(image, layout.tile_box(position))[:32, :32].mean() < 200


def test_empty_classes_are_dimmed_and_labels_are_drawn() -> None:
    averages = _distinct_averages()
    image = render_gallery(make_snapshot(COUNTS, averages=averages), tile_px=96, columns=3)
    layout = gallery_layout(6, box_px=32, tile_px=96, columns=3)
    empty_position = SIZE_ORDER.index(2)
    brightness = [_tile(image, layout.tile_box(p)).mean() for p in range(6)]
    assert brightness[empty_position] < 0.5 * min(b for p, b in enumerate(brightness) if p != empty_position)
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    for position in range(6):
        x0, _, x1, y1 = layout.tile_box(position)
        strip = gray[y1 : y1 + layout.label_px, x0:x1]
        assert strip.max() > 100, f"no label under tile {position}"
    assert gray[: layout.header_px, :].max() > 100  # header line


def test_junk_classes_get_a_red_border() -> None:
    junk = np.array([0.1, 0.9, 0.2, 0.3, 0.51, 0.5])  # classes 1 and 4 are junk (> 0.5)
    snapshot = make_snapshot(COUNTS, averages=_distinct_averages(), junk_score=junk)
    image = render_gallery(snapshot, tile_px=96, columns=3)
    layout = gallery_layout(6, box_px=32, tile_px=96, columns=3)
    rgb = np.asarray(image, dtype=np.int64)
    for position, cls in enumerate(SIZE_ORDER):
        x0, y0, x1, _ = layout.tile_box(position)
        edge = rgb[y0, x0 + 10 : x1 - 10]
        red = (edge[:, 0] > 180) & (edge[:, 1] < 90) & (edge[:, 2] < 90)
        assert red.all() == (junk[cls] > 0.5), (position, cls)
    # an explicit junk_score overrides the snapshot's
    clean = np.asarray(render_gallery(snapshot, tile_px=96, columns=3, junk_score=np.zeros(6)), dtype=np.int64)
    x0, y0, x1, _ = layout.tile_box(SIZE_ORDER.index(1))
    assert not ((clean[y0, x0 + 10 : x1 - 10, 0] > 180) & (clean[y0, x0 + 10 : x1 - 10, 1] < 90)).all()
    with pytest.raises(InputError, match="junk_score"):
        render_gallery(snapshot, junk_score=np.zeros(5))


def test_default_layout_for_many_classes() -> None:
    rng = np.random.default_rng(2)
    counts = tuple(int(c) for c in rng.integers(0, 5000, 50))
    snapshot = make_snapshot(counts, averages=rng.normal(size=(50, 80, 80)).astype(np.float32))
    image = render_gallery(snapshot)
    layout = gallery_layout(50, box_px=80)
    assert layout.tile_px == 128 and layout.columns == 9 and layout.rows == 6
    assert image.size == layout.size
    assert 1.2 < image.size[0] / image.size[1] < 2.0


def test_render_class_png() -> None:
    averages = _distinct_averages()
    snapshot = make_snapshot(COUNTS, averages=averages)
    data = render_class_png(snapshot, 4, tile_px=96)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    assert image.size[0] >= 96 and image.size[1] > 96
    gap = (image.size[0] - 96) // 2
    tile = np.asarray(image.convert("L"), dtype=np.float64)[gap : gap + 96, gap : gap + 96]
    assert _best_match(tile, averages) == 4
    with pytest.raises(InputError):
        render_class_png(snapshot, 6)


def test_the_red_border_follows_the_snapshots_recorded_threshold() -> None:
    junk = np.array([0.1, 0.9, 0.2, 0.3, 0.51, 0.75])
    snapshot = make_snapshot(COUNTS, averages=_distinct_averages(), junk_score=junk)
    strict = dataclasses.replace(snapshot, junk_score_threshold=0.8)  # as with_junk_scores records it
    rgb = np.asarray(render_gallery(strict, tile_px=96, columns=3), dtype=np.int64)
    layout = gallery_layout(6, box_px=32, tile_px=96, columns=3)
    for position, cls in enumerate(SIZE_ORDER):
        x0, y0, x1, _ = layout.tile_box(position)
        edge = rgb[y0, x0 + 10 : x1 - 10]
        red = (edge[:, 0] > 180) & (edge[:, 1] < 90) & (edge[:, 2] < 90)
        assert red.all() == (junk[cls] > 0.8), (position, cls)  # 0.51 and 0.75 are not junk at 0.8


def test_the_status_pages_gallery_draws_with_the_monitoring_threshold() -> None:
    snapshot = make_snapshot(COUNTS, averages=_distinct_averages())
    state = compute_state(snapshot, [], config=VerdictConfig(junk_score_threshold=0.7), session="s", now=1.0)
    scored = state.scored_snapshot()
    assert scored.junk_score_threshold == 0.7
    np.testing.assert_array_equal(scored.junk_score, state.junk_scores)
