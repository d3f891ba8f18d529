"""Errors a rule author reads: where (file:line:col), what rule was broken, and what to write instead."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Literal

_NEWLINE = re.compile(r"\r\n|\r|\n")


def source_lines(text: str) -> list[str]:
    """Lines as Python numbers them: str.splitlines also breaks at form feed, U+2028 and others."""
    return _NEWLINE.split(text)


def printable(text: str) -> str:
    """Text safe for one log line: control characters (a newline in a rule's error) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


#: Longest error message kept: a KeyError of a 64 KiB key must not become a 64 KiB log line.
MAX_MESSAGE = 500
#: Python's own messages show at most this many characters of a value's repr (int(): "%.200R").
_REPR_CUT = 200
REDACTED = "<redacted>"


def redact(message: str, secrets: tuple[str | bytes, ...]) -> str:
    """A run-time error message without the secrets it may quote, cut to MAX_MESSAGE.

    Python's messages quote values (`int(client.password)` says "invalid literal ...: 'hunter2'"),
    and these messages reach the server log and the decision log, which must not hold a password or
    a payload. Each secret is looked for as Python shows it: its repr, a repr cut at 200 characters,
    and, for secrets of four characters or more, its bare text.
    """
    for secret in secrets:
        if not isinstance(secret, (str, bytes)):  # a hand-written test event may say password: 1234
            secret = str(secret)
        if not secret:
            continue
        text = secret if isinstance(secret, str) else secret.decode("utf-8", "replace")
        forms = {repr(secret), repr(secret)[:_REPR_CUT], repr(text), repr(text)[:_REPR_CUT]}
        if len(secret) >= 4:
            forms.add(text)
        for form in sorted(forms, key=len, reverse=True):  # the whole quoted value before a cut of it
            if form in message:
                message = message.replace(form, REDACTED)
    message = _QUOTED.sub(lambda m: REDACTED if _part_of_a_secret(m.group(0), secrets) else m.group(0), message)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    # after the cut: only what is kept is looked at (a client's 256 KiB of quotes cost nothing), and a
    # piece of a secret this cut left open is caught with the others
    if _CUT_QUOTED.search(message):
        hays = _haystacks(secrets)
        message = _CUT_QUOTED.sub(lambda m: _redact_cut(m.group(0), hays), message)
    return message


#: a quoted literal in an error message, as Python's repr writes one: 'x', "x", b'x', b"x"
_QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'" + r'|b?"(?:[^"\\]|\\.)*"')


#: a quoted literal cut short: the repr of a value our messages shorten to 60 characters, ending in
#: "..." with no closing quote (`allow(superuser='eyJhbGciOi...): ...`); the pass above never sees it
_CUT_QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*\.\.\." + r'|b?"(?:[^"\\]|\\.)*\.\.\.')


def _haystacks(secrets: tuple[object, ...]) -> list[str]:
    """Each secret as text and as the inside of its repr, in one case: what a cut literal is compared to."""
    hays: list[str] = []
    for secret in secrets:
        text = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else str(secret)
        hays += [text.casefold(), repr(text)[1:-1].casefold()]
        if isinstance(secret, bytes):
            hays.append(repr(secret)[2:-1].casefold())
    return hays


def _redact_cut(cut: str, hays: list[str]) -> str:
    """REDACTED for a cut literal whose text up to the cut ends in a piece of a secret, any case (its
    last four characters are in one; three for a shorter literal), else the literal as it was. The
    end, not the whole: a cut value may be a secret behind a prefix ("devices/" + client.password).
    Compared as repr text too: a cut may end inside an escape."""
    body = cut[2:] if cut.startswith("b") else cut[1:]
    # the cut is at the last "...", or at an earlier one when the secret itself holds "..."
    end = len(body)
    while end >= 3:
        end = body.rfind("...", 0, end)
        if end < 0:
            break
        piece = body[:end].casefold()[-4:]
        if len(piece) >= 3 and any(piece in hay for hay in hays):
            return REDACTED
    return cut


def _part_of_a_secret(quoted: str, secrets: tuple[object, ...]) -> bool:
    """Whether a quoted value is a piece of a secret of three characters or more, whatever its case:
    int(client.password.split(":")[1]) quotes only the part after the colon."""
    try:
        value = ast.literal_eval(quoted)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or len(value) < 3:
        return False
    piece = value.casefold()
    for secret in secrets:
        text = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else str(secret)
        if piece in text.casefold():
            return True
    return False


def char_col(line: str, byte_offset: int) -> int:
    """1-based column in characters from ast's 0-based UTF-8 byte offset."""
    return len(line.encode("utf-8")[:byte_offset].decode("utf-8", errors="replace")) + 1

Code = Literal["parse_error", "check_error", "load_error", "runtime_error", "deadline_error"]


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int = 0  # 1-based; 0 when the whole file is meant
    col: int = 0  # 1-based, in characters

    def __str__(self) -> str:
        # always file:line:col, 1:1 for the whole file, so editors and CI annotators can parse every line
        return f"{self.file}:{self.line or 1}:{self.col or 1}"


@dataclass(frozen=True, slots=True)
class RuleError:
    code: Code
    location: Location
    message: str
    hint: str = ""
    source_line: str = ""

    def format(self) -> str:
        """The asteval-style report: header, the source line with a caret, then the hint."""
        out = [f"{printable(str(self.location))}: {self.code}: {printable(self.message)}"]
        if self.source_line:
            out.append("    " + printable(self.source_line.rstrip()))
            out.append("    " + " " * max(self.location.col - 1, 0) + "^")
        if self.hint:
            out.append(f"  hint: {printable(self.hint)}")
        return "\n".join(out)

    def one_line(self) -> str:
        text = f"{self.location}: {self.code}: {self.message}" + (f" (hint: {self.hint})" if self.hint else "")
        return printable(text)


class RuleLoadError(Exception):
    """A rule file that cannot be used; carries every problem found in it, sorted by position."""

    def __init__(self, errors: list[RuleError]):
        # grouped by file (a rule's errors can include those of a library it loads), then by position
        self.errors = sorted(errors, key=lambda e: (e.location.file, e.location.line, e.location.col))
        super().__init__(self.format())

    def format(self) -> str:
        head = f"{len(self.errors)} error{'s' if len(self.errors) != 1 else ''} in {self.errors[0].location.file}"
        return "\n".join([head] + [e.format() for e in self.errors])
