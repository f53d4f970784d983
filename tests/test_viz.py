"""cpcl.viz: placements checked against the layout functions, not against golden images."""

from __future__ import annotations

import numpy as np
import pytest

from cpcl import viz
from cpcl.data.datasets import palette_for


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _is_text(region: np.ndarray) -> bool:
    """Dark (text-coloured) pixels in an otherwise white band."""
    return bool((region.max(axis=2) < 120).any())


def test_picture_grid_size_titles_cells_and_legend():
    palette = palette_for("voc")
    names = ["background", "disc", "square", "triangle", "ring", "cross"]
    legend = [(n, tuple(int(v) for v in palette[k])) for k, n in enumerate(names)]
    rng = np.random.default_rng(0)
    cell = (40, 30)
    rows = [[rng.integers(0, 256, (7, 9, 3), dtype=np.uint8) for _ in range(3)] for _ in range(2)]
    rows[1][2] = np.full((5, 5, 3), palette[3], dtype=np.uint8)  # one flat cell
    image = viz.picture_grid(rows, ["image", "ground truth", "prediction"], legend, cell)
    lay = viz.grid_layout(2, 3, cell, names)
    assert image.size == (lay.width, lay.height)
    assert lay.width == 2 * lay.margin + 3 * cell[0] + 2 * lay.gap
    px = _pixels(image)
    # Each column has its title in the band above the first row (and only there: margins white).
    for c in range(3):
        left, top, right, _ = lay.cell_box(0, c)
        assert _is_text(px[lay.margin : top, left:right]), f"no title above column {c}"
    assert (px[: lay.margin - 2] == 255).all()
    # Cells hold the pictures, resized with nearest-neighbour sampling (exact colours).
    left, top, right, bottom = lay.cell_box(1, 2)
    assert (px[top:bottom, left:right] == palette[3]).all()
    left, top, right, bottom = lay.cell_box(0, 0)
    assert px[top, left].tolist() == rows[0][0][0, 0].tolist()
    assert px[bottom - 1, right - 1].tolist() == rows[0][0][-1, -1].tolist()
    # Every legend swatch is filled with its class colour, in the legend band below the grid.
    for k, (name, colour) in enumerate(legend):
        left, top, right, bottom = lay.swatch_box(k)
        assert top >= lay.legend_top > lay.cell_box(1, 0)[3]
        inner = px[top + 1 : bottom - 1, left + 1 : right - 1]
        assert (inner == colour).all(), name
        assert _is_text(px[top:bottom, right + 4 : right + 40])  # its name next to it


def test_picture_grid_wraps_a_long_legend_and_rejects_bad_input():
    names = [f"class number {k}" for k in range(12)]
    lay = viz.grid_layout(1, 2, (50, 40), names)
    assert len(lay.legend_rows) > 1 and sorted(sum(lay.legend_rows, ())) == list(range(12))
    for k in range(12):
        assert lay.swatch_box(k)[2] <= lay.width  # nothing drawn outside the image
    cell = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(viz.VizError, match="one picture per title"):
        viz.picture_grid([[cell]], ["a", "b"], [], (8, 8))
    with pytest.raises(viz.VizError, match="RGB uint8"):
        viz.picture_grid([[np.zeros((4, 4), np.uint8)]], ["a"], [], (8, 8))


def test_seed_chart_points_bars_band_and_title():
    groups = [("ref", [20.0, 22.0, 21.0]), ("a", [35.0, 30.0, 40.0]), ("b", [10.0, 44.5])]
    image = viz.seed_chart(groups, "Title", "mIoU %", band=(20.0, 22.0), band_label="ref range")
    lay = viz.chart_layout(3, viz.nice_max(44.5), image.width)
    assert lay.y_max == 50 and image.size == (lay.width, lay.height)
    px = _pixels(image)
    assert _is_text(px[:24, lay.width // 3 : 2 * lay.width // 3])  # the title, centred on top
    point = np.array(viz.POINT)
    for g, (_, values) in enumerate(groups):
        for x, v in zip(lay.point_xs(g, len(values)), values, strict=True):
            column = np.nonzero((px[lay.top - 6 : lay.bottom + 6, x] == point).all(axis=1))[0]
            assert column.size, f"no point of group {g} at x={x}"
            centre = lay.top - 6 + (column.min() + column.max()) / 2
            assert centre == pytest.approx(lay.y_of(v), abs=1.0), (g, v)
    # Bars (outside the band) reach their mean: bar colour just below, white just above.
    for g in (1, 2):
        edge = lay.x_of(g) - lay.bar_w // 2 + 1
        y = lay.y_of(float(np.mean(groups[g][1])))
        assert px[y + 2, edge].tolist() == list(viz.BAR)
        assert (px[y - 3, edge] == 255).all()
    # The band spans the plot between the reference range's rows, tinted (not white).
    y = (lay.y_of(20.0) + lay.y_of(22.0)) // 2
    assert px[y, lay.right - 2].tolist() != [255, 255, 255]
    assert px[lay.y_of(30.0), lay.right - 2].tolist() == list(viz.GRID)
    assert (px[lay.y_of(27.0), lay.right - 2] == 255).all()


def test_seed_chart_captions_and_errors():
    image = viz.seed_chart([("a", [1.0])], "t", "y", captions=["1.00 (given)"])
    assert image.width >= 420
    with pytest.raises(viz.VizError, match="captions"):
        viz.seed_chart([("a", [1.0])], "t", "y", captions=[])
    with pytest.raises(viz.VizError, match="expected values"):
        viz.seed_chart([("a", [])], "t", "y")
