"""Small inline SVG line charts (no JavaScript, no external assets)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
WIDTH, HEIGHT = 640, 230
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 28, 44


@dataclass(frozen=True)
class Series:
    """One line: a value per x label (None leaves a gap), optional [low, high] per point."""

    name: str
    values: Sequence[float | None]
    intervals: Sequence[Sequence[float] | None] | None = None


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series],
               y_range: tuple[float, float] | None = None) -> str:
    """An SVG line chart of series over labels; intervals drawn as whiskers."""
    if not labels:
        return f'<p class="empty">{escape(title)}: no data yet.</p>'
    points = [v for s in series for v in s.values if _finite(v)]
    points += [b for s in series for iv in (s.intervals or []) if iv for b in iv if _finite(b)]
    if y_range:
        lo, hi = y_range
    else:  # counts and error rates start at 0, so a flat line does not look like a swing
        lo, hi = (min(0.0, min(points)), max(points)) if points else (0.0, 1.0)
    if hi - lo < 1e-9:
        hi = lo + max(abs(lo), 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(labels) - 1)

    def x(i: int) -> float:
        return LEFT + (i * step if len(labels) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (v - lo) / (hi - lo))

    out = [f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{WIDTH}" '
           f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
           f'<title>{escape(title)}</title>',
           f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   f'stroke="#ddd"/><text x="{LEFT - 4}" y="{y(v) + 4:.1f}" font-size="10" '
                   f'text-anchor="end">{v:.3g}</text>')
    every = max(1, math.ceil(len(labels) / 8))
    for i, label in enumerate(labels):
        if i % every == 0 or i == len(labels) - 1:
            out.append(f'<text x="{x(i):.1f}" y="{TOP + plot_h + 16}" font-size="10" '
                       f'text-anchor="middle">{escape(label[:16])}</text>')
    for n, s in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        for i, iv in enumerate(s.intervals or []):
            if iv and len(iv) == 2 and all(_finite(b) for b in iv):
                out.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(iv[0]):.1f}" '
                           f'y2="{y(iv[1]):.1f}" stroke="{color}" stroke-opacity="0.45" '
                           f'stroke-width="5"/>')
        segment: list[str] = []
        for i, v in enumerate(list(s.values) + [None]):
            if _finite(v):
                segment.append(f"{x(i):.1f},{y(v):.1f}")  # type: ignore[arg-type]
                out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{color}">'  # type: ignore[arg-type]
                           f'<title>{escape(s.name)} {escape(labels[i])}: {v:.4g}</title></circle>')
            elif segment:
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                           f'points="{" ".join(segment)}"/>')
                segment = []
        ly = TOP + 14 * n + 8
        out.append(f'<rect x="{WIDTH - RIGHT + 10}" y="{ly - 8}" width="10" height="10" '
                   f'fill="{color}"/><text x="{WIDTH - RIGHT + 24}" y="{ly + 1}" '
                   f'font-size="11">{escape(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)
