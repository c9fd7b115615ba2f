"""The FSMA 204 sortable spreadsheet: one row per critical tracking event, with its key data elements."""

from __future__ import annotations

import csv
import datetime as dt

import pytest
from openpyxl import load_workbook

from ledger import events
from ledger.epcis import epcis_document
from ledger.fsma import (
    COLUMNS,
    CTE,
    DATE,
    INPUT_TLCS,
    LOCATION,
    PREVIOUS_SOURCE,
    PRODUCT,
    QUANTITY,
    REFERENCE_NUMBER,
    REFERENCE_TYPE,
    SUBSEQUENT_RECIPIENT,
    TLC,
    TLC_SOURCE,
    TLC_SOURCE_REFERENCE,
    UNIT,
    fsma_rows,
    select,
    write_csv,
    write_xlsx,
)

pytestmark = pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")

DAY = 86_400 * 10**9
H = 3_600 * 10**9
T0 = 1_793_577_600 * 10**9  # 2026-11-02T00:00:00Z
GTIN = "0614141.107346"
FLOUR = "0614141.999990"


def genealogy() -> list[dict]:
    """Flour lot F1 received, baked into bread lot B1, shipped by truck, received at the customer's shop;
    plus an unrelated lot B2 made days later, and events that are no CTE (QC, packing, a hold)."""
    received = events.input_received("F1", FLOUR, "millco", "plant1", T0 + 6 * H, material="wheat flour")
    received["quantityList"][0].update(quantity=40, uom="KGM")
    return [
        events.lot_produced("B2", GTIN, "plant1", "line2", T0 + 5 * DAY, product="rye bread"),
        received,
        events.lot_produced("B1", GTIN, "plant1", "line1", T0 + 7 * H, inputs=[events.lot_class("F1", FLOUR)],
                            product="white bread"),
        events.qc_result("B1", GTIN, "plant1", "line1", T0 + 9 * H, readings=500, flagged=0),
        events.lot_packed("B1", GTIN, "SH-1", "plant1/dock", T0 + 10 * H),
        events.logger_attached("SH-1", "coldchain/SH-1/logger", "plant1/dock", T0 + 10 * H),
        events.shipment_moved("SH-1", "packing", "plant1/dock", T0 + 10 * H),
        events.shipment_moved("SH-1", "truck", "truck-7", T0 + DAY + 2 * H, previous="plant1/dock"),
        events.shipment_moved("SH-1", "store", "shop-3", T0 + 2 * DAY + 1 * H, previous="truck-7"),
        events.lot_delivered("B1", GTIN, "SH-1", "grocer", "shop-3", T0 + 2 * DAY + 1 * H),
        events.lot_held([events.lot_class("B1", GTIN)], "ann", "customer complaint", T0 + 3 * DAY),
    ]


def test_one_row_per_critical_tracking_event_sorted_by_date():
    rows = fsma_rows(genealogy())
    assert [(r[CTE], r[TLC], r[DATE]) for r in rows] == [
        ("Receiving", "F1", "2026-11-02"),
        ("Transformation", "B1", "2026-11-02"),
        ("Shipping", "B1", "2026-11-03"),
        ("Receiving", "B1", "2026-11-04"),
        ("Transformation", "B2", "2026-11-07"),
    ]
    assert all(tuple(r) == COLUMNS for r in rows)


def test_rows_carry_the_key_data_elements_of_their_cte():
    receiving, transformation, shipping, delivery, _ = fsma_rows(genealogy())
    assert (receiving[PRODUCT], receiving[QUANTITY], receiving[UNIT]) == ("wheat flour", 40, "KGM")
    assert (receiving[LOCATION], receiving[PREVIOUS_SOURCE]) == ("plant1", "millco")
    assert (receiving[TLC_SOURCE], receiving[TLC_SOURCE_REFERENCE]) == ("", "urn:qctrace:party:millco")

    assert (transformation[PRODUCT], transformation[INPUT_TLCS]) == ("white bread", "F1")
    assert transformation[LOCATION] == transformation[TLC_SOURCE] == "plant1"
    assert (transformation[QUANTITY], transformation[UNIT]) == (None, "")

    # Ship-from is where the shipment was held; ship-to the next receiver, never the truck.
    assert (shipping[LOCATION], shipping[SUBSEQUENT_RECIPIENT], shipping[TLC_SOURCE]) == ("plant1/dock", "shop-3",
                                                                                          "plant1")
    assert (delivery[LOCATION], delivery[PREVIOUS_SOURCE]) == ("grocer, shop-3", "plant1/dock")
    assert (delivery[REFERENCE_TYPE], delivery[REFERENCE_NUMBER]) == ("Advance Shipping Notice", "SH-1")


