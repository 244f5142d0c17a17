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
    baselines = [f"{label}: {pct(key)}" for label, key in (
        ("re-centring alone", "recentred_gap_closed_tar@far=0.001"),
        ("the discriminant round alone", "lda_gap_closed_tar@far=0.001"),
        ("the discriminant round against centralized+lda", "lda_gap_to_centralized+lda_closed_tar@far=0.001"),
    ) if key in result]
    lines += ["", f"Seeds: {len(seeds)} (± is the standard deviation over seeds). FedFace closes "
                  f"{pct('fedface_gap_closed_tar@far=0.001')} of the pretrained-to-centralized gap in "
                  f"TAR@FAR=1e-3" + (f" ({'; '.join(baselines)})" if baselines else "") + ". "
                  f"Total wall time {result['wall_s'] / 60:.0f} min."]
    return "\n".join(lines) + "\n"


def plot_curves(result: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, seeds in result["curves"].items():
        for seed, points in seeds.items():
            ax.plot([p["round"] for p in points], [p["accuracy"] for p in points], marker="o", markersize=3,
                    label=f"{method} ({seed})")
    levels = {"centralized": ("--", "centralized upper bound"), "lda": (":", "discriminant round, no training")}
    for row in result["rows"]:
        if row["method"] in levels:
            style, label = levels[row["method"]]
            ax.axhline(row["accuracy"], linestyle=style, color="grey", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("pairs accuracy, dev folds (A)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], md_path: Path, png_path: Path) -> str:
    md = markdown_table(result)
    md_path.write_text(md)
    plot_curves(result, png_path)
    return md
