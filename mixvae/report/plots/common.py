"""What every plot shares: the run's inputs (`PlotData`), one figure style, palettes, projections,
image montages and saving. matplotlib is imported lazily, only when a figure is drawn.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from mixvae.config import COMPONENT_DECODING, MIXTURE_BASED, config_from_dict, resolved_conditioning

log = logging.getLogger(__name__)

DPI = 120
UNLABELED_GREY = (0.62, 0.62, 0.62, 1.0)


class PlotSkipped(Exception):
    """Raised by a plot whose inputs are missing; the message is the status reason."""


# ------------------------------------------------------------------------------------------ config

class _Section(SimpleNamespace):
    """Attribute view of one section of a nested config dict (used when mixvae.config is absent)."""


def _namespace(d):
    if isinstance(d, dict):
        return _Section(**{k: _namespace(v) if isinstance(v, dict) and k != "tags" else v for k, v in d.items()})
    return d


def resolve_config(config_dict: dict | None):
    """The run's resolved config as attribute access (`cfg.model.prior_type`).

    A `Config` when today's schema accepts the dict; otherwise a plain attribute view of the
    stored config.yaml (which is already resolved), so a report can still be built for a run whose
    config no longer validates.
    """
    if config_dict is None:
        return None
    try:
        return config_from_dict(config_dict)
    except Exception as exc:  # a config that fails today's schema
        log.debug("falling back to a plain view of config.yaml: %s", exc)
    cfg = _namespace(config_dict)
    model = getattr(cfg, "model", None)
    if model is not None and getattr(model, "decoder_conditioning", None) in (None, "auto"):
        model.decoder_conditioning = resolved_conditioning(getattr(model, "prior_type", None), "auto")
    return cfg


def is_mixture_based(cfg) -> bool:
    """Whether the prior is a mixture over components (works on the plain view too)."""
    return cfg.model.prior_type in MIXTURE_BASED


def is_component_decoding(cfg) -> bool:
    """Whether each component is decoded on its own (works on the plain view too)."""
    return cfg.model.prior_type in COMPONENT_DECODING


# -------------------------------------------------------------------------------------------- data

@dataclass
class PlotData:
    """Everything a plot may read, taken from one RunRecord (never a model)."""
    cfg: object
    status: str
    histories: dict
    diagnostics: dict | None
    history_arrays: dict | None
    events: list
    summary: dict | None
    metrics: dict

    @classmethod
    def from_record(cls, record) -> "PlotData":
        summary = record.summary
        events = record.events
        if events is None and summary:
            events = (summary.get("curriculum") or {}).get("events")
        metrics = dict(record.metrics or {}) or dict((summary or {}).get("metrics") or {})
        return cls(
            cfg=resolve_config(record.config),
            status=record.status,
            histories=record.histories or {},
            diagnostics=record.diagnostics,
            history_arrays=record.history_arrays,
            events=list(events or []),
            summary=summary,
            metrics=metrics,
        )

    # --- histories
    def history(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        points = self.histories.get(key)
        if not points:
            return None
        points = sorted(points)
        return (np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float))

    def value_at(self, key: str, epoch: int) -> float | None:
        """The logged value of history `key` at `epoch` (the latest one logged), or None."""
        series = self.history(key)
        if series is None:
            return None
        hit = np.flatnonzero(series[0] == epoch)
        return float(series[1][hit[-1]]) if hit.size else None

    def model_setting(self, name: str, default=None):
        """`model.<name>` of the run's config; `default` without a config or without that key."""
        return getattr(self.cfg.model, name, default) if self.cfg is not None else default

    @property
    def best_epoch(self) -> int | None:
        if self.summary and self.summary.get("best_epoch") is not None:
            return int(self.summary["best_epoch"])
        if "training.best_epoch" in self.metrics:
            return int(self.metrics["training.best_epoch"])
        return None

    # --- diagnostics
    def diag(self, name: str) -> np.ndarray:
        if self.diagnostics is None or name not in self.diagnostics:
            raise PlotSkipped(f"diagnostics have no '{name}' array")
        return np.asarray(self.diagnostics[name])

    def has(self, name: str) -> bool:
        return self.diagnostics is not None and name in self.diagnostics

    @property
    def num_components(self) -> int:
        if self.has("responsibilities"):
            return int(np.asarray(self.diagnostics["responsibilities"]).shape[1])
        return int(self.cfg.model.num_components)

    @property
    def active_mask(self) -> np.ndarray:
        """Components open at the best epoch (all K without the curriculum)."""
        if self.has("active_mask"):
            return np.asarray(self.diagnostics["active_mask"]).astype(bool)
        return np.ones(self.num_components, dtype=bool)

    @property
    def active_components(self) -> np.ndarray:
        return np.flatnonzero(self.active_mask)

    def labels(self) -> np.ndarray:
        return self.diag("labels").astype(int)

    def require_labels(self) -> np.ndarray:
        labels = self.labels()
        if not np.any(labels >= 0):
            raise PlotSkipped("the split has no labels")
        return labels


