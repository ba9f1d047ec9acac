"""Logged training curves: a CSV that grows as training runs, and a PNG at the end."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
from matplotlib import pyplot as plt

__all__ = ["CurveLog"]


class CurveLog:
    """Rows of ``{column: value}`` kept in memory and appended to ``path`` (CSV)."""

    def __init__(self, path: Path, rows: Sequence[dict[str, float]] = ()) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = [dict(row) for row in rows]
        self._rewrite()

    def append(self, row: dict[str, float]) -> None:
        """Add one row and rewrite the CSV (columns may grow as validation starts)."""
        self.rows.append(dict(row))
        self._rewrite()

    def _rewrite(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns or ["iteration"])
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self, path: Path) -> Path:
        """One panel per logged quantity against the iteration."""
        keys = sorted({k for row in self.rows for k in row} - {"iteration"})
        figure, axes = plt.subplots(
            len(keys) or 1, 1, figsize=(7, 2.2 * max(len(keys), 1)), squeeze=False
        )
        for axis, key in zip(axes[:, 0], keys, strict=False):
            points = [
                (row["iteration"], row[key])
                for row in self.rows
                if key in row and math.isfinite(row[key])
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="." if len(xs) < 30 else None)
            axis.set_ylabel(key)
            axis.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("iteration")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path
