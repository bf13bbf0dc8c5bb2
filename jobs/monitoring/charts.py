"""Inline SVG charts for the operators' dashboard, drawn on the server.

Plain Python, no Django and nothing fetched by the browser: each function takes figures
from `jobs.monitoring.stats` and returns a self-contained `<svg>` string (every label escaped),
styled by the dashboard's CSS classes (`bar-succeeded`, `bar-failed`, `bar-received`,
`bar-entitled`, `bar-gap`, `flagged`).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

WIDTH = 640
FONT = 'font-family="sans-serif" font-size="11"'


def _svg(height: int, label: str, body: list[str]) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 5 × 10^k at least `value` (an axis top)."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale


def _number(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value:,.0f}"


def throughput_chart(last_hour: Sequence[dict[str, Any]]) -> str:
    """Jobs ended per minute over the last hour: succeeded and failed, stacked."""
    height, top, bottom, left = 150, 10, 20, 40
    plot_height = height - top - bottom
    peak = _nice_max(max((m["succeeded"] + m["failed"] for m in last_hour), default=0))
    slot = (WIDTH - left) / max(len(last_hour), 1)
    body = [
        f'<line x1="{left}" y1="{top + plot_height}" x2="{WIDTH}" y2="{top + plot_height}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" {FONT}>{_number(peak)}</text>',
        f'<text x="{left - 4}" y="{top + plot_height}" text-anchor="end" {FONT}>0</text>',
    ]
    for index, minute in enumerate(last_hour):
        x = left + index * slot
        base = top + plot_height
        tip = escape(
            f"{minute['minute'][11:16]}: {minute['succeeded']} ok, {minute['failed']} failed"
        )
        for count, css in (
            (minute["succeeded"], "bar-succeeded"),
            (minute["failed"], "bar-failed"),
        ):
            if count:
                bar = count / peak * plot_height
                base -= bar
                body.append(
                    f'<rect x="{x + 1:.1f}" y="{base:.1f}" width="{max(slot - 2, 1):.1f}" '
                    f'height="{bar:.1f}" class="{css}"><title>{tip}</title></rect>'
                )
    for index, text, anchor in (
        (0, "−60 min", "start"),
        (30, "−30 min", "middle"),
        (59, "now", "end"),
    ):
        x = (
            left
            + index * slot
            + (0 if anchor == "start" else slot if anchor == "end" else slot / 2)
        )
        body.append(
            f'<text x="{x:.1f}" y="{height - 5}" text-anchor="{anchor}" {FONT}>{text}</text>'
        )
    return _svg(height, "Jobs ended per minute, last hour", body)


def share_chart(shares: Sequence[dict[str, Any]], limit: int = 15) -> str:
    """Each user's received share of device time (filled) against the share their weight
    entitles them to (outlined); users whose difference is large are flagged in red."""
    rows = list(shares)[:limit]
    row_height, top, left = 26, 18, 120
    height = top + row_height * max(len(rows), 1) + 6
    scale = WIDTH - left - 60
    body = [
        f'<text x="{left}" y="12" {FONT}>received share (filled) vs entitled by the fluid fair schedule (outline)</text>'
    ]
    if not rows:
        body.append(f'<text x="{left}" y="{top + 14}" {FONT}>no device time in the window</text>')
    for index, row in enumerate(rows):
        y = top + index * row_height
        flagged = ' class="flagged"' if row["flagged"] else ""
        name = escape(f"{row['user']} ({row['pool']})" if "pool" in row else str(row["user"]))
        received, entitled = row["received_share"], row["entitled_share"]
        tip = escape(
            f"{row['user']}: received {received:.1%}, entitled {entitled:.1%}, "
            f"lag {row['lag_seconds']:.1f} s"
        )
        body += [
            f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" {FONT}{flagged}>{name}</text>',
            f'<rect x="{left}" y="{y + 3}" width="{received * scale:.1f}" height="9" '
            f'class="bar-received"><title>{tip}</title></rect>',
            f'<rect x="{left}" y="{y + 13}" width="{entitled * scale:.1f}" height="9" '
            f'class="bar-entitled"><title>{tip}</title></rect>',
            f'<text x="{left + max(received, entitled) * scale + 6:.1f}" y="{y + 15}" {FONT}'
            f"{flagged}>{received:.0%} / {entitled:.0%}</text>",
        ]
    return _svg(height, "Share of device time vs entitled share, last hour", body)


def _gap_label(low: float | None, high: float | None) -> str:
    def short(seconds: float) -> str:
        return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"

    if low is None and high is not None:
        return f"< {short(high)}"
    if high is None and low is not None:
        return f"≥ {short(low)}"
    return f"{short(low or 0)}–{short(high or 0)}"


def histogram_chart(edges: Sequence[float], counts: Sequence[int]) -> str:
    """The idle gap between consecutive jobs on a device, bucketed by `edges` (seconds)."""
    height, top, bottom = 150, 14, 34
    plot_height = height - top - bottom
    peak = max(counts, default=0) or 1
    slot = WIDTH / max(len(counts), 1)
    bounds = [None, *edges]
    body = []
    for index, count in enumerate(counts):
        low, high = bounds[index], (edges[index] if index < len(edges) else None)
        label = escape(_gap_label(low, high))
        bar = count / peak * plot_height
        x = index * slot
        body += [
            f'<rect x="{x + 4:.1f}" y="{top + plot_height - bar:.1f}" width="{slot - 8:.1f}" '
            f'height="{bar:.1f}" class="bar-gap"><title>{label}: {count}</title></rect>',
            f'<text x="{x + slot / 2:.1f}" y="{top + plot_height - bar - 3:.1f}" '
            f'text-anchor="middle" {FONT}>{count}</text>',
            f'<text x="{x + slot / 2:.1f}" y="{height - 18}" text-anchor="middle" {FONT}>{label}</text>',
        ]
    body.append(
        f'<text x="{WIDTH / 2:.0f}" y="{height - 3}" text-anchor="middle" {FONT}>'
        "idle gap between one job's end and the next one's start on the same device</text>"
    )
    return _svg(height, "Device idle gap between jobs, last hour", body)
