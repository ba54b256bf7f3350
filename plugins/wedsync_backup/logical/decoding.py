"""Parse the output of PostgreSQL's stock ``test_decoding`` plugin into changes.

test_decoding needs no publication, so it never makes UPDATE or DELETE fail on a source table that lacks a
replica identity (a FOR ALL TABLES publication would), and it ships with every PostgreSQL. Its lines are:

    BEGIN 1289
    table public."Z z": INSERT: id[integer]:1 v[text]:'a''b' n[numeric]:null
    table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:3 v[text]:unchanged-toast-datum
    table public.t: DELETE: id[integer]:2
    table public.a, public.b: TRUNCATE: restart_seqs cascade
    COMMIT 1289 (at 2026-11-21 01:04:53.798646+00)

Values are the types' text output (the capture session pins TimeZone/DateStyle so they are stable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from wedsync_backup.errors import IntegrityError

UNCHANGED_TOAST = object()  # an UPDATE left this toasted value as it was


@dataclass
class Change:
    op: str  # INSERT | UPDATE | DELETE | TRUNCATE
    tables: list[tuple[str, str]]  # (schema, table); several only for TRUNCATE
    new: dict[str, object] = field(default_factory=dict)  # column -> text value | None | UNCHANGED_TOAST
    old: dict[str, object] = field(default_factory=dict)  # key (or full old row) when the plugin sent it
    flags: list[str] = field(default_factory=list)  # TRUNCATE: restart_seqs, cascade

    @property
    def table(self) -> tuple[str, str]:
        return self.tables[0]


@dataclass
class Begin:
    xid: str


@dataclass
class Message:
    """A logical message (pg_logical_emit_message): not table data, nothing to restore."""

    text: str


@dataclass
class Commit:
    xid: str
    at: datetime


def _fail(line: str, why: str) -> IntegrityError:
    return IntegrityError(
        "A captured change could not be read", f"{why}: {line[:200]!r}", "report this as a bug with the line"
    )


def _quoted(s: str, i: int, q: str) -> tuple[str, int]:
    """A ``q``-quoted token starting at s[i] (a doubled quote stands for one); returns (text, end)."""
    out, i = [], i + 1
    while True:
        j = s.index(q, i)
        out.append(s[i:j])
        if j + 1 < len(s) and s[j + 1] == q:
            out.append(q)
            i = j + 2
            continue
        return "".join(out), j + 1


_BARE_IDENT = re.compile(r"[^.\[,: ]*")


def _ident(s: str, i: int) -> tuple[str, int]:
    """An identifier as quote_identifier prints it, starting at s[i]; returns (name, index after it)."""
    if s[i] == '"':
        return _quoted(s, i, '"')
    j = _BARE_IDENT.match(s, i).end()  # type: ignore[union-attr]  # always matches (possibly empty)
    return s[i:j], j


def _qualified(s: str, i: int) -> tuple[tuple[str, str], int]:
    schema, i = _ident(s, i)
    if s[i] != ".":
        raise ValueError("expected schema.table")
    table, i = _ident(s, i + 1)
    return (schema, table), i


def _value(s: str, i: int) -> tuple[object, int]:
    if s.startswith("null", i) and (i + 4 == len(s) or s[i + 4] == " "):
        return None, i + 4
    if s.startswith("unchanged-toast-datum", i):
        return UNCHANGED_TOAST, i + len("unchanged-toast-datum")
    if s[i] == "B" and i + 1 < len(s) and s[i + 1] == "'":  # bit strings: B'0101'
        i += 1
    if s[i] == "'":
        return _quoted(s, i, "'")
    j = s.find(" ", i)
    j = len(s) if j < 0 else j
    return s[i:j], j


def _columns(
    s: str, i: int, stop: str | None = None, shape: list[str] | None = None, printed: list[str] | None = None
) -> tuple[dict[str, object], int]:
    """Columns and values from s[i] (to ``stop``); ``shape`` collects each column as ``name[type]``,
    ``printed`` each column's ``name[type]:`` as printed."""
    cols: dict[str, object] = {}
    while i < len(s):
        if stop and s.startswith(stop, i):
            return cols, i + len(stop)
        start = i
        name, i = _ident(s, i)
        if s[i] != "[":
            raise ValueError(f"expected [type] after column {name}")
        j = s.index("]:", i)
        if shape is not None:
            shape.append(f"{name}{s[i : j + 1]}")
        if printed is not None:
            printed.append(s[start : j + 2])
        cols[name], i = _value(s, j + 2)
        if i < len(s) and s[i] == " ":
            i += 1
    return cols, i


