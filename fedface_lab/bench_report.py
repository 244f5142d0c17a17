"""The experiment's markdown table and its per-round plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _cell(row: dict[str, Any], key: str) -> str:
    std = row.get(f"{key}_std")
    return f"{row[key]:.4f}" + (f" ± {std:.4f}" if std else "")


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        "| method | accuracy (A) | TAR@FAR=1e-3 (B) | TAR@FAR=1e-4 (B) | ROC AUC (B) | mean cos between identities "
        "| rounds | wall time (s) | upload per device per round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        up = r["bytes_up_per_device_per_round"]
        lines.append(
            f"| {r['method']} | {_cell(r, 'accuracy')} | {_cell(r, 'tar@far=0.001')} | {_cell(r, 'tar@far=0.0001')} "
            f"| {_cell(r, 'auc')} | {r['feature_mean_offdiag_cos']:.3f} | {r['rounds']} | {r['wall_s']:.0f} "
            f"| {'' if up is None else f'{up / 1e6:.2f} MB'} |")
    def pct(key: str) -> str:
        closed = result.get(key)
        return "n/a" if closed is None else f"{100 * closed:.0f}%"

    seeds = result["plan"]["seeds"]
    methods = [r["method"] for r in result["rows"]]
    closed = [f"{m} {pct(f'{m}_gap_closed_tar@far=0.001')}" for m in methods
              if f"{m}_gap_closed_tar@far=0.001" in result]
    to_lda = [f"{m} {pct(f'{m}_gap_to_centralized+lda_closed_tar@far=0.001')}" for m in methods
              if f"{m}_gap_to_centralized+lda_closed_tar@far=0.001" in result]
    any_gap = any(result.get(f"{m}_gap_closed_tar@far=0.001") is not None for m in methods)
    no_gap = (" The centralized fine-tune does not beat the pretrained network, so there is no gap to close."
              if "centralized" in methods else "")
    gap_text = (f" Share of the pretrained-to-centralized gap in TAR@FAR=1e-3 closed: {'; '.join(closed)}."
                + (f" Against centralized+lda: {'; '.join(to_lda)}." if to_lda else "")) if any_gap else (
        no_gap + " The change against the pretrained network, in points: " + "; ".join(gains_over_pretrained(result))
        + ".")
    lines += ["", f"Seeds: {len(seeds)} (± is the standard deviation over seeds).{gap_text}"
              f" Total wall time {int(result['wall_s'] // 60)} min {result['wall_s'] % 60:.0f} s."]
    return "\n".join(lines) + "\n"


def gains_over_pretrained(result: dict[str, Any]) -> list[str]:
    """Each row's change against the pretrained row, in points (A, TAR@1e-3, TAR@1e-4, AUC x 100)."""
    rows = {r["method"]: r for r in result["rows"]}
    start = rows["pretrained"]
    keys = (("accuracy", "A"), ("tar@far=0.001", "TAR@1e-3"), ("tar@far=0.0001", "TAR@1e-4"), ("auc", "AUC"))
    return [f"{method} " + ", ".join(f"{label} {100 * (row[key] - start[key]):+.2f}" for key, label in keys)
            for method, row in rows.items() if method != "pretrained"]


def plot_curves(result: dict[str, Any], path: Path) -> Path:
    """Pairs accuracy at the evaluated rounds (left) and the collapse monitor, the mean off-diagonal
    cosine of W, after every round (right)."""
    fig, (ax, mon) = plt.subplots(1, 2, figsize=(12, 4))
    for method, seeds in result["curves"].items():
        for seed, points in seeds.items():
            evaluated = [p for p in points if "accuracy" in p]
            ax.plot([p["round"] for p in evaluated], [p["accuracy"] for p in evaluated], marker="o", markersize=3,
                    label=f"{method} ({seed})")
            monitored = [p for p in points if p.get("w_mean_offdiag_cos") is not None]
            if monitored:
                mon.plot([p["round"] for p in monitored], [p["w_mean_offdiag_cos"] for p in monitored],
                         marker=".", label=f"{method} ({seed})")
    levels = {"centralized": ("--", "centralized fine-tune"), "lda": (":", "discriminant round, no training")}
    for row in result["rows"]:
        if row["method"] in levels:
            style, label = levels[row["method"]]
            ax.axhline(row["accuracy"], linestyle=style, color="grey", label=label)
        elif row["method"].endswith("+lda") and row["rounds"]:
            # A closing discriminant round: one point after the training rounds it closes.
            ax.plot([row["rounds"]], [row["accuracy"]], marker="*", markersize=10, linestyle="none",
                    label=f"{row['method']} (closing round)")
    ax.set_xlabel("round")
    ax.set_ylabel("pairs accuracy, dev folds (A)")
    mon.set_xlabel("round")
    mon.set_ylabel("mean cosine between rows of W (1 = collapse)")
    for axis in (ax, mon):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], md_path: Path, png_path: Path) -> str:
    md = markdown_table(result)
    md_path.write_text(md)
    plot_curves(result, png_path)
    return md
