"""adapler/pictures.py: the PNG plots are real PNGs, the highlight escapes text and shades each
token by the layer at which it was dropped."""

from __future__ import annotations

import re

import pytest
from matplotlib.colors import to_rgb

from adapler.pictures import HighlightExample, drop_shade, highlight_html, pareto_plot, retention_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKEN = re.compile(
    r'<span class="tok" data-layers="(\d+)" title="([^"]*)" style="background:(#[0-9a-f]{6});[^"]*">([^<]*)</span>'
)


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_pareto_plot_writes_a_png(tmp_path):
    points = [(1.0, 0.80), (1.5, 0.79), (2.0, 0.70), (1.2, 0.75)]
    path = pareto_plot(
        points, [(1.0, 0.80), (1.5, 0.79), (2.0, 0.70)], (1.5, 0.79), tmp_path / "sub" / "pareto.png", reference=0.8
    )
    assert path == tmp_path / "sub" / "pareto.png" and _is_png(path)
    with pytest.raises(ValueError, match="at least one point"):
        pareto_plot([], [], (1.0, 0.8), tmp_path / "empty.png")


def test_retention_plot_takes_several_curves_of_any_depth(tmp_path):
    one = retention_plot({"rt test": [1.0, 0.6, 0.3]}, tmp_path / "one.png")
    several = retention_plot(
        {"rt test": [1.0, 0.6, 0.3], "bbc test": [0.9, 0.5, 0.2, 0.1, 0.1, 0.05]},
        tmp_path / "several.png",
        title="two models",
    )
    assert _is_png(one) and _is_png(several)
    assert one.read_bytes() != several.read_bytes()
    for bad in ({}, {"empty": []}):
        with pytest.raises(ValueError, match="non-empty curve"):
            retention_plot(bad, tmp_path / "bad.png")


def _luminance(colour: str) -> float:
    r, g, b = to_rgb(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_shades_darken_with_every_layer_entered():
    shades = [drop_shade(k, 4) for k in range(5)]
    assert len(set(shades)) == 5
    assert all(_luminance(a) > _luminance(b) for a, b in zip(shades, shades[1:]))  # kept to the end = darkest
    with pytest.raises(ValueError):
        drop_shade(5, 4)


def test_highlight_shades_each_token_by_its_drop_layer():
    example = HighlightExample(
        tokens=["[CLS]", "a", "grip", "##ping", "film", ".", "[SEP]"],
        layers_entered=[3, 0, 2, 2, 3, 1, 3],
        caption="ex1: gold pos, predicted pos",
    )
    page = highlight_html([example], num_layers=3)
    spans = TOKEN.findall(page)
    assert [(text, int(layers)) for layers, _, _, text in spans] == [
        ("[CLS]", 3),
        ("a", 0),
        ("grip", 2),
        ("ping", 2),
        ("film", 3),
        (".", 1),
        ("[SEP]", 3),
    ]
    for layers, _title, colour, _ in spans:
        assert colour == drop_shade(int(layers), 3)
    titles = {text: title for _, title, _, text in spans}
    assert titles["a"] == "dropped before layer 1" and titles["grip"] == "dropped before layer 3"
    assert titles["film"] == "kept to the end"
    assert "grip</span><span" in page  # the WordPiece continuation is glued to its word
    legend = re.findall(r'<span class="swatch" data-layers="(\d)"[^>]*>([^<]*)</span>', page)
    assert legend == [
        ("0", "dropped before layer 1"),
        ("1", "dropped before layer 2"),
        ("2", "dropped before layer 3"),
        ("3", "kept to the end"),
    ]
    assert "ex1: gold pos, predicted pos" in page
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page


def test_highlight_escapes_text():
    example = HighlightExample(["<script>", "alert", "&", '"x"', "</script>"], [1, 1, 2, 0, 2], caption="a < b & c")
    page = highlight_html([example], num_layers=2, title="<b>title</b>")
    assert "<script>" not in page and "</script>" not in page and "<b>" not in page
    texts = [text for *_, text in TOKEN.findall(page)]
    assert texts == ["&lt;script&gt;", "alert", "&amp;", "&quot;x&quot;", "&lt;/script&gt;"]
    assert "a &lt; b &amp; c" in page and "&lt;b&gt;title&lt;/b&gt;" in page


def test_highlight_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 tokens but 1 layer counts"):
        highlight_html([HighlightExample(["a", "b"], [1])], num_layers=2)
