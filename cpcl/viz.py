"""Small pictures drawn with PIL: a titled picture grid with a colour legend, and a chart of
per-seed values with their mean.

PIL (a runtime dependency already) instead of matplotlib, which the project does not depend on.
Every position comes from a layout function (`grid_layout`, `chart_layout`) that the drawing
uses and tests can call, so tests check placements instead of comparing golden images.
Shapes are drawn without anti-aliasing, so a swatch or a point keeps its exact colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cpcl.errors import CpclError

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
TEXT: Color = (20, 20, 20)
AXIS: Color = (90, 90, 90)
GRID: Color = (225, 225, 225)
BAR: Color = (150, 185, 225)  # mean of the seeds
POINT: Color = (200, 40, 30)  # one seed
BAND: Color = (255, 196, 120)  # the reference group's range (blended at BAND_ALPHA)
BAND_EDGE: Color = (215, 130, 40)
BAND_ALPHA = 0.45


class VizError(CpclError, ValueError):
    """A picture cannot be drawn from the given data (names the argument and the value)."""


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont:
    """PIL's bundled font at `size` px (Pillow >= 10.1 with FreeType); the fixed small bitmap
    font of older Pillow otherwise, so drawing never needs a font file on the system."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height in pixels of `text` drawn at font `size`."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox(
        (0, 0), text, font=font(size)
    )
    return right - left, bottom - top