# ------------------------------------------------------------------------------------- matplotlib

def _import_matplotlib():
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    return matplotlib


# seaborn's "whitegrid" axes style with its "paper" context at font_scale 0.95 (seaborn 0.13.2), written
# out so that drawing a report does not import seaborn (and scipy with it: about a second per process).
# tests/test_report_figures.py checks it against seaborn. seaborn's default image colormap ("rocket") is left
# out: it exists only once seaborn is imported, and every plot of scalars names its colormap.
_WHITEGRID_PAPER = {
    "axes.axisbelow": True, "axes.edgecolor": ".8", "axes.facecolor": "white", "axes.grid": True,
    "axes.labelcolor": ".15", "axes.labelsize": 9.12, "axes.linewidth": 1.0,
    "axes.spines.bottom": True, "axes.spines.left": True, "axes.spines.right": True, "axes.spines.top": True,
    "axes.titlesize": 9.12, "figure.facecolor": "white",
    "font.family": ["sans-serif"],
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "font.size": 9.12, "grid.color": ".8", "grid.linestyle": "-", "grid.linewidth": 0.8,
    "legend.fontsize": 8.36, "legend.title_fontsize": 9.12, "lines.linewidth": 1.2, "lines.markersize": 4.8,
    "lines.solid_capstyle": "round", "patch.edgecolor": "w", "patch.force_edgecolor": True,
    "patch.linewidth": 0.8, "text.color": ".15",
    "xtick.bottom": False, "xtick.color": ".15", "xtick.direction": "out", "xtick.labelsize": 8.36,
    "xtick.major.size": 4.8, "xtick.major.width": 1.0, "xtick.minor.size": 3.2, "xtick.minor.width": 0.8,
    "xtick.top": False,
    "ytick.color": ".15", "ytick.direction": "out", "ytick.labelsize": 8.36, "ytick.left": False,
    "ytick.major.size": 4.8, "ytick.major.width": 1.0, "ytick.minor.size": 3.2, "ytick.minor.width": 0.8,
    "ytick.right": False,
}


def style_rc() -> dict:
    """The report style as an rc dict (global rcParams stay untouched)."""
    return {**_WHITEGRID_PAPER, "figure.dpi": DPI, "savefig.dpi": DPI, "axes.titlesize": 9,
            "axes.titley": 1.0,                     # titles at the top of their axes: see lift_titles
            "image.interpolation": "nearest"}


def style():
    """Context manager applying the report style."""
    matplotlib = _import_matplotlib()
    return matplotlib.rc_context(style_rc())


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **subplot_kw):
    """A Figure (no pyplot state, nothing to close) and its axes array (squeezed like plt.subplots)."""
    _import_matplotlib()
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=True, **subplot_kw)


