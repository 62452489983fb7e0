"""Component-curriculum plot: k_active over epochs with unlocks, kicks and the stop."""

from __future__ import annotations

import numpy as np

from .common import PlotData, PlotSkipped, new_figure, save, style


def gate_curriculum(cfg) -> str | None:
    return None if cfg.curriculum.enabled else "curriculum.enabled is false"


def draw_curriculum_k_active(data: PlotData, path) -> None:
    series = data.history("train/curriculum.k_active")
    if series is None:
        raise PlotSkipped("run has no train/curriculum.k_active history")
    epochs, k_active = series
    unlocks = [int(e["epoch"]) for e in data.events if e.get("event") == "unlock"]
    if not unlocks and data.history("train/curriculum.unlocked") is not None:
        unlock_epochs, flags = data.history("train/curriculum.unlocked")
        unlocks = [int(e) for e, f in zip(unlock_epochs, flags) if f >= 0.5]
    kicks = data.history("train/curriculum.kick_active")
    monitor_key = data.cfg.curriculum.unlock.monitor
    monitor = data.history(monitor_key)
    with style():
        fig, ax = new_figure(6.0, 3.0)
        if kicks is not None:
            for i, epoch in enumerate(kicks[0][kicks[1] >= 0.5]):
                ax.axvspan(epoch - 0.5, epoch + 0.5, color="C1", alpha=0.18, linewidth=0,
                           label="kick" if i == 0 else None)
        for i, epoch in enumerate(unlocks):
            ax.axvline(epoch, color="C2", linestyle=":", linewidth=1.0, label="unlock" if i == 0 else None)
        ax.step(epochs, k_active, where="mid", color="C0", linewidth=1.6, label="k_active")
        ax.set_xlabel("epoch")
        ax.set_ylabel("active components")
        ax.set_ylim(0, max(float(np.max(k_active)), float(data.cfg.model.num_components)) + 0.5)
        for event in data.events:
            if event.get("event") == "stop":
                ax.annotate(f"stop: {event.get('reason')}", xy=(event["epoch"], event.get("k_active") or k_active[-1]),
                            xytext=(0, 14), textcoords="offset points", ha="center", fontsize=7,
                            arrowprops={"arrowstyle": "->", "lw": 0.8})
        handles, labels = ax.get_legend_handles_labels()
        legend_axes = ax
        if monitor is not None:
            legend_axes = ax.twinx()                 # drawn above ax, so its legend stays on top
            legend_axes.grid(False)
            line, = legend_axes.plot(*monitor, color="C3", linewidth=1.0, alpha=0.8, label=monitor_key)
            legend_axes.set_ylabel(monitor_key)
            handles.append(line)
            labels.append(monitor_key)
        legend_axes.legend(handles, labels, fontsize=6, loc="lower right")
        ax.set_title("component curriculum")
        save(fig, path)
