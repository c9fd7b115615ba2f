"""Cold chain page: every shipment's status, then one shipment's temperature against its product's band,
the excursion budget it has used, its mean kinetic temperature and who held it when.

Shipments and custody come from the ledger; temperatures from the shipment logger's readings
(a shipment is a "line" of the cold-chain site in the Parquet layout). Band and budget are the
configuration's, resolved for each logger channel exactly as ingest resolves them.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import catalog, charts, data, session, status, ui

TEMPERATURE = "temperature"


def _channel(ship: data.Shipment) -> tuple[str, str, str] | None:
    """(site, line, device/sensor) of the shipment's temperature channel in the Parquet data."""
    for f in catalog.files(data.readings_root()):
        if f.line == ship.name:
            for s in f.sensors:
                if s.rsplit("/", 1)[-1] == TEMPERATURE:
                    return f.site, f.line, s
    return None


def _summary(ship: data.Shipment) -> tuple[dict, data.Excursion | None, pd.DataFrame]:
    cfg = data.settings(data.config_path())
    ch = _channel(ship)
    row = {"shipment": ship.name, "status": ship.stage or "—", "at": ship.location or "—",
           "lots": ", ".join(ship.lots), "customer": ship.customer or "—"}
    if ch is None:
        return {**row, "readings": 0, "out of band (min)": None, "budget used": None, "MKT (°C)": None}, None, \
            pd.DataFrame()
    site, line, name = ch
    hist = data.sensor_history(str(data.readings_root()), site, line, name)
    rules = cfg.detect.resolve(f"{site}/{line}/{name}")
    band = tuple(rules["band"]) if rules.get("band") else None
    exc = data.excursion(hist["t"].to_numpy() if not hist.empty else [], hist["value"].to_numpy()
                         if not hist.empty else [], band, rules.get("budget_min"), cfg.detect.delta_h)
    row.update({"readings": exc.readings, "out of band (min)": round(exc.out_of_band_min, 1),
                "budget used": None if exc.budget_used is None else exc.budget_used,
                "MKT (°C)": None if exc.mkt_c is None else round(exc.mkt_c, 2)})
    return row, exc, hist.assign(band_lo=band[0], band_hi=band[1]) if band else hist


def render() -> None:
    session.require_page("cold_chain")
    st.title("Cold chain")
    ui.staleness_banner()
    ships = data.shipments(str(data.ledger_path()))
    if not ships:
        st.info("The ledger records no shipment yet.", icon=":material/local_shipping:")
        return
    summaries = [_summary(s) for s in ships]
    table = pd.DataFrame([r for r, _, _ in summaries])
    st.subheader("Shipments")
    st.dataframe(table, hide_index=True, key="shipments", column_config={
        "budget used": st.column_config.ProgressColumn("budget used", format="percent", min_value=0, max_value=1),
    })
    names = [s.name for s in ships]
    name = st.selectbox("Shipment", names, key="cc_shipment")
    i = names.index(name)
    ship, (_, exc, hist) = ships[i], summaries[i]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Status", ship.stage or "—")
    c2.metric("Out of band", f"{exc.out_of_band_min:.1f} min" if exc else "—")
    c3.metric("Excursion budget used", f"{exc.budget_used:.0%}" if exc and exc.budget_used is not None else "—",
              help=f"of {exc.budget_min:g} min" if exc and exc.budget_min else "no budget configured")
    c4.metric("Mean kinetic temperature", f"{exc.mkt_c:.2f} °C" if exc and exc.mkt_c is not None else "—")
    if exc and exc.budget_used is not None and exc.budget_used > 1:
        st.error(f"Excursion budget exceeded: {exc.out_of_band_min:.1f} min out of band, allowed"
                 f" {exc.budget_min:g} min.", icon=":material/thermostat:")
    st.subheader("Temperature")
    if hist.empty:
        st.caption("No temperature readings stored for this shipment.")
    else:
        band = (float(hist["band_lo"].iloc[0]), float(hist["band_hi"].iloc[0])) if "band_lo" in hist else None
        st.plotly_chart(charts.band_chart(hist["ts"], hist["value"], band), key=f"band:{ship.name}",
                        config={"displaylogo": False})
        st.caption(f"{len(hist)} readings, {status.format_ts(hist['ts'].iloc[0])} to"
                   f" {status.format_ts(hist['ts'].iloc[-1])}")
    st.subheader("Custody")
    st.dataframe(pd.DataFrame(ship.custody, columns=["time", "step", "where"]), hide_index=True, key="custody")


render()
