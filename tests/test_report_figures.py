"""How the report's figures are drawn: the style without seaborn, one layout and one rendering per
figure (the same pixels `savefig` writes), titles placed without measuring every axis again, and the
panel grid of `component_latents`, measured once and cropped per panel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from mixvae.report.plots.common import (arrange_panels, lift_titles, new_figure, panel_figure, render, save,
                                        style, style_rc)

TESTS = Path(__file__).resolve().parent


def test_the_style_is_seaborns_whitegrid_paper_without_its_colormap():
    import seaborn as sns

    expected = dict(sns.axes_style("whitegrid"))
    expected.update(sns.plotting_context("paper", font_scale=0.95))
    expected.pop("image.cmap")                     # "rocket" exists only once seaborn is imported
    expected.update({"axes.titlesize": 9, "image.interpolation": "nearest"})
    rc = style_rc()
    for key, value in expected.items():
        assert rc[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert "image.cmap" not in rc


def test_drawing_a_report_imports_neither_seaborn_nor_pyplot(subprocess_env, tmp_path):
    probe = (
        "import sys, json; sys.path.insert(0, sys.argv[1])\n"
        "from report_fixtures import record\n"
        "from mixvae.report import build_report\n"
        "result = build_report(record('heteroscedastic'), sys.argv[2])\n"
        "print(json.dumps({'drawn': sum(s.status == 'success' for s in result.plot_status.values()),\n"
        "                  'loaded': sorted(m for m in ('seaborn', 'matplotlib.pyplot') if m in sys.modules)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(TESTS), str(tmp_path / "report")], capture_output=True,
                         text=True, env=subprocess_env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["drawn"] >= 10 and found["loaded"] == []


def _busy_figure():
    """Constrained layout, several axes, a legend outside, a colorbar and a suptitle."""
    fig, (left, right) = new_figure(6.0, 2.8, 1, 2)
    x = np.linspace(0.0, 10.0, 50)
    left.plot(x, np.sin(x), label="sin")
    left.plot(x, np.cos(x), label="cos")
    left.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    left.set_title("two curves")
    image = right.imshow(np.arange(20.0).reshape(4, 5), cmap="viridis")
    fig.colorbar(image, ax=right, label="value")
    right.set_title("a matrix")
    fig.suptitle("one figure, laid out once")
    return fig


def test_save_writes_the_pixels_savefig_writes(tmp_path):
    with style():
        save(_busy_figure(), tmp_path / "ours.png")
        _busy_figure().savefig(tmp_path / "savefig.png", dpi=_busy_figure().dpi, format="png")
    ours, theirs = imread(tmp_path / "ours.png"), imread(tmp_path / "savefig.png")
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def _titled(scale: float):
    fig, ax = new_figure(3.0, 2.4)
    ax.plot(np.arange(10.0), scale * np.arange(10.0))
    ax.set_title("a title as wide as the axes it sits on")
    return fig, ax


def test_titles_sit_where_matplotlib_would_put_them():
    with style():
        fixed = render(_titled(1.0)[0])
    with matplotlib.rc_context({**style_rc(), "axes.titley": None}):      # matplotlib measures the axes
        measured = render(_titled(1.0)[0])
    np.testing.assert_array_equal(fixed, measured)


def test_a_title_is_lifted_above_an_offset_text_that_reaches_it():
    with style():
        fig, ax = _titled(1e-7)                     # the y axis gets an offset text "1e-7" on top
        render(fig)
        renderer = fig.canvas.get_renderer()
        offset = ax.yaxis.offsetText
        assert offset.get_text()
        assert ax.title.get_window_extent(renderer).y0 >= offset.get_window_extent(renderer).y1
        assert ax.title.get_position()[1] > 1.0
        assert lift_titles(fig, renderer) == []     # once clear, it stays put

        fig, ax = _titled(1.0)
        render(fig)
        assert lift_titles(fig, fig.canvas.get_renderer()) == [] and ax.title.get_position()[1] == 1.0


def test_panel_grid_crops_hold_their_panel_and_nothing_of_another():
    scales = [1.0, 1e-7, 300.0, 1.0, 5e4, 0.01, 2.0]              # tick labels of different widths
    with style():
        fig, axes = panel_figure(len(scales), 1.6, 1.3)
        for k, (ax, scale) in enumerate(zip(axes, scales)):
            ax.scatter(np.arange(20.0), scale * np.sin(np.arange(20.0)), s=4)
            ax.set_title(f"component {k} · usage 0.{k}42", fontsize=8)
            ax.set_xlabel("PC1")
            ax.set_ylabel("PC2")
        crops = arrange_panels(fig, axes, 3, "a grid of panels")
        pixels = render(fig)
        renderer = FigureCanvasAgg(fig).get_renderer()
        height = pixels.shape[0]
        boxes = []
        for ax in axes:
            tight = ax.get_tightbbox(renderer)
            boxes.append((tight.x0, height - tight.y1, tight.x1, height - tight.y0))  # origin top left
        title = fig._suptitle.get_window_extent(renderer)
    assert len(crops) == len(axes)
    for i, ((x0, y0, x1, y1), (bx0, by0, bx1, by1)) in enumerate(zip(crops, boxes)):
        assert 0 <= x0 <= bx0 and bx1 <= x1 <= pixels.shape[1], (i, crops[i], boxes[i])
        assert 0 <= y0 <= by0 and by1 <= y1 <= height, (i, crops[i], boxes[i])
        for j, (ox0, oy0, ox1, oy1) in enumerate(boxes):
            if j != i:                              # no other panel's labels reach into this crop
                assert ox1 <= x0 or ox0 >= x1 or oy1 <= y0 or oy0 >= y1, (i, j)
    assert all(height - title.y0 <= y0 for _, y0, _, _ in crops[:3])       # the title is above the first row
