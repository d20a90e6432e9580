"""Every figure of the adversarial rounds as small multiples, written as SVG text (matplotlib is no dependency)."""

from __future__ import annotations

import math
from typing import Any

PANELS = (  # title, (figure key, legend) per line
    ("judge ROC-AUC (held-out)", (("fresh_discriminator_auc", "fresh"), ("round0_discriminator_auc", "first round's"))),
    ("fresh judge's parts: ROC-AUC", (("fresh_pair_model_auc", "pair model"), ("length_baseline_auc", "length alone"))),
    ("reply perplexity (real held-out)", (("reply_perplexity", "perplexity"),)),
    ("distinct-2", (("distinct2_candidates", "candidates"), ("distinct2_real", "real replies"))),
    ("distinct-2, one reply per comment", (("distinct2_one_per_comment", "candidate"), ("distinct2_real_same_comments", "its real reply"))),
    ("share copying a training reply", (("copy_share", "candidates"),)),
    ("share kept (realism >= threshold)", (("share_kept", "candidates"),)),
    ("mean predicted upvotes", (("mean_predicted_upvotes", "candidates"), ("mean_predicted_upvotes_real", "real replies"))),
)
LINES = (("#1f77b4", ""), ("#d62728", ' stroke-dasharray="5,3"'))  # colour and dash: a second line may lie on the first
WIDTH, HEIGHT, COLUMNS = 330, 210, 3
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 28, 44


def plot_rounds(rounds: list[dict[str, Any]]) -> str:
    """One panel per PANELS entry, a line per figure, the rounds along x."""
    rows = math.ceil(len(PANELS) / COLUMNS)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH * COLUMNS}" height="{HEIGHT * rows}" '
             'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>']
    for index, (title, lines) in enumerate(PANELS):
        parts += _panel((index % COLUMNS) * WIDTH, (index // COLUMNS) * HEIGHT, title, lines, rounds)
    parts.append("</svg>")
    return "\n".join(parts)


def _panel(x0: float, y0: float, title: str, lines: tuple, rounds: list[dict[str, Any]]) -> list[str]:
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [f'<text x="{x0 + WIDTH / 2}" y="{y0 + 16}" text-anchor="middle" font-weight="bold">{title}</text>',
             f'<rect x="{x0 + LEFT}" y="{y0 + TOP}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#999"/>']
    series = [[(r["round"], r[key]) for r in rounds if r.get(key) is not None and math.isfinite(r[key])] for key, _ in lines]
    values = [y for points in series for _, y in points]
    if not values:
        return parts + [f'<text x="{x0 + WIDTH / 2}" y="{y0 + TOP + inner_h / 2}" text-anchor="middle" fill="#777">not measured</text>']
    xs = [r["round"] for r in rounds]
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 0.1

    def at(x: float, y: float) -> tuple[float, float]:
        return (x0 + LEFT + (x - xs[0]) / max(1, xs[-1] - xs[0]) * inner_w,
                y0 + TOP + (high + pad - y) / (high - low + 2 * pad) * inner_h)

    digits = next((d for d in range(3, 9) if f"{low:.{d}g}" != f"{high:.{d}g}"), 3)  # enough to tell the two apart
    parts += [f'<text x="{x0 + LEFT - 4}" y="{at(xs[0], v)[1] + 4:.1f}" text-anchor="end">{v:.{digits}g}</text>' for v in (low, high)]
    parts += [f'<text x="{at(x, low)[0]:.1f}" y="{y0 + TOP + inner_h + 14}" text-anchor="middle">{x}</text>' for x in xs]
    parts.append(f'<text x="{x0 + LEFT + inner_w / 2}" y="{y0 + TOP + inner_h + 26}" text-anchor="middle">round</text>')
    legend_x = x0 + LEFT
    for (_, legend), (color, dash), points in zip(lines, LINES, series):
        drawn = [at(x, y) for x, y in points]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in drawn)}"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in drawn]
        parts.append(f'<text x="{legend_x}" y="{y0 + HEIGHT - 4}" fill="{color}">— {legend}</text>')
        legend_x += 12 + 7 * len(legend)
    return parts
