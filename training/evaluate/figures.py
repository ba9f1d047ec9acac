"""The report's figures (matplotlib, Agg backend: no display needed).

Count frames are shown inverted (dark = high uptake) as bone scans are read, cropped to the
rows the sweep covered, with one grey scale per example (0 to the truth's 99.5th percentile)
so that every panel of a row is comparable.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: the evaluation runs headless

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from training.evaluate.records import EvaluationResult

__all__ = ["plot_error_maps", "plot_examples", "plot_psnr_by_band"]

_DPI = 110
_WHITE_PERCENTILE = 99.5


def _enhanced_name(result: EvaluationResult) -> str | None:
    """The primary model, else the strongest baseline that ran on the examples."""
    names = result.examples[0].images if result.examples else {}
    for name in (result.primary, "bm3d", "gaussian"):
        if name is not None and name in names:
            return name
    return None


def plot_examples(result: EvaluationResult, path: Path) -> bool:
    """Rapid / enhanced / standard / truth side by side, one row per example.

    Returns
    -------
    bool
        False when there was nothing to plot (no example kept).
    """
    enhanced = _enhanced_name(result)
    if not result.examples:
        return False
    columns = [("rapid", "rapid x dose")]
    if enhanced is not None:
        columns.append((enhanced, f"enhanced ({enhanced})"))
    columns += [("standard", "standard 20 cm/min"), ("truth", "truth λ")]
    fig, axes = plt.subplots(
        len(result.examples),
        len(columns),
        figsize=(2.4 * len(columns), 5.2 * len(result.examples)),
        squeeze=False,
    )
    for row, example in enumerate(result.examples):
        white = float(np.percentile(example.images["truth"][: example.rows], _WHITE_PERCENTILE))
        for col, (key, title) in enumerate(columns):
            ax = axes[row][col]
            image = example.images.get(key)
            if image is not None:
                ax.imshow(image[: example.rows], cmap="gray_r", vmin=0.0, vmax=white)
            ax.set_title(f"{title}\nscan {example.study} {example.view}", fontsize=8)
            ax.set_axis_off()
    fig.suptitle(f"Examples ({result.settings['speed_cm_min']} cm/min input)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return True


def plot_error_maps(result: EvaluationResult, path: Path) -> bool:
    """``|estimate - truth|`` of every method (and the standard scan), one row per example."""
    if not result.examples:
        return False
    order = ["standard", *(m.name for m in result.methods if m.provided)]
    names = [n for n in dict.fromkeys(order) if n in result.examples[0].images]
    fig, axes = plt.subplots(
        len(result.examples),
        len(names),
        figsize=(2.0 * len(names) + 0.8, 5.0 * len(result.examples)),
        squeeze=False,
        layout="constrained",
    )
    for row, example in enumerate(result.examples):
        truth = example.images["truth"][: example.rows]
        # One scale per row, set by the unprocessed rapid input's error.
        rapid = example.images.get("rapid", example.images["standard"])[: example.rows]
        top = max(float(np.percentile(np.abs(rapid - truth), 99.5)), 1e-6)
        for col, name in enumerate(names):
            ax = axes[row][col]
            image = example.images.get(name)
            if image is None:
                ax.set_title(f"{name}\n(not run here)", fontsize=8)
            else:
                ax.imshow(np.abs(image[: example.rows] - truth), cmap="magma", vmin=0.0, vmax=top)
                ax.set_title(f"|{name} - truth|\nscan {example.study}", fontsize=8)
            ax.set_axis_off()
        # One bar per row, beside the whole row so that no panel shrinks.
        scale = ScalarMappable(norm=Normalize(0.0, top), cmap="magma")
        fig.colorbar(scale, ax=list(axes[row]), shrink=0.6, label="counts")
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return True


def plot_psnr_by_band(values: dict[str, dict[str, float]], path: Path) -> bool:
    """Grouped bars: mean PSNR vs truth per body-size group and method."""
    # _band_table lists every method's bands youngest first.
    bands = list(next(iter(values.values()), {}))
    if not values or not bands:
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(bands) * max(1, len(values)) / 3), 4.0))
    width = 0.8 / len(values)
    positions = np.arange(len(bands))
    for index, (name, by_band) in enumerate(values.items()):
        heights = [by_band.get(b, np.nan) for b in bands]
        ax.bar(positions + index * width - 0.4 + width / 2, heights, width, label=name)
    ax.set_xticks(positions, bands)
    ax.set_ylabel("PSNR vs truth (dB)")
    ax.set_title("PSNR per body size (age group)")
    finite = [v for by_band in values.values() for v in by_band.values() if np.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) - 2.0, max(finite) + 1.0)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return True
