"""Control charts as Plotly figures (pure: a frame in, a figure out).

Plotly renders a small HTML subset in titles and hover text, so the figures carry no text from
the data at all: the page writes the sensor's name above the chart, and hover text holds only
numbers and our own rule names and explanations.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from qctrace.schema import Flag

VALUE_COLOUR = "#1f77b4"
MEAN_COLOUR = "#7f7f7f"
CONTROL_COLOUR = "#9467bd"
SPEC_COLOUR = "#ff7f0e"
LABEL_BACKGROUND = "rgba(255, 255, 255, 0.8)"  # keeps line labels readable over the data

RULE_COLOURS: dict[str, str] = {
    "SPEC_LOW": "#d62728", "SPEC_HIGH": "#d62728", "NOT_FINITE": "#d62728",
    "BAND_LOW": "#d62728", "BAND_HIGH": "#d62728", "BUDGET": "#8c0000", "DOOR_OPEN": "#8c0000",
    "EWMA_Z": "#ff7f0e", "CUSUM_HIGH": "#e377c2", "CUSUM_LOW": "#e377c2",
    "SPIKE": "#9467bd", "RATE": "#9467bd", "STUCK": "#8c564b", "GAP": "#7f7f7f", "STALE": "#7f7f7f",
    "BAD_QUALITY": "#bcbd22",
}
"""One colour per rule family: red = product out of specification, orange/pink = statistical shift."""
NELSON_COLOUR = "#17becf"

WHY: dict[str, str] = {
    "SPEC_LOW": "below the lower spec limit", "SPEC_HIGH": "above the upper spec limit",
    "EWMA_Z": "EWMA z-score beyond its limit (a shift)", "BAD_QUALITY": "the source reported bad quality",
    "NOT_FINITE": "not a finite number", "CUSUM_HIGH": "CUSUM: sustained upward shift or drift",
    "CUSUM_LOW": "CUSUM: sustained downward shift or drift", "RATE": "changed faster than allowed",
    "SPIKE": "robust spike: far from the running median", "STUCK": "same value too many times (frozen)",
    "GAP": "came after a silence", "BAND_LOW": "below the product's band", "BAND_HIGH": "above the product's band",
    "BUDGET": "excursion budget spent", "DOOR_OPEN": "door open too long", "STALE": "sensor went silent",
    "NELSON_1": "Nelson 1: beyond 3σ", "NELSON_2": "Nelson 2: 9 in a row on one side",
    "NELSON_3": "Nelson 3: 6 in a row trending", "NELSON_4": "Nelson 4: 14 alternating",
    "NELSON_5": "Nelson 5: 2 of 3 beyond 2σ", "NELSON_6": "Nelson 6: 4 of 5 beyond 1σ",
    "NELSON_7": "Nelson 7: 15 within 1σ", "NELSON_8": "Nelson 8: 8 beyond 1σ",
}


def primary_rule(flags: int) -> str:
    """The rule a flagged point is coloured by: the most severe one set (spec before statistics)."""
    names = Flag(int(flags)).rule_names()
    for name in ("NOT_FINITE", "SPEC_HIGH", "SPEC_LOW", "BAND_HIGH", "BAND_LOW", "BUDGET", "DOOR_OPEN"):
        if name in names:
            return name
    return names[0] if names else ""


def explain(flags: int) -> str:
    """Why a point was flagged, one reason per rule, for the hover (our own words only)."""
    return "<br>".join(f"{n}: {WHY.get(n, n)}" for n in Flag(int(flags)).rule_names())


def control_chart(readings: pd.DataFrame, sensor_key: str, lsl: float | None, usl: float | None,
                  height: int = 280) -> go.Figure:
    """Values over source time with centre line, ±3σ control limits, spec limits and flagged points.

    ``sensor_key`` only keys the figure's UI state (zoom survives refreshes); it is not drawn.
    ``readings`` has columns ``ts``, ``value`` and ``flags`` for one sensor, oldest first. Centre
    and control limits are the mean and ±3 standard deviations of the unflagged finite values
    shown, so they follow the window and a fault does not widen its own limits.
    """
    values = readings["value"].astype(float)
    flags = readings["flags"].astype(np.int64)
    finite = values[np.isfinite(values)]
    in_control = values[np.isfinite(values) & (flags == 0)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=readings["ts"], y=values, mode="lines", name="value", line={"color": VALUE_COLOUR, "width": 1.5},
        hovertemplate="%{x|%H:%M:%S.%L}<br>%{y:.4g}<extra></extra>"))
    flagged = readings[flags != 0]
    rules = [primary_rule(int(f)) for f in flagged["flags"]]
    for rule in sorted(set(rules)):
        sel = flagged[[r == rule for r in rules]]
        fig.add_trace(go.Scatter(
            x=sel["ts"], y=sel["value"].astype(float), mode="markers", name=rule,
            marker={"color": RULE_COLOURS.get(rule, NELSON_COLOUR), "size": 9, "line": {"color": "white", "width": 1}},
            customdata=[explain(int(f)) for f in sel["flags"]],
            hovertemplate="%{x|%H:%M:%S.%L}<br>value %{y:.4g}<br>%{customdata}<extra>" + rule + "</extra>"))
    lines: list[float] = []
    if len(in_control) >= 2:
        mean, sd = float(in_control.mean()), float(in_control.std())
        fig.add_hline(y=mean, line={"color": MEAN_COLOUR, "dash": "dot", "width": 1},
                      annotation_text=f"CL {mean:.4g}", annotation_position="bottom left",
                      annotation_bgcolor=LABEL_BACKGROUND)
        if sd > 0:
            for name, y in (("LCL", mean - 3 * sd), ("UCL", mean + 3 * sd)):
                fig.add_hline(y=y, line={"color": CONTROL_COLOUR, "dash": "dot", "width": 1},
                              annotation_text=f"{name} {y:.4g}", annotation_position="bottom right",
                              annotation_bgcolor=LABEL_BACKGROUND)
                lines.append(y)
    for name, limit in (("LSL", lsl), ("USL", usl)):
        if limit is not None and math.isfinite(limit):
            fig.add_hline(y=limit, line={"color": SPEC_COLOUR, "dash": "dash", "width": 1.5},
                          annotation_text=f"{name} {limit:g}", annotation_position="top left",
                          annotation_bgcolor=LABEL_BACKGROUND)
            lines.append(limit)
    _include_in_range(fig, finite, lines)
    fig.update_layout(
        height=height, showlegend=bool(rules), margin={"l": 10, "r": 10, "t": 28, "b": 10}, hovermode="closest",
        legend={"orientation": "h", "y": 1.12, "x": 0},
        uirevision=sensor_key,  # keep the user's zoom across the once-a-second refresh
        xaxis={"title": None}, yaxis={"title": None})
    return fig


def band_chart(t: pd.Series, values: pd.Series, band: tuple[float, float] | None, height: int = 300) -> go.Figure:
    """A shipment's temperature against the product's band, out-of-band readings in red."""
    v = values.astype(float)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=v, mode="lines", name="temperature", line={"color": VALUE_COLOUR, "width": 1.5},
                             hovertemplate="%{x|%Y-%m-%d %H:%M:%S}<br>%{y:.2f} °C<extra></extra>"))
    lines: list[float] = []
    if band is not None:
        out = (v < band[0]) | (v > band[1])
        fig.add_trace(go.Scatter(x=t[out], y=v[out], mode="markers", name="out of band",
                                 marker={"color": RULE_COLOURS["BAND_HIGH"], "size": 6},
                                 hovertemplate="%{x|%H:%M:%S}<br>%{y:.2f} °C out of band<extra></extra>"))
        fig.add_hrect(y0=band[0], y1=band[1], fillcolor="rgba(44, 160, 44, 0.12)", line_width=0,
                      annotation_text=f"band {band[0]:g}–{band[1]:g} °C", annotation_position="top left")
        lines += list(band)
    _include_in_range(fig, v[np.isfinite(v)], lines)
    fig.update_layout(height=height, showlegend=False, margin={"l": 10, "r": 10, "t": 28, "b": 10},
                      xaxis={"title": None}, yaxis={"title": "°C"})
    return fig


def _include_in_range(fig: go.Figure, finite: pd.Series, lines: list[float]) -> None:
    """Plotly's autorange ignores hlines; widen the y range so the limits stay visible."""
    points = [float(v) for v in (finite.min() if len(finite) else None, finite.max() if len(finite) else None,
                                 *lines) if v is not None and math.isfinite(v)]
    if not points:
        return
    lo, hi = min(points), max(points)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.01, 1e-6)
    fig.update_yaxes(range=[lo - pad, hi + pad])
