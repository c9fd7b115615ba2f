"""A lot's genealogy as a Graphviz DOT graph (pure: a ``data.Genealogy`` in, DOT text out).

Node names and labels come from the ledger, so every one is a quoted DOT string with backslashes
and quotes escaped; DOT's HTML-like labels (``<...>``) are never used, so no text from data can
become markup in the rendered SVG.
"""

from __future__ import annotations

from dashboard.data import Genealogy
from ledger.events import name_of

_STYLE = {  # URI prefix -> (group, shape, fill)
    "urn:epc:class:lgtin:": ("lot", "box", "#dbe9f6"),
    "urn:qctrace:shipment:": ("shipment", "cds", "#fde2c8"),
    "urn:qctrace:loc:": ("place", "house", "#e3f1de"),
    "urn:qctrace:party:": ("party", "ellipse", "#efe3f5"),
    "urn:qctrace:device:": ("equipment", "component", "#eeeeee"),
}


def quote(text: str) -> str:
    """A DOT quoted string that shows ``text`` literally."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ") + '"'


def _node(uri: str) -> tuple[str, str, str]:
    for prefix, (group, shape, fill) in _STYLE.items():
        if uri.startswith(prefix):
            label = uri[len(prefix):].rsplit(".", 1)[-1] if group == "lot" else name_of(uri)
            return f"{group}: {label}", shape, fill
    return uri, "ellipse", "#ffffff"


def to_dot(g: Genealogy) -> str:
    """Material and custody flow left to right; the traced lot is drawn bold."""
    nodes = {g.start} | {n for e in g.edges for n in e}
    out = ["digraph genealogy {", '  rankdir="LR";', '  node [style="filled", fontname="Helvetica", fontsize=11];']
    for uri in sorted(nodes):
        label, shape, fill = _node(uri)
        extra = ', penwidth=3, color="#d62728"' if uri == g.start else ""
        out.append(f"  {quote(uri)} [label={quote(label)}, shape={shape}, fillcolor={quote(fill)}{extra}];")
    for src, dst in g.edges:
        out.append(f"  {quote(src)} -> {quote(dst)};")
    out.append("}")
    return "\n".join(out)
