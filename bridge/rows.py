"""Reading a backfill file row by row: CSV as spreadsheets export it, or JSON Lines.

CSV: a header row; comma, semicolon or tab (told by the header row, or given); quoted fields
holding delimiters, quotes and line breaks; CRLF or LF. Text is UTF-8, with or without the
byte-order mark Excel writes, or UTF-16 with its mark (Excel's "Unicode Text"). Anything else is
refused with the line and byte that are not UTF-8, unless the caller names the encoding
(``cp1252`` for Excel's legacy "CSV (Comma delimited)" on Windows): any byte reads as
*something* in a legacy code page, so guessing one would import garbled names without a word.
JSON Lines (``.jsonl`` / ``.ndjson``): one object per line.

A problem with one row (a bad JSON line, more cells than the header has columns) is that row's
``problem``; a problem with the file as a whole (not UTF-8, no header, a quote never closed) is
``UnreadableFile``, raised by ``RowFile.open`` / ``count`` before anything is imported.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bridge.exceptions import BridgeError, MalformedBody
from bridge.parsing import parse_json

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
DELIMITERS = ",;\t"
#: The delimiter is sniffed from this much text at the start of the file.
SNIFF_CHARS = 64 * 1024
#: One cell may hold this many characters (the csv module's default is 128 KB; a note pasted
#: into a CRM field can be long, a runaway quote swallowing the file is caught by the quote
#: check first).
MAX_CELL_CHARS = 1024 * 1024
#: What to tell someone whose file is not UTF-8.
RESAVE_HINT = (
    'save it as UTF-8 (Excel: "CSV UTF-8 (Comma delimited)"; Google Sheets downloads are '
    "UTF-8 already) or name its encoding, e.g. --encoding cp1252 for Excel's legacy "
    '"CSV (Comma delimited)" on Windows'
)


class UnreadableFile(BridgeError):
    """The file cannot be read as rows at all; the message names where and why."""


@dataclass(frozen=True)
class Row:
    """One record of the file.

    ``number``: where a person finds it: the spreadsheet row (the header is row 1) or the line of
    a JSON Lines file. ``fields``: column → value (None when the row could not be read;
    ``problem`` says why). ``cells``: the row as it was, for a rejects file.
    """

    number: int
    fields: dict[str, Any] | None
    problem: str | None = None
    cells: list[str] = field(default_factory=list)

    @property
    def blank(self) -> bool:
        """A row with no value at all (Excel ends many exports with a few ``,,,`` rows)."""
        return self.problem is None and not any(
            str(v).strip() for v in (self.fields or {}).values() if v is not None
        )


@dataclass
class RowFile:
    """A CSV or JSON Lines file, opened (its kind, encoding and header known) but not read."""

    path: Path
    kind: str  # csv | jsonl
    encoding: str
    delimiter: str = ","
    columns: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls, path: str | Path, *, encoding: str | None = None, delimiter: str | None = None
    ) -> RowFile:
        path = Path(path)
        try:
            with path.open("rb") as f:
                head = f.read(SNIFF_CHARS)
        except OSError as exc:
            raise UnreadableFile(f"{path}: {exc.strerror or exc}") from None
        encoding = _encoding(head, encoding)
        text = head.decode(encoding, errors="ignore")  # the cut may split a character
        kind = "jsonl" if _is_json_lines(path, text) else "csv"
        rows = cls(path=path, kind=kind, encoding=encoding)
        if kind == "csv":
            rows.delimiter = delimiter or sniff_delimiter(text)
            rows.columns = rows._header()
        return rows

    def count(self) -> int:
        """How many rows the file holds; reads it all, so that a file which cannot be read is
        refused before any row of it is imported."""
        return sum(1 for _ in self)

    def __iter__(self) -> Iterator[Row]:
        with self._text() as f:
            try:
                yield from (self._json_lines(f) if self.kind == "jsonl" else self._csv_rows(f))
            except UnicodeDecodeError:
                raise UnreadableFile(self._where_undecodable()) from None

    # --- CSV -----------------------------------------------------------------------------

    def _reader(self, f: IO[str]):
        csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL_CHARS))
        return csv.reader(f, dialect="excel", delimiter=self.delimiter, strict=True)

    def _header(self) -> list[str]:
        with self._text() as f:
            try:
                header = next(self._reader(f), None)
            except UnicodeDecodeError:
                raise UnreadableFile(self._where_undecodable()) from None
            except csv.Error as exc:
                raise UnreadableFile(
                    f"{self.path} line 1: the header cannot be read: {exc}"
                ) from None
        if not header or not any(h.strip() for h in header):
            raise UnreadableFile(f"{self.path}: no header row (the first row names the columns)")
        return unique_columns(header)

    def _csv_rows(self, f: IO[str]) -> Iterator[Row]:
        reader = self._reader(f)
        width = len(self.columns)
        number = 0
        line = 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise UnreadableFile(
                    f"{self.path} line {line}: {exc} (a quote opened here is never closed?)"
                ) from None
            line = reader.line_num + 1
            number += 1
            if number == 1:
                continue  # the header
            if len(cells) > width and any(c.strip() for c in cells[width:]):
                problem = (
                    f"{len(cells)} cells but the header has {width} columns "
                    "(a value holding the delimiter must be in quotes)"
                )
                yield Row(number, None, problem, cells)
                continue
            values = cells + [""] * (width - len(cells))
            yield Row(number, dict(zip(self.columns, values, strict=False)), cells=cells)

    # --- JSON Lines ------------------------------------------------------------------------

    def _json_lines(self, f: IO[str]) -> Iterator[Row]:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                yield Row(number, {}, cells=[line])
                continue
            try:
                data = parse_json(text, what="this line")
            except MalformedBody as exc:
                problem = exc.message.replace(" at line 1 column ", " at column ")
                yield Row(number, None, problem, [text])
                continue
            if not isinstance(data, dict):
                problem = f"expected a JSON object with the lead's fields, got {_kind(data)}"
                yield Row(number, None, problem, [text])
                continue
            yield Row(number, data, cells=[text])

    # --- text --------------------------------------------------------------------------------

    def _text(self) -> IO[str]:
        try:
            # newline="": the csv module reads line breaks inside quoted cells itself.
            return self.path.open(encoding=self.encoding, newline="")
        except OSError as exc:
            raise UnreadableFile(f"{self.path}: {exc.strerror or exc}") from None

    def _where_undecodable(self) -> str:
        data = self.path.read_bytes()
        try:
            data.decode(self.encoding)
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            byte = data[exc.start : exc.start + 1].hex()
            name = "UTF-8" if self.encoding.startswith("utf-8") else self.encoding
            return f"{self.path} line {line}: byte 0x{byte} at column {column} is not {name}: " + (
                RESAVE_HINT if name == "UTF-8" else "is this the file's encoding?"
            )
        return f"{self.path}: the file changed while it was read"


def _encoding(head: bytes, given: str | None) -> str:
    if given:
        try:
            name = codecs.lookup(given).name
        except LookupError:
            raise UnreadableFile(f"unknown encoding {given!r}") from None
        return "utf-8-sig" if name == "utf-8" else name  # a BOM is never part of the data
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig"


def _is_json_lines(path: Path, text: str) -> bool:
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        return True
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return False
    return text.lstrip().startswith("{")


def sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV sample: whichever of comma, semicolon and tab splits its header
    row into the most columns (comma when none splits it: a file of one column).

    The header is the one row a spreadsheet always writes plainly. ``csv.Sniffer`` guesses from
    how consistently the candidates repeat across rows instead, which one row with an extra
    cell or a cell holding line breaks is enough to defeat (it then answers "one column").
    """

    def columns(delimiter: str) -> int:
        return len(next(csv.reader(io.StringIO(text), delimiter=delimiter), []))

    best = max(DELIMITERS, key=columns)  # ties go to the first: comma, then semicolon
    return best if columns(best) > 1 else ","


def unique_columns(header: list[str]) -> list[str]:
    """Column names as a mapping can use them: trimmed, a name for each blank one
    (``column 4``), repeats numbered (``Phone``, ``Phone (2)``) so no value hides another."""
    out: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(header, start=1):
        name = raw.strip() or f"column {index}"
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{name} ({n})"
        seen.add(candidate)
        out.append(candidate)
    return out


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
