"""``oliai-bridge import``: existing leads from a spreadsheet (CSV) or JSON Lines file.

Each row is read as if it were one webhook body whose fields are the columns: a JSON request
(with ``--id-column``, that column's value as its ``Idempotency-Key``) that goes through the
pure path every entry point shares (``bridge.pipeline.map_request``, with the generic source's
reading and the route's mapping) and is stored by ``Ingest.store_leads``, the webhook's own
storage path, in chunks of ``CHUNK_ROWS``: a few round trips per chunk, not per row. Its event id
is the row's body hash (or the id column), so a second run finds every row's dedup claim and
imports nothing twice. Deliveries are marked ``lane = "backfill"``.

A row that cannot become a contact is not stored: it is counted by reason (``invalid phone``,
``no phone number``...) and, with ``--rejects``, written back out with the reason beside it for
the person fixing the spreadsheet.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from redis import Redis

from bridge.admission import Claim, claimed
from bridge.event import InboundRequest, utcnow_iso
from bridge.exceptions import IngestError, Unmappable
from bridge.ingest import Ingest, Received, dedup_claim, delivery_for
from bridge.pipeline import map_request
from bridge.queue import make_queue
from bridge.rows import Row, RowFile
from bridge.settings import Route, Settings
from bridge.sources import get_source
from bridge.values import text

#: Rows mapped and stored per chunk: one admission script call for their dedup claims, records
#: and tickets (``bridge.admission``). Larger chunks gain little past a few hundred rows and
#: make each call (during which Redis serves nobody else) longer.
CHUNK_ROWS = 500
LANE = "backfill"
#: A row is read as a webhook body of the generic source: JSON whose fields are the columns.
SOURCE = get_source("generic")


@dataclass(frozen=True)
class Rejected:
    """A row that was not imported: ``label`` is what the summary counts, ``reason`` the whole
    message for the person fixing the row."""

    row: Row
    label: str
    reason: str


@dataclass
class Tally:
    """What became of the rows so far; ``rows`` counts every row done, blank ones too."""

    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    blank: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    #: Rows that could not be read at all (also counted in ``skipped``).
    unreadable: int = 0


class Backfill:
    """Imports rows into one route. ``dry_run``: map and count, store nothing (duplicates are
    told by dedup claims that already exist, and by repeats within the file)."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        route: Route,
        *,
        id_column: str | None = None,
        dry_run: bool = False,
    ):
        self.route = route
        self.id_column = id_column
        self.dry_run = dry_run
        self.redis = redis
        self.ingest = Ingest(settings, redis, make_queue(redis, settings.queue_name))
        self.tally = Tally()
        self._claims: set[Claim] = set()  # dry run: the dedup claims of this file so far

    def run(
        self,
        rows: Iterable[Row],
        *,
        on_chunk: Callable[[Tally], None] | None = None,
        on_reject: Callable[[Rejected], None] | None = None,
    ) -> Tally:
        for chunk in chunks(rows, CHUNK_ROWS):
            received = []
            for row in chunk:
                outcome = self.read(row)
                if isinstance(outcome, Received):
                    received.append(outcome)
                elif outcome is None:
                    self.tally.blank += 1
                else:
                    self.tally.skipped[outcome.label] += 1
                    self.tally.unreadable += row.fields is None
                    if on_reject:
                        on_reject(outcome)
            if received and self.dry_run:
                self._seen(received)
            elif received:
                self._store(received)
            self.tally.rows += len(chunk)
            if on_chunk:
                on_chunk(self.tally)
        return self.tally

    def read(self, row: Row) -> Received | Rejected | None:
        """The row as a delivery ready to store, or why it is not one (None: a blank row)."""
        if row.blank:
            return None
        if row.fields is None:
            return Rejected(row, "unreadable row", row.problem or "unreadable")
        req = row_request(self.route.name, row.fields, self._row_id(row.fields))
        try:
            [result] = map_request(req, self.route, SOURCE, utcnow_iso())
            result.contact_or_raise()
        except IngestError as exc:
            return Rejected(row, reason_label(exc), exc.message)
        delivery = delivery_for(result, 0, 1, self.route, SOURCE, lane=LANE)
        return Received(req, SOURCE.kept_headers, [delivery])

    def _row_id(self, fields: dict[str, Any]) -> str | None:
        if not self.id_column:
            return None
        return text(fields.get(self.id_column)) or None  # an empty cell: the content decides

    def _store(self, received: list[Received]) -> None:
        for accepted in self.ingest.store_leads(received):
            if accepted.status == "duplicate":
                self.tally.duplicates += 1
            else:
                self.tally.accepted += 1

    def _seen(self, received: list[Received]) -> None:
        claims = [dedup_claim(r.deliveries[0]) for r in received]
        ttl = self.ingest.settings.dedup_ttl_seconds
        for claim, first in zip(claims, claimed(self.redis, claims, ttl), strict=True):
            if first or claim in self._claims:
                self.tally.duplicates += 1
            else:
                self.tally.accepted += 1
            self._claims.add(claim)


def chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def row_request(route: str, fields: dict[str, Any], row_id: str | None) -> InboundRequest:
    """The webhook request a row stands for: its fields as a JSON object, in column order."""
    body = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    headers = {"content-type": "application/json"}
    if row_id:
        headers["idempotency-key"] = row_id
    return InboundRequest(method="POST", route=route, body=body, headers=headers)


def reason_label(error: IngestError) -> str:
    """The few words the summary counts a rejected row under."""
    if isinstance(error, Unmappable):
        if error.message.startswith("no phone number"):
            return "no phone number"
        if error.field == "phoneNumber":
            return "invalid phone"
        return f"mapping failed ({error.field})" if error.field else "mapping failed"
    return "unreadable row"


class RejectsFile:
    """The rows not imported, as CSV a spreadsheet opens: UTF-8 with a byte-order mark (without
    one Excel reads UTF-8 as its legacy code page), the input's delimiter, a ``reason`` and the
    row's number first, then the row as it was (a JSON Lines record as one ``record`` cell)."""

    def __init__(self, path: str | Path, rows: RowFile):
        self.file = Path(path).open("w", encoding="utf-8-sig", newline="")
        self.writer = csv.writer(self.file, delimiter=rows.delimiter)
        if rows.kind == "jsonl":
            self.writer.writerow(["reason", "line", "record"])
        else:
            self.writer.writerow(["reason", "row", *rows.columns])
        self.count = 0

    def write(self, rejected: Rejected) -> None:
        self.writer.writerow([rejected.reason, rejected.row.number, *rejected.row.cells])
        self.count += 1

    def close(self) -> None:
        self.file.close()
