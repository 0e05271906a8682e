"""Pictures of a stage-2 search and of a trained model: two PNG plots and an HTML highlight.

Pure functions: numbers and tokens in, a file (PNG) or a string (HTML) out; no model, no Ray,
no MLflow. The plots draw on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so
they never touch pyplot's global state (safe in threads, no display needed).

- :func:`pareto_plot`: dev FLOPs speedup vs dev score of every (trial, epoch) point, the Pareto
  front and the chosen point;
- :func:`retention_plot`: the mean fraction of input tokens entering each layer, one curve per
  model or data set;
- :func:`highlight_html`: a few examples with each token shaded by the layer at which it was
  dropped (kept to the end = darkest), with a legend; a self-contained page.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

Point = tuple[float, float]  # (dev FLOPs speedup, dev score)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    return path


def pareto_plot(
    points: Sequence[Point],
    front: Sequence[Point],
    chosen: Point,
    path: Path,
    reference: float | None = None,
    score_name: str = "dev accuracy",
) -> Path:
    """All points in gray, the front as a line (sorted by speedup), the chosen point as a red star;
    ``reference`` (the stage-1 dev score) as a dashed line. Writes a PNG to ``path``."""
    if not points:
        raise ValueError("pareto_plot needs at least one point")
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.scatter([p[0] for p in points], [p[1] for p in points], c="lightgray", label="trial epochs")
    line = sorted(front)
    ax.plot([p[0] for p in line], [p[1] for p in line], "o-", color="tab:blue", label="Pareto front")
    ax.scatter([chosen[0]], [chosen[1]], marker="*", s=250, color="tab:red", label="chosen", zorder=3)
    if reference is not None:
        ax.axhline(reference, ls="--", color="gray", lw=1, label=f"stage-1 {score_name}")
    ax.set_xlabel("dev FLOPs speedup")
    ax.set_ylabel(score_name)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def retention_plot(curves: Mapping[str, Sequence[float]], path: Path, title: str = "") -> Path:
    """One line per label: layer (1..L) vs the mean fraction of input tokens entering it.
    Curves may have different numbers of layers (different models). Writes a PNG to ``path``."""
    if not curves or any(len(values) == 0 for values in curves.values()):
        raise ValueError("retention_plot needs at least one non-empty curve")
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), list(values), "o-", label=label)
    layers = max(len(values) for values in curves.values())
    ax.set_xticks(range(1, layers + 1))
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean fraction of tokens kept")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


@dataclass
class HighlightExample:
    tokens: list[str]
    # per token, how many layers it entered: 0 = dropped before layer 1, k = dropped before
    # layer k + 1, num_layers = kept to the end
    layers_entered: list[int]
    caption: str = ""


def drop_shade(layers_entered: int, num_layers: int) -> str:
    """The background colour (hex) of a token that entered ``layers_entered`` of ``num_layers``
    layers: light for early drops, darkest for tokens kept to the end."""
    if not 0 <= layers_entered <= num_layers:
        raise ValueError(f"layers_entered must be in 0..{num_layers}, got {layers_entered}")
    return to_hex(colormaps["Blues"](0.1 + 0.85 * layers_entered / num_layers))


def drop_label(layers_entered: int, num_layers: int) -> str:
    return "kept to the end" if layers_entered == num_layers else f"dropped before layer {layers_entered + 1}"


def _shaded(text: str, layers: int, num_layers: int, css_class: str) -> str:
    """``text`` (already escaped) on the shade of ``layers``, white on the darker half."""
    colour = "#fff" if layers / num_layers > 0.5 else "#000"
    return (
        f'<span class="{css_class}" data-layers="{layers}" title="{drop_label(layers, num_layers)}" '
        f'style="background:{drop_shade(layers, num_layers)};color:{colour}">{text}</span>'
    )


def _token_span(token: str, layers: int, num_layers: int) -> str:
    continuation = token.startswith("##") and len(token) > 2  # WordPiece: glued to the previous token
    span = _shaded(html.escape(token[2:] if continuation else token), layers, num_layers, "tok")
    return span if continuation else " " + span


def highlight_html(examples: Sequence[HighlightExample], num_layers: int, title: str = "Kept tokens") -> str:
    """A self-contained HTML page (inline CSS, no scripts): one paragraph per example, each token
    shaded by :func:`drop_shade`, a legend with one swatch per layer. All text is HTML-escaped."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    legend = " ".join(_shaded(drop_label(k, num_layers), k, num_layers, "swatch") for k in range(num_layers + 1))
    body = []
    for index, example in enumerate(examples):
        if len(example.tokens) != len(example.layers_entered):
            raise ValueError(
                f"example {index}: {len(example.tokens)} tokens but {len(example.layers_entered)} layer counts"
            )
        tokens = "".join(_token_span(t, k, num_layers) for t, k in zip(example.tokens, example.layers_entered))
        caption = f'<div class="caption">{html.escape(example.caption)}</div>' if example.caption else ""
        body.append(f'<div class="example">{caption}<p>{tokens}</p></div>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; line-height: 2; }}
.tok, .swatch {{ padding: 0.1em 0.2em; border-radius: 0.2em; }}
.legend {{ margin-bottom: 1.5em; }}
.example {{ border-top: 1px solid #ddd; padding-top: 0.5em; }}
.caption {{ color: #555; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<div class="legend">{legend}</div>
{chr(10).join(body)}
</body>
</html>
"""