def render(fig) -> np.ndarray:
    """The figure's pixels [H, W, 4] (uint8), laid out and drawn once.

    `Figure.savefig` lays a figure with a layout engine out in a draw that renders nothing and then
    draws it again into the file; drawing on an Agg canvas lays it out and renders it in one pass,
    to the same pixels."""
    _import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    if lift_titles(fig, canvas.get_renderer()):
        canvas.draw()                     # rare: a title had to make room for an offset text
    return np.asarray(canvas.buffer_rgba())


def lift_titles(fig, renderer) -> list:
    """Lift each axes title that an offset text of its axes or of a twin (such as `1e-7` above a y
    axis) reaches into until it clears it; the axes whose title moved.

    The style places titles at the top of their axes (`axes.titley`) instead of letting matplotlib
    measure the axis once more for every title it draws; this is the one check that measuring was
    for, made after the ticks were formatted, and it costs nothing where no offset text exists."""
    moved = []
    for ax in fig.axes:
        if not ax.title.get_text():
            continue
        offsets = [axis.offsetText.get_window_extent(renderer) for other in ax.get_shared_x_axes().get_siblings(ax)
                   for axis in (other.xaxis, other.yaxis)
                   if axis.offsetText.get_visible() and axis.offsetText.get_text()]
        if not offsets:
            continue
        box = ax.title.get_window_extent(renderer)
        top = max((o.y1 for o in offsets if o.overlaps(box)), default=box.y0)
        if top > box.y0:
            x, y = ax.title.get_position()
            ax.title.set_position((x, y + (top - box.y0 + 1.0) / max(ax.bbox.height, 1.0)))
            moved.append(ax)
    return moved


def write_png(pixels: np.ndarray, path: Path) -> None:
    """RGBA pixels to a PNG file, as `savefig` writes it (same metadata and resolution)."""
    from matplotlib.image import imsave
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, pixels, format="png", dpi=DPI)


def save(fig, path: Path) -> None:
    write_png(render(fig), path)


# ------------------------------------------------------------------------------------- panel grids

PANEL_PAD_PX = 6          # between panels and around the grid
CROP_PAD_PX = 3           # around each panel's crop


def panel_figure(count: int, width: float, height: float):
    """A figure for `count` panels whose axes are exactly `width` × `height` inches; draw into them,
    then `arrange_panels` places them and sizes the figure."""
    _import_matplotlib()
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=DPI)
    return fig, [fig.add_axes((0.0, 0.0, 1.0, 1.0)) for _ in range(count)]


def _overhangs(fig, axes, renderer) -> list[tuple[float, float, float, float]]:
    """How far (pixels: left, bottom, right, top) each axes' labels, ticks and title reach beyond it."""

    def overhang(ax):
        box, tight = ax.bbox, ax.get_tightbbox(renderer)
        return (max(0.0, box.x0 - tight.x0), max(0.0, box.y0 - tight.y0),
                max(0.0, tight.x1 - box.x1), max(0.0, tight.y1 - box.y1))

    out = [overhang(ax) for ax in axes]                  # formats the ticks and any offset text
    lifted = lift_titles(fig, renderer)
    return [overhang(ax) if ax in lifted else o for ax, o in zip(axes, out)]


