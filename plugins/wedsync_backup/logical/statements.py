"""Split a client query into its statements and say which of them the DDL capture fires for.

A simple query may hold several statements (``INSERT ...; ALTER TABLE ...; CREATE INDEX ...``), and the event
trigger only sees the whole text. Its messages carry the command's ordinal among the query's top-level DDL, so
the capture maps message k to the k-th DDL statement here, and checks that the statement is the command the
trigger reported (its tag). Anything that does not line up exactly is not replayed: the chain ends there.

The lexer knows what PostgreSQL's does about where a statement ends: quotes, E'' strings, quoted identifiers,
dollar quotes, nested block comments and line comments. SQL-standard function bodies (``BEGIN ATOMIC ... END``)
hold semicolons of their own: such a query is reported as not splittable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DDL_VERBS = {"CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "SECURITY", "REFRESH", "IMPORT"}
# Event triggers do not fire for cluster-wide objects, event triggers themselves or ALTER SYSTEM.
NOT_FIRING = {"DATABASE", "ROLE", "USER", "GROUP", "TABLESPACE", "SYSTEM", "EVENT"}
MODIFIERS = {"OR", "REPLACE", "UNIQUE", "TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL", "RECURSIVE", "TRUSTED"}
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_DOLLAR = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$")
_CONCURRENTLY = re.compile(r"^(\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX|REINDEX\s+\w+))\s+CONCURRENTLY\b", re.I)


class Unsplittable(ValueError):
    """The query's statement boundaries cannot be found exactly."""


@dataclass(frozen=True)
class Statement:
    text: str  # exactly as the client sent it (without the separating semicolon)
    words: tuple[str, ...]  # leading keywords, upper case, comments and literals left out
    code: str  # the text outside literals and comments (to look for keywords)

    @property
    def fires(self) -> bool:
        """Whether a ``ddl_command_end`` event trigger fires for this statement."""
        if not self.words or self.words[0] not in DDL_VERBS:
            return False
        rest = [w for w in self.words[1:] if w not in MODIFIERS]
        if rest and rest[0] in NOT_FIRING:
            return False
        # GRANT role TO role: role membership is cluster-wide
        return not (self.words[0] in ("GRANT", "REVOKE") and not re.search(r"\bON\b", self.code, re.I))

    def matches(self, tag: str) -> bool:
        """Is this the statement behind a command the trigger reported with ``tag``?"""
        head = [self.words[0], *(w for w in self.words[1:] if w not in MODIFIERS)] if self.words else []
        if head[:2] == ["CREATE", "CONSTRAINT"]:
            head = ["CREATE", *head[2:]]
        want = tag.upper().split()
        return head[: len(want)] == want


def split_statements(query: str) -> list[Statement]:
    """The query's statements in order (empty ones dropped)."""
    out: list[Statement] = []
    i, start, n = 0, 0, len(query)
    code: list[str] = []
    while i < n:
        ch = query[i]
        if ch == "'":
            escaped = i > 0 and query[i - 1] in "eE" and (i < 2 or not (query[i - 2].isalnum() or query[i - 2] == "_"))
            i = _skip_string(query, i, escaped)
            code.append(" ")
            continue
        if ch == '"':
            j = i + 1
            while True:
                j = query.find('"', j)
                if j < 0:
                    raise Unsplittable("unterminated quoted identifier")
                if j + 1 < n and query[j + 1] == '"':
                    j += 2
                    continue
                break
            code.append(query[i : j + 1])
            i = j + 1
            continue
        if ch == "$" and not (i > 0 and (query[i - 1].isalnum() or query[i - 1] == "_")):
            m = _DOLLAR.match(query, i)
            if m:
                end = query.find(m.group(0), m.end())
                if end < 0:
                    raise Unsplittable("unterminated dollar quote")
                i = end + len(m.group(0))
                code.append(" ")
                continue
        if query.startswith("--", i):
            j = query.find("\n", i)
            i = n if j < 0 else j
            code.append(" ")
            continue
        if query.startswith("/*", i):
            i = _skip_block_comment(query, i)
            code.append(" ")
            continue
        if ch == ";":
            _add(out, query[start:i], "".join(code))
            code, start = [], i + 1
            i += 1
            continue
        code.append(ch)
        i += 1
    _add(out, query[start:], "".join(code))
    return out


def _add(out: list[Statement], text: str, code: str) -> None:
    if not code.strip():
        return
    if re.search(r"\bBEGIN\s+ATOMIC\b", code, re.I):
        raise Unsplittable("a SQL-standard function body (BEGIN ATOMIC) holds semicolons of its own")
    words = tuple(w.upper() for w in _WORD.findall(code)[:8])
    out.append(Statement(text.strip(), words, code))


def _skip_string(s: str, i: int, escaped: bool) -> int:
    j = i + 1
    while j < len(s):
        c = s[j]
        if escaped and c == "\\":
            j += 2
            continue
        if c == "'":
            if j + 1 < len(s) and s[j + 1] == "'":
                j += 2
                continue
            return j + 1
        j += 1
    raise Unsplittable("unterminated string literal")


def _skip_block_comment(s: str, i: int) -> int:
    depth, j = 0, i
    while j < len(s):
        if s.startswith("/*", j):
            depth += 1
            j += 2
        elif s.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    raise Unsplittable("unterminated block comment")


def ddl_statements(query: str) -> list[Statement]:
    """The statements of ``query`` that fire the DDL capture, in order."""
    return [s for s in split_statements(query) if s.fires]


def replayable(statement: str) -> str:
    """The statement as it can run inside the replay's transaction (CONCURRENTLY cannot, and changes nothing)."""
    return _CONCURRENTLY.sub(r"\1", statement)