# ---------------------------------------------------------------------------------------------
# Picture grid


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a picture grid: margins, the title band, cells and legend rows."""

    n_rows: int
    n_cols: int
    cell: tuple[int, int]  # (width, height) of one picture
    margin: int
    gap: int
    title_h: int
    legend_rows: tuple[tuple[int, ...], ...]  # indices of the legend entries on each line
    legend_line_h: int
    swatch: int
    font_size: int
    entry_widths: tuple[int, ...]  # width of each legend entry (swatch, name, spacing)

    @property
    def width(self) -> int:
        """Image width."""
        return 2 * self.margin + self.n_cols * self.cell[0] + (self.n_cols - 1) * self.gap

    @property
    def legend_top(self) -> int:
        """First pixel row of the legend."""
        return self.cell_box(self.n_rows - 1, 0)[3] + self.margin

    @property
    def height(self) -> int:
        """Image height."""
        return self.legend_top + len(self.legend_rows) * self.legend_line_h + self.margin // 2

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the picture at `row`, `col` (right/bottom exclusive)."""
        left = self.margin + col * (self.cell[0] + self.gap)
        top = self.margin + self.title_h + row * (self.cell[1] + self.gap)
        return left, top, left + self.cell[0], top + self.cell[1]

    def swatch_box(self, index: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of legend entry `index`'s colour square, outline included."""
        for line, entries in enumerate(self.legend_rows):
            if index in entries:
                x = self.margin
                x += sum(self.entry_widths[j] for j in entries[: entries.index(index)])
                top = self.legend_top + line * self.legend_line_h
                return x, top, x + self.swatch, top + self.swatch
        raise VizError(f"legend entry {index} does not exist ({len(self.entry_widths)} entries)")


def grid_layout(
    n_rows: int,
    n_cols: int,
    cell: tuple[int, int],
    legend: Sequence[str],
    font_size: int = 16,
) -> GridLayout:
    """The geometry of a grid of `n_rows` x `n_cols` pictures of `cell` = (width, height) px,
    with one title line above the columns and the legend entries `legend` wrapped below."""
    if n_rows < 1 or n_cols < 1 or min(cell) < 1:
        raise VizError(f"picture grid of {n_rows} x {n_cols} cells of {cell} px: expected >= 1")
    margin, gap = 12, 6
    swatch = font_size
    title_h = text_size("Ag", font_size)[1] + 10
    width = 2 * margin + n_cols * cell[0] + (n_cols - 1) * gap
    widths = tuple(swatch + 6 + text_size(name, font_size)[0] + 18 for name in legend)
    lines: list[list[int]] = [[]]
    used = 0
    for i, w in enumerate(widths):
        if lines[-1] and used + w > width - 2 * margin:
            lines.append([])
            used = 0
        lines[-1].append(i)
        used += w
    return GridLayout(
        n_rows=n_rows,
        n_cols=n_cols,
        cell=cell,
        margin=margin,
        gap=gap,
        title_h=title_h,
        legend_rows=tuple(tuple(line) for line in lines if line),
        legend_line_h=swatch + 8,
        swatch=swatch,
        font_size=font_size,
        entry_widths=widths,
    )


def picture_grid(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    legend: Sequence[tuple[str, Color]],
    cell: tuple[int, int],
    font_size: int = 16,
) -> Image.Image:
    """A grid of RGB uint8 pictures (`rows[r][c]`, each resized to `cell` = (width, height) with
    nearest-neighbour sampling so label colours stay exact), `titles[c]` above each column and a
    legend of (name, colour) swatches below."""
    if not rows or any(len(r) != len(titles) for r in rows):
        raise VizError(
            f"picture grid: {len(titles)} titles, rows of {[len(r) for r in rows]} pictures; "
            "expected every row to have one picture per title"
        )
    lay = grid_layout(len(rows), len(titles), cell, [name for name, _ in legend], font_size)
    image = Image.new("RGB", (lay.width, lay.height), WHITE)
    draw = ImageDraw.Draw(image)
    f = font(font_size)
    for c, title in enumerate(titles):
        left, _, right, _ = lay.cell_box(0, c)
        draw.text(((left + right) // 2, lay.margin), title, fill=TEXT, font=f, anchor="mt")
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            array = np.asarray(picture)
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise VizError(
                    f"picture grid cell ({r}, {c}): shape {array.shape}, dtype {array.dtype}; "
                    "expected an RGB uint8 array (H, W, 3)"
                )
            tile = Image.fromarray(array).resize(cell, Image.NEAREST)
            image.paste(tile, lay.cell_box(r, c)[:2])
    for i, (name, colour) in enumerate(legend):
        left, top, right, bottom = lay.swatch_box(i)
        draw.rectangle((left, top, right - 1, bottom - 1), fill=tuple(colour), outline=AXIS)
        draw.text((right + 6, (top + bottom) // 2), name, fill=TEXT, font=f, anchor="lm")
    return image


# ---------------------------------------------------------------------------------------------
# Per-seed chart


@dataclass(frozen=True)
class ChartLayout:
    """Pixel geometry of a per-seed chart: the plot box and the value axis."""

    n_groups: int
    y_max: float
    left: int
    top: int
    right: int
    bottom: int
    width: int
    height: int
    bar_w: int

    def x_of(self, group: int) -> int:
        """Centre x of group `group`."""
        step = (self.right - self.left) / self.n_groups
        return round(self.left + (group + 0.5) * step)

    def y_of(self, value: float) -> int:
        """Pixel row of `value` on the value axis (0 at the bottom of the plot box)."""
        return round(self.bottom - (self.bottom - self.top) * value / self.y_max)

    def point_xs(self, group: int, n_points: int) -> list[int]:
        """Centre x of each of the `n_points` points of `group`, side by side over the bar."""
        spacing = self.bar_w / max(n_points, 1)
        return [
            round(self.x_of(group) + (k - (n_points - 1) / 2) * spacing) for k in range(n_points)
        ]


def nice_max(value: float) -> float:
    """The value axis end: the next multiple of 10 above `value` (at least 10)."""
    return max(10.0, 10.0 * (int(value // 10) + 1))


def chart_layout(n_groups: int, y_max: float, min_width: int = 0) -> ChartLayout:
    """The geometry of a chart with `n_groups` groups and a value axis from 0 to `y_max`, at
    least 420 and `min_width` px wide (room for the title lines)."""
    if n_groups < 1 or not y_max > 0:
        raise VizError(f"chart of {n_groups} groups up to {y_max}: expected >= 1 group, y_max > 0")
    width = max(420, min_width, 90 + 110 * n_groups)
    return ChartLayout(
        n_groups=n_groups,
        y_max=y_max,
        left=70,
        top=78,
        right=width - 20,
        bottom=400,
        width=width,
        height=456,
        bar_w=56,
    )


def seed_chart(
    groups: Sequence[tuple[str, Sequence[float]]],
    title: str,
    y_label: str,
    band: tuple[float, float] | None = None,
    band_label: str = "",
    subtitle: str = "",
    captions: Sequence[str] | None = None,
) -> Image.Image:
    """A chart with, per group (name, values): each value as a point, their mean as a bar, and
    under the group's name its caption (default `mean ± std` of the values, sample std);
    optionally a shaded horizontal `band` (lo, hi) across the plot (e.g. the range of a
    reference group), explained in the key as `band_label`."""
    if not groups or any(len(values) == 0 for _, values in groups):
        raise VizError(f"chart: groups {[(n, len(v)) for n, v in groups]}; expected values")
    if captions is None:
        captions = [_mean_std(values) for _, values in groups]
    elif len(captions) != len(groups):
        raise VizError(f"chart: {len(captions)} captions for {len(groups)} groups")
    top_value = max(max(v) for _, v in groups)
    title_w = max(text_size(title, 16)[0], text_size(subtitle, 12)[0]) + 24
    lay = chart_layout(len(groups), nice_max(max(top_value, band[1] if band else 0.0)), title_w)
    image = Image.new("RGB", (lay.width, lay.height), WHITE)
    draw = ImageDraw.Draw(image)
    small, normal = font(12), font(14)
    draw.text((lay.width // 2, 8), title, fill=TEXT, font=font(16), anchor="mt")
    if subtitle:
        draw.text((lay.width // 2, 30), subtitle, fill=AXIS, font=small, anchor="mt")
    for tick in range(0, int(lay.y_max) + 1, 10):  # value grid every 10
        y = lay.y_of(tick)
        draw.line((lay.left, y, lay.right, y), fill=GRID)
        draw.text((lay.left - 6, y), f"{tick}", fill=TEXT, font=small, anchor="rm")
    label = Image.new("RGB", text_size(y_label, 14), WHITE)
    ImageDraw.Draw(label).text((0, 0), y_label, fill=TEXT, font=normal, anchor="lt")
    label = label.rotate(90, expand=True)
    image.paste(label, (12, (lay.top + lay.bottom - label.height) // 2))
    for i, (name, values) in enumerate(groups):
        x, mean = lay.x_of(i), float(np.mean(values))
        draw.rectangle((x - lay.bar_w // 2, lay.y_of(mean), x + lay.bar_w // 2, lay.bottom), BAR)
        draw.text((x, lay.bottom + 8), name, fill=TEXT, font=normal, anchor="mt")
        draw.text((x, lay.bottom + 28), captions[i], fill=AXIS, font=small, anchor="mt")
    if band is not None:  # blended over grid and bars so both stay visible
        lo, hi = lay.y_of(band[1]), lay.y_of(band[0])
        box = (lay.left, lo, lay.right, hi + 1)
        region = image.crop(box)
        tint = Image.new("RGB", region.size, BAND)
        image.paste(Image.blend(region, tint, BAND_ALPHA), box[:2])
        draw.line((lay.left, lo, lay.right, lo), fill=BAND_EDGE)
        draw.line((lay.left, hi, lay.right, hi), fill=BAND_EDGE)
    for i, (_, values) in enumerate(groups):
        for x, v in zip(lay.point_xs(i, len(values)), values, strict=True):
            y = lay.y_of(v)
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=POINT, outline=POINT)
    draw.line((lay.left, lay.top, lay.left, lay.bottom), fill=AXIS)
    draw.line((lay.left, lay.bottom, lay.right, lay.bottom), fill=AXIS)
    _chart_key(draw, lay, band_label if band is not None else "")
    return image


def _mean_std(values: Sequence[float]) -> str:
    """`mean ± std` (sample std) of `values` with two decimals; the mean alone for one value."""
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {float(np.std(values, ddof=1)):.2f}"


def _chart_key(draw: ImageDraw.ImageDraw, lay: ChartLayout, band_label: str) -> None:
    """One line under the title explaining points, bars and the band."""
    small = font(12)
    y = 54
    x = lay.left
    draw.ellipse((x, y - 4, x + 8, y + 4), fill=POINT, outline=POINT)
    x += 14
    draw.text((x, y), "one seed", fill=TEXT, font=small, anchor="lm")
    x += text_size("one seed", 12)[0] + 18
    draw.rectangle((x, y - 6, x + 16, y + 6), fill=BAR)
    x += 22
    draw.text((x, y), "mean of the seeds", fill=TEXT, font=small, anchor="lm")
    x += text_size("mean of the seeds", 12)[0] + 18
    if band_label:
        draw.rectangle((x, y - 6, x + 16, y + 6), fill=BAND, outline=BAND_EDGE)
        draw.text((x + 22, y), band_label, fill=TEXT, font=small, anchor="lm")
