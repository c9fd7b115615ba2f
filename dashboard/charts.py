"""The control chart of one sensor as a Plotly figure (pure: a frame in, a figure out).

Plotly renders a small HTML subset in titles and hover text, so the figure carries no text from
the data at all: the page writes the sensor's name above the chart, and hover text holds only
numbers and our own rule names.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from qctrace.schema import flag_names

VALUE_COLOUR = "#1f77b4"
FLAG_COLOUR = "#d62728"
MEAN_COLOUR = "#7f7f7f"
SPEC_COLOUR = "#ff7f0e"
LABEL_BACKGROUND = "rgba(255, 255, 255, 0.8)"  # keeps line labels readable over the data


def control_chart(readings: pd.DataFrame, sensor_key: str, lsl: float | None, usl: float | None,
                  height: int = 280) -> go.Figure:
    """Values over source time with the centre line, spec limits and flagged points.

    ``sensor_key`` only keys the figure's UI state (zoom survives refreshes); it is not drawn.
    ``readings`` has columns ``ts``, ``value`` and ``flags`` for one sensor, oldest first. The
    centre line is the mean of the finite values shown, so it moves with the window.
    """
    values = readings["value"].astype(float)
    finite = values[np.isfinite(values)]
    flagged = readings[readings["flags"].astype(int) != 0]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=readings["ts"], y=values, mode="lines", name="value", line={"color": VALUE_COLOUR, "width": 1.5},
        hovertemplate="%{x|%H:%M:%S.%L}<br>%{y:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=flagged["ts"], y=flagged["value"].astype(float), mode="markers", name="flagged",
        marker={"color": FLAG_COLOUR, "size": 9, "line": {"color": "white", "width": 1}},
        customdata=[flag_names(int(f)) for f in flagged["flags"]],
        hovertemplate="%{x|%H:%M:%S.%L}<br>value %{y:.4g}<br>%{customdata}<extra>flagged</extra>"))
    if len(finite):
        mean = float(finite.mean())
        fig.add_hline(y=mean, line={"color": MEAN_COLOUR, "dash": "dot", "width": 1},
                      annotation_text=f"mean {mean:.4g}", annotation_position="bottom left",
                      annotation_bgcolor=LABEL_BACKGROUND)
    for name, limit in (("LSL", lsl), ("USL", usl)):
        if limit is not None and math.isfinite(limit):
            fig.add_hline(y=limit, line={"color": SPEC_COLOUR, "dash": "dash", "width": 1.5},
                          annotation_text=f"{name} {limit:g}", annotation_position="top left",
                          annotation_bgcolor=LABEL_BACKGROUND)
    _include_limits_in_range(fig, finite, lsl, usl)
    fig.update_layout(
        height=height, showlegend=False, margin={"l": 10, "r": 10, "t": 28, "b": 10}, hovermode="closest",
        uirevision=sensor_key,  # keep the user's zoom across the once-a-second refresh
        xaxis={"title": None}, yaxis={"title": None})
    return fig


def _include_limits_in_range(fig: go.Figure, finite: pd.Series, lsl: float | None, usl: float | None) -> None:
    """Plotly's autorange ignores hlines; widen the y range so the spec limits stay visible."""
    points = [float(v) for v in (finite.min() if len(finite) else None, finite.max() if len(finite) else None,
                                 lsl, usl) if v is not None and math.isfinite(v)]
    if not points:
        return
    lo, hi = min(points), max(points)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.01, 1e-6)
    fig.update_yaxes(range=[lo - pad, hi + pad])