def change_head(line: str) -> tuple[list[tuple[str, str]], str]:
    """The tables and the operation of a change line, without parsing its values (cheap, for counting)."""
    tables, op, _ = _head(line)
    return tables, op


def _head(line: str) -> tuple[list[tuple[str, str]], str, int]:
    """(tables, operation, index after the operation's colon) of a change line."""
    try:
        i, tables = 6, []
        while True:
            t, i = _qualified(line, i)
            tables.append(t)
            if line.startswith(", ", i):
                i += 2
                continue
            break
        end = line.index(":", i + 2)
        return tables, line[i + 2 : end].lower(), end + 1
    except (ValueError, IndexError) as e:
        raise _fail(line, str(e)) from e


def change_shape(line: str) -> tuple[list[tuple[str, str]], str, list[str]]:
    """(tables, operation, columns as ``name[type]``) of a change line, as the decoder saw the table then.

    INSERT and UPDATE: every column (the new tuple); DELETE: the key (or the full old row) only; TRUNCATE: none.
    """
    tables, op, end = _head(line)
    shape: list[str] = []
    if op != "truncate":
        rest = line[end + 1 :]
        try:
            if rest.startswith("old-key: "):
                _, j = _columns(rest, len("old-key: "), stop="new-tuple: ")
                _columns(rest, j, shape=shape)
            elif not rest.startswith("(no-tuple-data)"):
                _columns(rest[len("new-tuple: ") :] if rest.startswith("new-tuple: ") else rest, 0, shape=shape)
        except (ValueError, IndexError) as e:
            raise _fail(line, str(e)) from e
    return tables, op, shape


# One value as test_decoding prints it (atomic: a line that does not match fails fast).
_VALUE = r"(?>null|unchanged-toast-datum|B'[01]*+'|'(?:[^']++|'')*+'|[^ ']++)"


def same_shape_pattern(line: str) -> re.Pattern[str] | None:
    """A pattern that matches any line of the same table, operation and printed columns as this INSERT (or
    UPDATE without an old key), whatever the values: knowing a row has a known shape without parsing it."""
    _, op, end = _head(line)
    rest = line[end + 1 :]
    if op not in ("insert", "update") or rest.startswith(("old-key: ", "new-tuple: ", "(no-tuple-data)")):
        return None
    printed: list[str] = []
    try:
        _columns(rest, 0, printed=printed)
    except (ValueError, IndexError) as e:
        raise _fail(line, str(e)) from e
    if not printed:
        return None
    return re.compile(re.escape(line[: end + 1]) + " ".join(re.escape(t) + _VALUE for t in printed))


def parse_line(line: str) -> Change | Begin | Commit | Message:
    try:
        if line.startswith("message: "):
            return Message(line)
        if line.startswith("BEGIN "):
            return Begin(line[6:].strip())
        if line.startswith("COMMIT "):
            xid, _, rest = line[7:].partition(" (at ")
            return Commit(xid.strip(), datetime.fromisoformat(rest.rstrip(")").strip()))
        if not line.startswith("table "):
            raise ValueError("unknown line")
        i, tables = 6, []
        while True:
            t, i = _qualified(line, i)
            tables.append(t)
            if line.startswith(", ", i):
                i += 2
                continue
            break
        if not line.startswith(": ", i):
            raise ValueError("expected ': '")
        op, _, rest = line[i + 2 :].partition(":")
        rest = rest[1:] if rest.startswith(" ") else rest
        if op == "TRUNCATE":
            flags = [] if rest.strip() == "(no-flags)" else rest.split()
            return Change("TRUNCATE", tables, flags=flags)
        if rest.startswith("(no-tuple-data)"):
            raise ValueError("no tuple data (the table lacks a replica identity)")
        if op == "INSERT":
            new, _ = _columns(rest, 0)
            return Change("INSERT", tables, new=new)
        if op == "UPDATE":
            old: dict[str, object] = {}
            j = 0
            if rest.startswith("old-key: "):
                old, j = _columns(rest, len("old-key: "), stop="new-tuple: ")
            elif rest.startswith("new-tuple: "):
                j = len("new-tuple: ")
            new, _ = _columns(rest, j)
            return Change("UPDATE", tables, new=new, old=old)
        if op == "DELETE":
            old, _ = _columns(rest, 0)
            return Change("DELETE", tables, old=old)
        raise ValueError(f"unknown operation {op}")
    except (ValueError, IndexError) as e:
        raise _fail(line, str(e)) from e
