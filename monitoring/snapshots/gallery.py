"""PNG galleries of class averages, largest class first (NumPy + Pillow).

Each class is clipped to its own 0.5–99.5 percentiles and scaled to 8 bits, resized to a square
tile and labelled under the tile with its RELION class number (1-based) and particle count, e.g.
``#12`` on the left and ``1,234`` on the right. Empty classes are dimmed and labelled ``empty``;
when a junk score is known, classes scoring above the snapshot's junk-score threshold
(``ClassSnapshot.effective_junk_threshold``, by default :data:`JUNK_THRESHOLD`) get a red border and a
red label, as the ``_model.star`` and the ``.cs`` flag them. A one-line header names the iteration,
the number of classes and particles and the pixel size.

``render_gallery`` returns a ``PIL.Image``; ``write_gallery_png`` writes it atomically;
``render_class_png`` gives the PNG bytes of a single labelled class (for an HTTP endpoint).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from otf2d.core.durable import write_bytes_atomic
from otf2d.core.errors import InputError
from otf2d.core.snapshot import DEFAULT_JUNK_SCORE_THRESHOLD, ClassSnapshot

#: Classes whose junk score exceeds this get a red border, unless the snapshot records another threshold.
JUNK_THRESHOLD = DEFAULT_JUNK_SCORE_THRESHOLD
#: Percentiles each class is clipped to before scaling to 8 bits.
CLIP_PERCENTILES = (0.5, 99.5)

_BACKGROUND = (24, 24, 27)
_LABEL_TEXT = (235, 235, 235)
_LABEL_DIM = (130, 130, 135)
_JUNK = (220, 38, 38)
_EMPTY_DIM = 0.3

FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont


def class_order(particle_counts: np.ndarray) -> np.ndarray:
    """Class indices sorted by particle count, largest first; ties keep class order.

    Parameters
    ----------
    particle_counts
        ``(K,)`` particles per class.

    Returns
    -------
    ndarray
        ``(K,)`` int64 permutation of ``0..K-1``.
    """
    counts = np.asarray(particle_counts, dtype=np.int64)
    return np.argsort(-counts, kind="stable").astype(np.int64)


def to_uint8(image: np.ndarray, percentiles: tuple[float, float] = CLIP_PERCENTILES) -> np.ndarray:
    """Clip ``image`` to its own percentiles and scale linearly to 0–255.

    Parameters
    ----------
    image
        ``(h, w)`` real image (any float dtype); non-finite pixels become black.
    percentiles
        Low and high percentile mapped to 0 and 255.

    Returns
    -------
    ndarray
        ``(h, w)`` uint8. A flat image (high ≤ low) maps to mid-grey 128.
    """
    img = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = np.percentile(img[finite], percentiles)
    if not hi > lo:
        out = np.full(img.shape, 128, dtype=np.uint8)
    else:
        scaled = (np.clip(img, lo, hi) - lo) / (hi - lo) * 255.0
        out = np.rint(scaled).astype(np.uint8)
    out[~finite] = 0
    return out


@dataclass(frozen=True)
class GalleryLayout:
    """Pixel geometry of a gallery: where each tile (by position in size order) lands.

    Attributes
    ----------
    n_tiles, columns, rows
        Grid shape (``rows = ceil(n_tiles / columns)``).
    tile_px
        Side of the square image area of a tile.
    gap_px
        Space between tiles and around the grid.
    label_px
        Height of the label strip under each tile.
    header_px
        Height of the header line above the grid.
    """

    n_tiles: int
    columns: int
    rows: int
    tile_px: int
    gap_px: int
    label_px: int
    header_px: int

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the whole gallery in pixels."""
        width = self.gap_px + self.columns * (self.tile_px + self.gap_px)
        height = self.header_px + self.gap_px + self.rows * (self.tile_px + self.label_px + self.gap_px)
        return width, height

    def tile_box(self, position: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` (exclusive end) of the image area of the tile at ``position``."""
        if not 0 <= position < self.n_tiles:
            raise IndexError(f"tile {position} outside 0..{self.n_tiles - 1}")
        row, col = divmod(position, self.columns)
        x0 = self.gap_px + col * (self.tile_px + self.gap_px)
        y0 = self.header_px + self.gap_px + row * (self.tile_px + self.label_px + self.gap_px)
        return x0, y0, x0 + self.tile_px, y0 + self.tile_px


def default_tile_px(box_px: int) -> int:
    """Tile side for class averages of ``box_px``: the box itself, kept within 128–192 px."""
    return int(min(192, max(128, box_px)))


def gallery_layout(
    n_classes: int, *, box_px: int, columns: int | None = None, tile_px: int | None = None
) -> GalleryLayout:
    """Lay out ``n_classes`` tiles roughly 16:10 (``columns = ceil(sqrt(1.6·K))``) unless given."""
    if n_classes < 1:
        raise InputError(None, "a gallery needs at least one class")
    tile = default_tile_px(box_px) if tile_px is None else int(tile_px)
    if tile < 16:
        raise InputError(None, f"tile_px must be at least 16, got {tile}")
    cols = math.ceil(math.sqrt(1.6 * n_classes)) if columns is None else int(columns)
    if cols < 1:
        raise InputError(None, f"columns must be at least 1, got {cols}")
    cols = min(cols, n_classes)
    font_px = _font_px(tile)
    return GalleryLayout(
        n_tiles=n_classes,
        columns=cols,
        rows=math.ceil(n_classes / cols),
        tile_px=tile,
        gap_px=max(4, tile // 24),
        label_px=font_px + 8,
        header_px=font_px + 12,
    )


def _font_px(tile_px: int) -> int:
    return int(min(18, max(10, tile_px // 10)))


def _font(size: int) -> FontType:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed-size bitmap font
        return ImageFont.load_default()


def _text_px(font: FontType) -> int:
    """Nominal text height: the FreeType size, or 11 for Pillow's bitmap fallback font."""
    return int(font.size) if isinstance(font, ImageFont.FreeTypeFont) else 11


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: FontType, width: int) -> str:
    """``text``, shortened with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _tile_image(average: np.ndarray, tile_px: int, *, dim: bool) -> Image.Image:
    pixels = to_uint8(average)
    if dim:
        pixels = (pixels.astype(np.float64) * _EMPTY_DIM).astype(np.uint8)
    tile = Image.fromarray(pixels, mode="L")
    if tile.size != (tile_px, tile_px):
        tile = tile.resize((tile_px, tile_px), Image.Resampling.LANCZOS)
    return tile.convert("RGB")


def _draw_tile(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    *,
    average: np.ndarray,
    class_number: int,
    count: int,
    junk: bool,
    label_px: int,
    font: FontType,
) -> None:
    x0, y0, x1, y1 = box
    tile_px = x1 - x0
    empty = count == 0
    canvas.paste(_tile_image(average, tile_px, dim=empty), (x0, y0))
    if empty:
        draw.line([(x0, y1 - 1), (x1 - 1, y0)], fill=_LABEL_DIM, width=1)
    if junk:
        border = max(2, tile_px // 40)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=_JUNK, width=border)
    colour = _JUNK if junk else (_LABEL_DIM if empty else _LABEL_TEXT)
    left = f"#{class_number}"
    right = "empty" if empty else f"{count:,}"
    if junk:
        right = f"junk {right}" if not empty else "junk, empty"
    text_y = y1 + (label_px - _text_px(font)) // 2
    left_w = draw.textlength(left + "  ", font=font)
    if left_w + draw.textlength(right, font=font) <= tile_px:
        draw.text((x0, text_y), left, fill=colour, font=font)
        draw.text((x1 - draw.textlength(right, font=font), text_y), right, fill=colour, font=font)
    else:
        text = _fit_text(draw, f"{left} {right}", font, tile_px)
        draw.text((x0, text_y), text, fill=colour, font=font)


def _junk_flags(snapshot: ClassSnapshot, junk_score: np.ndarray | None) -> np.ndarray:
    scores = snapshot.junk_score if junk_score is None else junk_score
    k = snapshot.n_classes
    if scores is None:
        return np.zeros(k, dtype=bool)
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (k,):
        raise InputError(None, f"junk_score must have shape ({k},), got {arr.shape}")
    return np.nan_to_num(arr, nan=0.0) > snapshot.effective_junk_threshold


def render_gallery(
    snapshot: ClassSnapshot,
    *,
    columns: int | None = None,
    tile_px: int | None = None,
    junk_score: np.ndarray | None = None,
) -> Image.Image:
    """All class averages as one labelled RGB image, largest class first.

    Parameters
    ----------
    snapshot
        The classes (``averages`` ``(K, h, w)``, ``particle_counts`` ``(K,)``).
    columns
        Tiles per row; default ``ceil(sqrt(1.6·K))`` (about 16:10).
    tile_px
        Side of each tile in pixels; default the box size kept within 128–192.
    junk_score
        ``(K,)`` scores in [0, 1] overriding ``snapshot.junk_score``; above the snapshot's threshold
        (``effective_junk_threshold``, 0.5 unless recorded) marks a class as junk.

    Returns
    -------
    PIL.Image.Image
        RGB image of size :attr:`GalleryLayout.size` (see :func:`gallery_layout`).
    """
    k, h, w = snapshot.averages.shape
    layout = gallery_layout(k, box_px=max(h, w), columns=columns, tile_px=tile_px)
    junk = _junk_flags(snapshot, junk_score)
    counts = np.asarray(snapshot.particle_counts, dtype=np.int64)
    canvas = Image.new("RGB", layout.size, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(_font_px(layout.tile_px))
    header = (
        f"iteration {snapshot.iteration}   {k} classes   {len(snapshot.particles):,} particles   "
        f"{snapshot.pixel_size_angstrom:.3g} A/px"
    )
    if junk_score is not None or snapshot.junk_score is not None:
        header += f"   {int(junk.sum())} junk"
    draw.text(
        (layout.gap_px, layout.gap_px + (layout.header_px - _text_px(font)) // 2),
        _fit_text(draw, header, font, layout.size[0] - 2 * layout.gap_px),
        fill=_LABEL_TEXT,
        font=font,
    )
    for position, cls in enumerate(class_order(counts)):
        _draw_tile(
            canvas,
            draw,
            layout.tile_box(position),
            average=snapshot.averages[cls],
            class_number=int(cls) + 1,
            count=int(counts[cls]),
            junk=bool(junk[cls]),
            label_px=layout.label_px,
            font=font,
        )
    return canvas


def encode_png(image: Image.Image) -> bytes:
    """``image`` as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_gallery_png(
    snapshot: ClassSnapshot,
    path: str | os.PathLike[str],
    *,
    columns: int | None = None,
    tile_px: int | None = None,
    junk_score: np.ndarray | None = None,
) -> Path:
    """Render :func:`render_gallery` and write it as a PNG at ``path`` atomically."""
    image = render_gallery(snapshot, columns=columns, tile_px=tile_px, junk_score=junk_score)
    return write_bytes_atomic(path, encode_png(image))


def render_class_png(snapshot: ClassSnapshot, k: int, *, tile_px: int | None = None) -> bytes:
    """PNG bytes of class ``k`` (0-based) alone, labelled like a gallery tile.

    Raises
    ------
    InputError
        If ``k`` is not a class of ``snapshot``.
    """
    n = snapshot.n_classes
    if not 0 <= k < n:
        raise InputError(None, f"class {k} outside 0..{n - 1}")
    _, h, w = snapshot.averages.shape
    tile = default_tile_px(max(h, w)) if tile_px is None else int(tile_px)
    layout = GalleryLayout(
        n_tiles=1,
        columns=1,
        rows=1,
        tile_px=tile,
        gap_px=max(4, tile // 24),
        label_px=_font_px(tile) + 8,
        header_px=0,
    )
    canvas = Image.new("RGB", layout.size, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_tile(
        canvas,
        draw,
        layout.tile_box(0),
        average=snapshot.averages[k],
        class_number=k + 1,
        count=int(snapshot.particle_counts[k]),
        junk=bool(_junk_flags(snapshot, None)[k]),
        label_px=layout.label_px,
        font=_font(_font_px(tile)),
    )
    return encode_png(canvas)


__all__ = [
    "CLIP_PERCENTILES",
    "JUNK_THRESHOLD",
    "GalleryLayout",
    "class_order",
    "default_tile_px",
    "encode_png",
    "gallery_layout",
    "render_class_png",
    "render_gallery",
    "to_uint8",
    "write_gallery_png",
]