def arrange_panels(fig, axes, ncols: int, title: str = "", title_size: float = 8.0) -> list[tuple[int, ...]]:
    """Place the panels of `panel_figure` in rows of `ncols` under `title`, size the figure to fit,
    and return each panel's crop (x0, y0, x1, y1) in the rendered pixels (origin top left).

    Each column is as wide, each row as tall as its largest panel with its labels. The labels are
    measured once: the axes keep their size, so their ticks and labels stay the same when they move
    (a layout engine measures twice, since it resizes the axes, and a crop would measure again)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    pad = PANEL_PAD_PX
    w, h = fig.bbox.width, fig.bbox.height                       # every axes, in pixels
    over = _overhangs(fig, axes, renderer)
    nrows = math.ceil(len(axes) / ncols)
    left = [max((o[0] for o in over[c::ncols]), default=0.0) for c in range(ncols)]
    right = [max((o[2] for o in over[c::ncols]), default=0.0) for c in range(ncols)]
    top = [max(o[3] for o in over[r * ncols:(r + 1) * ncols]) for r in range(nrows)]
    bottom = [max(o[1] for o in over[r * ncols:(r + 1) * ncols]) for r in range(nrows)]
    head = 0.0
    if title:
        text = fig.suptitle(title, fontsize=title_size, va="top")
        head = text.get_window_extent(renderer).height + pad
    xs = np.cumsum([pad] + [left[c] + w + right[c] + pad for c in range(ncols)])   # column starts
    ys = np.cumsum([pad + head] + [top[r] + h + bottom[r] + pad for r in range(nrows)])
    width, height = float(xs[-1]), float(ys[-1])
    fig.set_size_inches(width / DPI, height / DPI)
    if title:
        text.set_y(1.0 - pad / height)
    crops = []
    for i, (ax, (o_left, o_bottom, o_right, o_top)) in enumerate(zip(axes, over)):
        r, c = divmod(i, ncols)
        x0, y0 = xs[c] + left[c], ys[r] + top[r]                 # the axes' top left corner
        ax.set_position((x0 / width, 1.0 - (y0 + h) / height, w / width, h / height))
        crops.append((max(0, int(x0 - o_left) - CROP_PAD_PX), max(0, int(y0 - o_top) - CROP_PAD_PX),
                      min(int(width), math.ceil(x0 + w + o_right) + CROP_PAD_PX),
                      min(int(height), math.ceil(y0 + h + o_bottom) + CROP_PAD_PX)))
    return crops


def colormap(name: str):
    matplotlib = _import_matplotlib()
    return matplotlib.colormaps[name]


def categorical_colors(values: np.ndarray, num_categories: int) -> np.ndarray:
    """RGBA per value from the fixed palette (tab10 up to 10 categories, else tab20); −1 is grey."""
    cmap = colormap("tab10" if num_categories <= 10 else "tab20")
    values = np.asarray(values, dtype=int)
    colors = np.asarray(cmap(np.mod(np.maximum(values, 0), cmap.N)), dtype=float).reshape(-1, 4)
    colors[values < 0] = UNLABELED_GREY
    return colors


def grid_shape(n: int, max_cols: int = 5) -> tuple[int, int]:
    ncols = max(1, min(max_cols, math.ceil(math.sqrt(n))))
    return math.ceil(n / ncols), ncols


# ----------------------------------------------------------------------------------------- latents

def project_2d(z: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """First two dimensions when D = 2, else the first two principal components (PC1, PC2)."""
    z = np.asarray(z, dtype=np.float64)
    if z.shape[1] == 2:
        return z, ("z1", "z2")
    centred = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:2]
    basis *= np.sign(basis[np.arange(2), np.abs(basis).argmax(axis=1)])[:, None]  # fixed sign
    return centred @ basis.T, ("PC1", "PC2")


def scatter_latents(ax, xy: np.ndarray, colors: np.ndarray, axis_labels, size: float = 5.0) -> None:
    ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=size, linewidths=0)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])


def class_legend(ax, present: np.ndarray, num_classes: int) -> None:
    from matplotlib.lines import Line2D
    classes = [int(c) for c in np.unique(present) if c >= 0]
    colors = categorical_colors(np.array(classes), num_classes)
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[i], markersize=4, label=str(c))
               for i, c in enumerate(classes)]
    if np.any(present < 0):
        handles.append(Line2D([], [], marker="o", linestyle="", color=UNLABELED_GREY, markersize=4,
                              label="unlabeled"))
    if handles:
        ax.legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                  title="label", title_fontsize=7)


# ------------------------------------------------------------------------------------------ images

def to_rgb(images: np.ndarray) -> np.ndarray:
    """Mean images [..., H, W, Ch] → RGB in [0, 1] for display (clipped; Ch = 1 shown grey)."""
    images = np.clip(np.nan_to_num(np.asarray(images, dtype=np.float32)), 0.0, 1.0)
    if images.shape[-1] == 3:
        return images
    return np.repeat(images[..., :1], 3, axis=-1)


def sigma_to_rgb(sigma: np.ndarray, lo: float, hi: float, shape: tuple[int, int]) -> np.ndarray:
    """σ maps (or one σ per image) → viridis RGB on the [lo, hi] range, tiles of `shape`."""
    sigma = np.atleast_1d(np.asarray(sigma, dtype=np.float32))
    if sigma.size == len(sigma):                                   # one σ per image
        sigma = np.broadcast_to(sigma.reshape(-1, 1, 1), (len(sigma), *shape))
    elif sigma.ndim == 4:                                          # [N, H, W, Ch] → mean over image channels
        sigma = sigma.mean(axis=-1)
    scaled = np.clip((sigma - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.asarray(colormap("viridis")(scaled), dtype=np.float32)[..., :3]


def montage(tiles: np.ndarray, gap_x: int, gap_y: int, top: int):
    """Tiles [R, C, H, W, 3] → one image on white, plus `origin(r, c) -> (y0, x0)` of each tile.

    A band of `top` pixels is left above the first row (column titles) and `gap_y` pixels above
    every row (notes). One imshow of a montage is far cheaper than R×C axes.
    """
    rows, cols, h, w, _ = tiles.shape
    out = np.ones((top + rows * (gap_y + h), cols * w + (cols - 1) * gap_x, 3), dtype=np.float32)

    def origin(r: int, c: int) -> tuple[int, int]:
        return top + r * (gap_y + h) + gap_y, c * (w + gap_x)

    for r in range(rows):
        for c in range(cols):
            y0, x0 = origin(r, c)
            out[y0:y0 + h, x0:x0 + w] = tiles[r, c]
    return out, origin


def draw_montage(tiles: np.ndarray, column_titles: list[str], tile_notes=None, row_titles=None,
                 inch_per_tile: float = 0.75, note_size: float = 5.5, note_lines: int = 1):
    """A figure holding one montage; `tile_notes[r][c]` is written just above tile (r, c)."""
    rows, cols, h, w, _ = tiles.shape
    gap_x = max(1, w // 8)
    gap_y = max(2, int(round(h * 0.3 * note_lines))) if tile_notes is not None else max(1, w // 8)
    top = max(2, int(round(h * 0.32))) if any(column_titles) else 0
    image, origin = montage(tiles, gap_x, gap_y, top)
    scale = inch_per_tile / w                         # inches per pixel
    fig, ax = new_figure(0.4 + scale * image.shape[1] + (0.6 if row_titles else 0), 0.2 + scale * image.shape[0])
    ax.imshow(image, interpolation="nearest", vmin=0, vmax=1)
    ax.set_axis_off()
    for c, title in enumerate(column_titles):
        _, x0 = origin(0, c)
        ax.text(x0 + (w - 1) / 2, top / 2 - 0.5, title, ha="center", va="center", fontsize=6.5,
                fontweight="bold")
    if tile_notes is not None:
        for r in range(rows):
            for c in range(cols):
                if tile_notes[r][c]:
                    y0, x0 = origin(r, c)
                    ax.text(x0 + (w - 1) / 2, y0 - 0.6, tile_notes[r][c], ha="center", va="bottom",
                            fontsize=note_size)
    if row_titles is not None:
        for r, title in enumerate(row_titles):
            y0, _ = origin(r, 0)
            ax.text(-1.0, y0 + (h - 1) / 2, title, ha="right", va="center", fontsize=6.5)
    return fig, ax


def mean_excluding_diagonal(matrix: np.ndarray) -> tuple[float, float, float]:
    n = matrix.shape[0]
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    off = matrix[~np.eye(n, dtype=bool)]
    return float(off.mean()), float(off.min()), float(off.max())
