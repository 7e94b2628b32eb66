"""Server-side SVG bar charts: plain markup, no script, nothing fetched, so the pages work offline.

Horizontal bars (names can be long: user and group names); each bar carries data-label/data-value so tests and
curious admins can read the numbers, and a <title> tooltip.
"""

from __future__ import annotations

from html import escape

PALETTE = ("#3867d6", "#20bf6b", "#f7b731", "#eb3b5a", "#8854d0", "#0fb9b1", "#fa8231", "#4b6584")


def _num(v: float) -> str:
    if float(v).is_integer():
        return str(int(v))
    return f"{v:,.2f}".rstrip("0").rstrip(".")


def bar_chart(items, *, title: str, unit: str = "", chart_id: str = "", width: int = 640,
              bar_height: int = 22, label_width: int = 160) -> str:
    """An SVG bar chart of (label, value) pairs, in the order given. Values < 0 are drawn as 0."""
    items = [(str(label), float(value or 0)) for label, value in items]
    gap = 8
    top = 30
    value_width = 110
    plot = max(width - label_width - value_width, 60)
    height = top + max(len(items), 1) * (bar_height + gap) + 6
    peak = max((v for _, v in items), default=0.0)
    attrs = f' id="{escape(chart_id)}"' if chart_id else ""
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart"{attrs} width="100%" '
            f'style="max-width:{width}px;height:auto" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'),
           f'<text x="0" y="18" class="chart-title" font-size="14" font-weight="bold">{escape(title)}</text>']
    if not items:
        out.append(f'<text x="{label_width}" y="{top + bar_height - 6}" class="chart-empty" font-size="13" '
                   f'fill="#666">no data for this period</text>')
    for i, (label, value) in enumerate(items):
        y = top + i * (bar_height + gap)
        w = 0.0 if peak <= 0 else max(value, 0) / peak * plot
        shown = f"{_num(value)} {unit}".strip()
        short = label if len(label) <= 22 else label[:21] + "…"
        out.append(
            f'<g class="bar" data-label="{escape(label)}" data-value="{value:g}">'
            f'<title>{escape(label)}: {escape(shown)}</title>'
            f'<text x="{label_width - 6}" y="{y + bar_height - 6}" text-anchor="end" font-size="12">'
            f'{escape(short)}</text>'
            f'<rect x="{label_width}" y="{y}" width="{w:.1f}" height="{bar_height}" rx="3" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{label_width + w + 6:.1f}" y="{y + bar_height - 6}" font-size="12" class="bar-value">'
            f'{escape(shown)}</text></g>')
    out.append("</svg>")
    return "".join(out)
