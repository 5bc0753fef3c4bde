"""A PNG of the view distribution before and after rebalancing (Pillow only).

One column per view, largest view (before) first: a grey bar for the particles before and a blue
bar for those kept, on a common linear scale, the counts above the bars, and under them a
thumbnail of the view's largest class average with its view number. A header line gives the
totals and the effective number of views ``exp(H)`` before → after.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from otf2d.core.durable import write_bytes_atomic
from otf2d.core.errors import InputError
from otf2d.monitoring.snapshots.gallery import encode_png, to_uint8
from otf2d.monitoring.views import distribution_entropy

_BACKGROUND = (255, 255, 255)
_TEXT = (30, 30, 35)
_AXIS = (150, 150, 155)
_BEFORE = (175, 175, 180)
_AFTER = (37, 99, 235)
#: Layout in pixels.
_COLUMN_PX = 72
_BAR_AREA_PX = 220
_THUMB_PX = 56
_MARGIN_PX = 16
_FONT_PX = 12


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_view_histogram(
    before: npt.ArrayLike,
    after: npt.ArrayLike,
    thumbnails: npt.ArrayLike | None = None,
    *,
    title: str = "",
) -> Image.Image:
    """Bar chart of particles per view before (grey) and after (blue).

    Parameters
    ----------
    before, after
        ``(V,)`` particles per view; views are drawn in the given order.
    thumbnails
        ``(V, h, w)`` one image per view (its largest class average), or ``None``.
    title
        First header line (a second line with totals and ``exp(H)`` is added).

    Returns
    -------
    PIL.Image.Image
        RGB image, ``V`` columns wide.
    """
    b = np.asarray(before, dtype=np.int64)
    a = np.asarray(after, dtype=np.int64)
    if b.ndim != 1 or a.shape != b.shape or len(b) == 0:
        raise InputError(None, f"before {b.shape} and after {a.shape} must be equal, non-empty 1-D counts")
    thumbs = None if thumbnails is None else np.asarray(thumbnails, dtype=np.float64)
    if thumbs is not None and (thumbs.ndim != 3 or len(thumbs) != len(b)):
        raise InputError(None, f"thumbnails must be (V, h, w) with V = {len(b)}, got {thumbs.shape}")
    font = _font(_FONT_PX)
    n_views = len(b)
    header_px = 2 * (_FONT_PX + 6) + _MARGIN_PX
    width = max(2 * _MARGIN_PX + n_views * _COLUMN_PX, 420)
    height = (
        header_px + _BAR_AREA_PX + _FONT_PX + 8 + (_THUMB_PX + _FONT_PX + 12 if thumbs is not None else 0) + _MARGIN_PX
    )
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    eff_b, eff_a = distribution_entropy(b)[2], distribution_entropy(a)[2]
    draw.text((_MARGIN_PX, _MARGIN_PX // 2), title or "particles per view", fill=_TEXT, font=font)
    summary = (
        f"before {int(b.sum()):,} (grey), after {int(a.sum()):,} (blue); effective views {eff_b:.2f} -> {eff_a:.2f}"
    )
    draw.text((_MARGIN_PX, _MARGIN_PX // 2 + _FONT_PX + 6), summary, fill=_TEXT, font=font)
    top = header_px
    base = top + _BAR_AREA_PX
    scale = (_BAR_AREA_PX - _FONT_PX - 6) / max(int(b.max()), int(a.max()), 1)
    draw.line([(_MARGIN_PX, base), (width - _MARGIN_PX, base)], fill=_AXIS, width=1)
    bar_px = (_COLUMN_PX - 16) // 2
    for v in range(n_views):
        x0 = _MARGIN_PX + v * _COLUMN_PX + 4
        for offset, value, colour in ((0, int(b[v]), _BEFORE), (bar_px + 2, int(a[v]), _AFTER)):
            h = round(value * scale)
            x = x0 + offset
            if h > 0:
                draw.rectangle([x, base - h, x + bar_px - 1, base - 1], fill=colour)
            label = f"{value:,}"
            draw.text((x, base - h - _FONT_PX - 2), label, fill=_TEXT, font=font)
        if thumbs is not None:
            tile = Image.fromarray(to_uint8(thumbs[v]), mode="L").resize(
                (_THUMB_PX, _THUMB_PX), Image.Resampling.LANCZOS
            )
            canvas.paste(tile.convert("RGB"), (x0, base + 6))
            draw.text((x0, base + 8 + _THUMB_PX), f"view {v + 1}", fill=_TEXT, font=font)
        else:
            draw.text((x0, base + 4), f"view {v + 1}", fill=_TEXT, font=font)
    return canvas


def write_view_histogram_png(
    path: str | os.PathLike[str],
    before: npt.ArrayLike,
    after: npt.ArrayLike,
    thumbnails: npt.ArrayLike | None = None,
    *,
    title: str = "",
) -> Path:
    """:func:`render_view_histogram` written as a PNG at ``path`` atomically; returns ``path``."""
    image = render_view_histogram(before, after, thumbnails, title=title)
    return write_bytes_atomic(path, encode_png(image))


__all__ = ["render_view_histogram", "write_view_histogram_png"]
