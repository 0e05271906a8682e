"""Draw the pictures the README and the docs show, from committed results files only.

    python docs/make_figures.py      # writes docs/img/speed-accuracy-bbc_news.png

speed-accuracy-bbc_news.png: test accuracy against FLOPs speedup on BBC News
(bench/results/untuned.json): the backbone, the model the untuned search chose, and the static
alternatives a practitioner would try instead (truncation, fewer layers).
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]


def speed_accuracy(dataset: str, out: Path) -> Path:
    records = [r for r in json.loads((ROOT / "bench/results/untuned.json").read_text()) if r["dataset"] == dataset]
    fig = Figure(figsize=(6, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    static = sorted(
        (r for r in records if r["variant"].startswith(("truncate", "backbone"))), key=lambda r: r["flops_speedup"]
    )
    ax.plot(
        [r["flops_speedup"] for r in static],
        [r["test_accuracy"] for r in static],
        "o--",
        color="gray",
        label="backbone cut to fewer tokens (truncation)",
    )
    for r in static:
        ax.annotate(
            r["variant"],
            (r["flops_speedup"], r["test_accuracy"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=7,
            color="gray",
        )
    chosen = next(r for r in records if r["variant"] == "adapler")
    ax.plot(
        [chosen["flops_speedup"]],
        [chosen["test_accuracy"]],
        "*",
        ms=16,
        color="tab:red",
        label=f"AdapLeR ({chosen['input_budget']} tokens + token removal)",
    )
    ax.annotate(
        f"{chosen['flops_speedup']:.1f}x",
        (chosen["flops_speedup"], chosen["test_accuracy"]),
        textcoords="offset points",
        xytext=(-14, 10),
        fontsize=8,
        color="tab:red",
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16, 32], ["1x", "2x", "4x", "8x", "16x", "32x"])
    ax.set_ylim(0.90, 1.0)  # a point is ~2 articles of 223: a tighter axis would draw noise as a trend
    ax.set_xlabel("FLOPs speedup over the 512-token backbone (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{dataset} test split (bench/results/untuned.json)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


if __name__ == "__main__":
    print(speed_accuracy("bbc_news", ROOT / "docs/img/speed-accuracy-bbc_news.png"))