def test_rows_without_a_business_document_reference_their_epcis_event_by_its_hash():
    evs = genealogy()
    ids = {events.kind_of(e) + e["eventTime"]: e["eventID"] for e in epcis_document(evs)["epcisBody"]["eventList"]}
    receiving, transformation, shipping, *_ = fsma_rows(evs)
    assert receiving[REFERENCE_TYPE] == "EPCIS event (CBV event hash)"
    assert receiving[REFERENCE_NUMBER] == ids[events.INPUT_RECEIVED + evs[1]["eventTime"]]
    assert transformation[REFERENCE_NUMBER] == ids[events.LOT_PRODUCED + evs[2]["eventTime"]]
    assert shipping[REFERENCE_NUMBER] == ids[events.SHIPMENT_MOVED + evs[7]["eventTime"]]


def test_location_descriptions_come_from_the_callers_master_data():
    describe = {"urn:qctrace:loc:plant1": "Bakeco, +1 555 0100, 1 Mill Rd, Springfield, IL 62701, US",
                "urn:qctrace:party:millco": "Millco, +1 555 0199, 9 Grain St, Salina, KS 67401, US"}
    receiving = fsma_rows(genealogy(), describe=describe)[0]
    assert receiving[LOCATION].startswith("Bakeco") and receiving[PREVIOUS_SOURCE].startswith("Millco")


def test_filter_by_lot_and_its_genealogy():
    rows = fsma_rows(genealogy())
    assert [(r[CTE], r[TLC]) for r in select(rows, lots={"B1"})] == [
        ("Transformation", "B1"), ("Shipping", "B1"), ("Receiving", "B1")]
    # An input lot shows the transformation that consumed it.
    assert [(r[CTE], r[TLC]) for r in select(rows, lots={"F1"})] == [("Receiving", "F1"), ("Transformation", "B1")]
    assert {r[TLC] for r in select(rows, lots={"F1", "B1"})} == {"F1", "B1"}
    assert select(rows, lots=set()) == []


def test_filter_by_date_range_is_inclusive_and_open_ended():
    rows = fsma_rows(genealogy())
    assert [r[CTE] for r in select(rows, start=dt.date(2026, 11, 3), end="2026-11-04")] == ["Shipping", "Receiving"]
    assert [r[TLC] for r in select(rows, start="2026-11-05")] == ["B2"]
    assert len(select(rows, end=dt.date(2026, 11, 2))) == 2
    assert [r[TLC] for r in select(rows, lots={"B1"}, end="2026-11-03")] == ["B1", "B1"]


def test_csv_round_trips_with_fda_column_names(tmp_path):
    rows = fsma_rows(genealogy())
    write_csv(rows, tmp_path / "fsma.csv")
    with (tmp_path / "fsma.csv").open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        back = list(reader)
    assert back == [{c: "" if r[c] is None else str(r[c]) for c in COLUMNS} for r in rows]


def test_xlsx_is_sortable_with_frozen_header_filter_and_real_dates(tmp_path):
    rows = fsma_rows(genealogy())
    write_xlsx(rows, tmp_path / "fsma.xlsx")
    ws = load_workbook(tmp_path / "fsma.xlsx").active
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == f"A1:O{len(rows) + 1}"
    assert tuple(c.value for c in ws[1]) == COLUMNS
    date_col = COLUMNS.index(DATE)
    for row, cells in zip(rows, ws.iter_rows(min_row=2), strict=True):
        assert cells[date_col].value == dt.datetime.fromisoformat(row[DATE])
        assert cells[date_col].number_format == "yyyy-mm-dd"
        assert [c.value for i, c in enumerate(cells) if i != date_col] == [
            None if row[col] in ("", None) else row[col] for i, col in enumerate(COLUMNS) if i != date_col]
    widths = [ws.column_dimensions[chr(ord("A") + i)].width for i in range(len(COLUMNS))]
    assert all(len(col) + 2 <= w <= 62 for col, w in zip(COLUMNS, widths, strict=True))


def test_xlsx_keeps_text_that_looks_like_a_formula_as_text(tmp_path):
    rows = fsma_rows(genealogy())
    rows[0][PRODUCT] = "=HYPERLINK(\"http://x.test\")"
    write_xlsx(rows, tmp_path / "fsma.xlsx")
    cell = load_workbook(tmp_path / "fsma.xlsx").active.cell(row=2, column=COLUMNS.index(PRODUCT) + 1)
    assert (cell.value, cell.data_type) == (rows[0][PRODUCT], "s")


def test_events_that_are_no_critical_tracking_event_make_no_rows():
    evs = [e for e in genealogy() if events.kind_of(e) in (events.QC_RESULT, events.LOT_HELD, events.LOGGER_ATTACHED)]
    assert fsma_rows(evs) == []
    assert fsma_rows([]) == []
