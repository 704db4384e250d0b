"""The table and chart every experiment ends with: one value per seed in each cell, reported as
mean ± standard deviation, in Markdown, JSON and a grouped bar chart with error bars.

Rows are the things compared (methods), columns the conditions they are compared under (e.g.
the number of training mazes). Keeping every seed's value, not just the mean, lets a reader
recompute any statistic, and lets a resumed experiment add the seeds it is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ResultTable"]


@dataclass
class ResultTable:
    """Values by (row, column), one per seed; rows and columns keep the order they were named."""

    title: str
    row_name: str = "method"
    column_name: str = "condition"
    unit: str = "%"
    scale: float = 100.0
    """Displayed value = stored value × scale (rates are stored in [0, 1], shown in percent)."""
    rows: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, row: str, column: str, value: float) -> None:
        """One seed's value of a cell."""
        if row not in self.rows:
            self.rows.append(row)
        if column not in self.columns:
            self.columns.append(column)
        self.values.setdefault((row, column), []).append(float(value))

    def cell(self, row: str, column: str) -> tuple[float, float, int]:
        """(mean, standard deviation, count) of a cell, displayed units; NaN if empty. The
        standard deviation is the population one (ddof 0): with three seeds it describes the
        spread seen, it does not pretend to estimate more."""
        v = np.asarray(self.values.get((row, column), []), dtype=float) * self.scale
        if len(v) == 0:
            return float("nan"), float("nan"), 0
        return float(v.mean()), float(v.std()), len(v)

    def markdown(self, digits: int = 1) -> str:
        """A Markdown table: `mean ± std` per cell, the seed count in the header."""
        counts = {n for r in self.rows for c in self.columns if (n := self.cell(r, c)[2])}
        seeds = f"{counts.pop()} seeds" if len(counts) == 1 else "seeds per cell vary"
        header = [self.row_name, *self.columns]
        lines = [
            f"| {' | '.join(header)} |",
            "| --- |" + " --: |" * len(self.columns),
        ]
        for r in self.rows:
            cells = []
            for c in self.columns:
                mean, std, n = self.cell(r, c)
                cells.append("–" if n == 0 else f"{mean:.{digits}f} ± {std:.{digits}f}")
            lines.append(f"| {r} | {' | '.join(cells)} |")
        return f"{self.title} ({self.unit}, mean ± std over {seeds})\n\n" + "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "row_name": self.row_name,
            "column_name": self.column_name,
            "unit": self.unit,
            "scale": self.scale,
            "rows": self.rows,
            "columns": self.columns,
            "cells": [
                {
                    "row": r,
                    "column": c,
                    "values": self.values[(r, c)],
                    "mean": self.cell(r, c)[0],
                    "std": self.cell(r, c)[1],
                }
                for r in self.rows
                for c in self.columns
                if (r, c) in self.values
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResultTable:
        table = cls(
            data["title"],
            data["row_name"],
            data["column_name"],
            data["unit"],
            float(data["scale"]),
            list(data["rows"]),
            list(data["columns"]),
        )
        for cell in data["cells"]:
            table.values[(cell["row"], cell["column"])] = [float(v) for v in cell["values"]]
        return table

    def bar_chart(
        self,
        path: str | Path,
        *,
        ylabel: str | None = None,
        reference: Sequence[tuple[str, float]] = (),
    ) -> Path:
        """Grouped bars (one group per column, one bar per row) at the mean, error bars of one
        standard deviation, every seed's value as a dot; `reference` draws labelled horizontal
        lines (e.g. the expert's rate), in stored units."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n_rows, n_cols = len(self.rows), len(self.columns)
        width = 0.8 / max(n_rows, 1)
        # the legend stands right of the axes, where it hides neither bars nor reference lines
        fig, ax = plt.subplots(figsize=(3.0 + 0.45 * n_cols * max(n_rows, 1), 3.6))
        x = np.arange(n_cols)
        for i, r in enumerate(self.rows):
            stats = [self.cell(r, c) for c in self.columns]
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(
                pos,
                [s[0] for s in stats],
                width * 0.9,
                yerr=[s[1] for s in stats],
                capsize=3,
                label=r,
                color=f"C{i}",
                alpha=0.85,
            )
            for p, c in zip(pos, self.columns, strict=True):
                seeds = np.asarray(self.values.get((r, c), []), dtype=float) * self.scale
                ax.scatter(np.full(len(seeds), p), seeds, s=8, color="black", zorder=3)
        for label, value in reference:
            ax.axhline(value * self.scale, color="grey", linestyle="--", linewidth=1)
            ax.text(
                0.99,
                value * self.scale,
                label,
                transform=ax.get_yaxis_transform(),  # x in axes fractions, y in data
                ha="right",
                va="bottom",
                fontsize=8,
                color="grey",
            )
        ax.set_xticks(x, self.columns)
        ax.set_xlabel(self.column_name)
        ax.set_ylabel(ylabel or f"{self.title} ({self.unit})")
        if self.unit == "%":
            ax.set_ylim(0, 108)  # headroom for the reference lines' labels at 100%
            ax.set_yticks(range(0, 101, 20))
        ax.set_title(self.title, fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def write_json(path: str | Path, data: Any) -> Path:
    """JSON written to a temporary name and renamed, so a killed run never leaves half a file
    that a resumed run would fail to read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=1))
    staging.replace(path)
    return path
