"""Where each key of a TOML document is, by line, so a configuration error can point at it.

``tomllib`` returns plain dicts without positions and pydantic reports an error's location as a
key path (``("detect", "sensors", 2, "lsl")``); a user with a 200-line file needs the line. This
scanner walks the text once, following ``[table]`` and ``[[array.of.tables]]`` headers (counting
array entries, nested ones per parent entry) and ``key = value`` lines (dotted and quoted keys too),
and records the first line of every key path. It is only used to *locate* errors in text that
``tomllib`` already accepted, so it need not reject anything; values spanning several lines (arrays,
multi-line strings) are skipped over, and a path it cannot place falls back to its nearest parent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PART = r'(?:"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)'
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_ARRAY = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_KEY = re.compile(rf"^\s*({_DOTTED})\s*=")
_SPLIT = re.compile(_PART)

Path_ = tuple[str | int, ...]


def _parts(dotted: str) -> list[str]:
    out = []
    for m in _SPLIT.finditer(dotted):
        p = m.group(0)
        out.append(p[1:-1] if p[:1] in "\"'" else p)
    return out


def key_lines(text: str) -> dict[Path_, int]:
    """Every key path (array-of-tables entries as ints) mapped to the 1-based line that defines it."""
    lines: dict[Path_, int] = {}
    counts: dict[Path_, int] = {}  # indexed path of an array of tables -> entries so far
    table: Path_ = ()
    in_multiline: str | None = None
    depth = 0  # open brackets/braces of a value that spans lines

    def indexed(parts: list[str]) -> Path_:
        path: list[str | int] = []
        for p in parts:
            path.append(p)
            n = counts.get(tuple(path))
            if n:
                path.append(n - 1)
        return tuple(path)

    for no, line in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        if depth > 0:
            depth = max(0, depth + _balance(line))
            continue
        if m := _ARRAY.match(line):
            parts = _parts(m.group(1))
            parent = indexed(parts[:-1])
            key = (*parent, parts[-1])
            counts[key] = counts.get(key, 0) + 1
            table = (*key, counts[key] - 1)
            lines.setdefault(key, no)
            lines.setdefault(table, no)
            continue
        if m := _TABLE.match(line):
            table = indexed(_parts(m.group(1)))
            for k in range(1, len(table) + 1):
                lines.setdefault(table[:k], no)
            continue
        if m := _KEY.match(line):
            full = (*table, *_parts(m.group(1)))
            for k in range(len(table) + 1, len(full) + 1):
                lines.setdefault(full[:k], no)
            rest = line[m.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
            if in_multiline is None:
                depth = max(0, _balance(rest))
    return lines


def _balance(s: str) -> int:
    """Brackets and braces opened minus closed, outside strings and comments (roughly: enough to
    know whether an inline array or table continues on the next line)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', "", s).split("#", 1)[0]
    return s.count("[") + s.count("{") - s.count("]") - s.count("}")


def line_of(lines: dict[Path_, int], loc: Sequence[str | int]) -> int | None:
    """The line of ``loc`` or of its nearest parent that the text defines; None if none is."""
    path = tuple(loc)
    for k in range(len(path), 0, -1):
        if path[:k] in lines:
            return lines[path[:k]]
    return None
