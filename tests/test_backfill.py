"""``oliai-bridge import``: spreadsheets and JSON Lines backfilled through the route's mapping,
run as a user runs it (a subprocess) against a real Redis and the sandbox."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import keys
from bridge.deliveries import DeliveryStore
from tests.bridge_fixtures import REPO_ROOT, route_dict, write_config


@pytest.fixture
def bridge(cli):
    """``bridge(*args, route=...)`` runs ``oliai-bridge ARGS`` as a user would, with one route
    (``cli``; ``.out`` and ``.err`` are its output)."""

    def run(*args: str, route: dict | None = None):
        result = cli({"routes": [route or route_dict()]}, *args, timeout=120)
        result.out, result.err = result.stdout, result.stderr
        return result

    return run


@pytest.fixture
def run_import(bridge):
    """``run_import(path, *options, route=...)``: ``oliai-bridge import PATH --route leads``."""

    def run(path: Path, *options: str, route: dict | None = None):
        return bridge("import", str(path), "--route", "leads", *options, route=route)

    return run


def stored(redis) -> list:
    """Every delivery in Redis, oldest first."""
    store = DeliveryStore(redis)
    newest_first = [i for batch in store.received_newest_first() for i in batch]
    return [store.get(i) for i in reversed(newest_first)]


def summary(out: str) -> dict[str, int]:
    """The ``name: count`` lines of the summary."""
    counts = {}
    for line in out.splitlines():
        name, sep, value = line.strip().rpartition(": ")
        if sep and value.isdigit():
            counts[name] = int(value)
    return counts


def write_bytes(path: Path, text: str, *, bom: bool = False, crlf: bool = False) -> Path:
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    "delimiter, bom, crlf",
    [(",", True, True), (";", False, True), ("\t", True, False), (",", False, False)],
    ids=["comma-bom-crlf", "semicolon-crlf", "tab-bom", "comma"],
)
def test_a_spreadsheet_export_becomes_contacts(
    run_import, tmp_path, redis, run_jobs, make_settings, sandbox, delimiter, bom, crlf
):
    d = delimiter
    sheet = write_bytes(
        tmp_path / "leads.csv",
        f"Full Name{d}Mobile{d}City{d}Notes\n"
        f'"Kumar{d} Ravi"{d}98765 43210{d}Pune{d}"called twice{d} ""busy""\nasked for a demo"\n'
        f"Asha Verma{d}+91 98765 43211{d}Delhi{d}\n"
        f"Émile Zoë{d}9876543212{d}São Paulo{d}ok\n",
        bom=bom,
        crlf=crlf,
    )
    r = run_import(sheet)
    assert r.returncode == 0, r.err
    assert summary(r.out) == {"accepted": 3, "duplicates": 0, "skipped": 0}

    deliveries = stored(redis)
    assert [x.status for x in deliveries] == ["queued"] * 3
    assert {x.lane for x in deliveries} == {"backfill"}
    first = deliveries[0].contact
    assert first["name"] == " ".join(f"Kumar{d} Ravi".split())  # names are one line of text
    assert first["phoneNumber"] == "+919876543210"
    # the quoted cell kept its delimiter, its quotes and its line break (as CRLF or LF)
    notes = first["metadata"]["Notes"].replace("\r\n", "\n")
    assert notes == f'called twice{d} "busy"\nasked for a demo'
    assert first["metadata"]["City"] == "Pune"
    assert "Full Name" in deliveries[0].event.fields  # no BOM glued to the first column
    assert deliveries[2].contact["name"] == "Émile Zoë"

    run_jobs(make_settings())
    assert {x.status for x in stored(redis)} == {"delivered"}
    contacts = {c["phoneNumber"]: c for c in sandbox.org_state()["contacts"]}
    assert set(contacts) == {"+919876543210", "+919876543211", "+919876543212"}
    assert contacts["+919876543212"]["metadata"]["City"] == "São Paulo"


def test_json_lines_import_and_report_the_bad_line_by_number(run_import, tmp_path, redis):
    lines = [
        json.dumps({"name": "Ravi", "phone": "9876543210", "utm": {"source": "fb"}}),
        "",
        json.dumps({"name": "Asha", "phone": "9876543211"}),
        '{"name": "Broken", "phone": "9876543212"',
        '["not", "an", "object"]',
        json.dumps({"name": "Meera", "phone": "9876543213"}),
    ]
    path = tmp_path / "leads.jsonl"
    path.write_text("\n".join(lines) + "\n")
    r = run_import(path)
    assert r.returncode == 1, "a line that cannot be read makes the run fail"
    counts = summary(r.out)
    assert counts["accepted"] == 3 and counts["skipped"] == 2
    assert counts["unreadable row"] == 2
    assert "line 4: unreadable row: this line is not valid JSON" in r.out
    assert "line 5: unreadable row: expected a JSON object" in r.out
    assert sorted(x.contact["name"] for x in stored(redis)) == ["Asha", "Meera", "Ravi"]
    assert stored(redis)[0].contact["metadata"]["utm.source"] == "fb"


def test_a_second_run_imports_nothing_twice(run_import, tmp_path, redis):
    text = "name,phone\nRavi,9876543210\nAsha,9876543211\nRavi,9876543210\nBad,123\n"
    sheet = write_bytes(tmp_path / "leads.csv", text)
    first = run_import(sheet)
    assert summary(first.out) | {} == {
        "accepted": 2,
        "duplicates": 1,  # the repeated row within the file
        "skipped": 1,
        "invalid phone": 1,
    }
    ids = {x.id for x in stored(redis)}
    assert len(ids) == 2

    again = run_import(sheet)
    assert again.returncode == 0, again.err
    assert summary(again.out)["accepted"] == 0
    assert summary(again.out)["duplicates"] == 3
    assert {x.id for x in stored(redis)} == ids

    # the user fixes the bad row: only that row is new
    write_bytes(sheet, text.replace("Bad,123", "Bad,9876543219"))
    fixed = run_import(sheet)
    assert summary(fixed.out)["accepted"] == 1 and summary(fixed.out)["duplicates"] == 3
    assert len(stored(redis)) == 3


def test_an_id_column_decides_what_is_a_duplicate(run_import, tmp_path, redis):
    sheet = write_bytes(tmp_path / "crm.csv", "Lead ID,name,phone\nL-1,Ravi,9876543210\n")
    assert summary(run_import(sheet, "--id-column", "Lead ID").out)["accepted"] == 1
    # the same record exported again with an edited name is still the same lead
    write_bytes(sheet, "Lead ID,name,phone\nL-1,Ravi Kumar,9876543210\nL-2,Asha,9876543211\n")
    r = run_import(sheet, "--id-column", "Lead ID")
    assert summary(r.out) == {"accepted": 1, "duplicates": 1, "skipped": 0}
    assert [x.event.event_id for x in stored(redis)] == ["L-1", "L-2"]

    missing = run_import(sheet, "--id-column", "Record")
    assert missing.returncode == 1
    assert "no column 'Record'" in missing.err


def test_the_routes_expressions_read_columns_by_name(run_import, tmp_path, redis):
    route = route_dict(
        fields={"phoneNumber": 'fields."Mobile No."', "name": 'fields."Full Name"'},
        metadata={"source": "'spreadsheet'", "city": "fields.City"},
    )
    sheet = write_bytes(
        tmp_path / "leads.csv", "Full Name,Mobile No.,City,Other\nRavi K,9876543210,Pune,x\n"
    )
    assert summary(run_import(sheet, route=route).out)["accepted"] == 1
    [delivery] = stored(redis)
    assert delivery.contact == {
        "name": "Ravi K",
        "phoneNumber": "+919876543210",
        "metadata": {"source": "spreadsheet", "city": "Pune"},
    }


def test_skipped_rows_are_counted_by_reason_and_not_stored(run_import, tmp_path, redis):
    sheet = write_bytes(
        tmp_path / "leads.csv",
        "name,phone,city\n"
        "Ravi,9876543210,Pune\n"
        "Short,12345,Pune\n"
        "Letters,call me,Pune\n"
        "Nobody,,Delhi\n"
        ",,\n"
        "Asha,9876543211,Delhi\n",
    )
    r = run_import(sheet)
    assert r.returncode == 0, r.err  # every row accepted or skipped with a reason
    counts = summary(r.out)
    assert counts["accepted"] == 2
    assert counts["skipped"] == 3
    assert counts["invalid phone"] == 2
    assert counts["no phone number"] == 1
    assert counts["blank rows ignored"] == 1
    assert "row 3: invalid phone: phone number: '12345' is not a valid phone number" in r.out
    assert "row 5: no phone number" in r.out
    assert sorted(x.contact["name"] for x in stored(redis)) == ["Asha", "Ravi"]


def test_dry_run_maps_and_counts_but_stores_nothing(run_import, tmp_path, redis):
    sheet = write_bytes(tmp_path / "leads.csv", "name,phone\nRavi,9876543210\nBad,1\n")
    r = run_import(sheet, "--dry-run")
    assert r.returncode == 0, r.err
    assert summary(r.out) == {"would import": 1, "duplicates": 0, "skipped": 1, "invalid phone": 1}
    assert "nothing stored" in r.out
    assert redis.dbsize() == 0

    assert summary(run_import(sheet).out)["accepted"] == 1
    keys = redis.dbsize()
    again = run_import(sheet, "--dry-run")
    assert summary(again.out)["would import"] == 0 and summary(again.out)["duplicates"] == 1
    assert redis.dbsize() == keys


def test_rows_imported_by_the_previous_version_are_not_imported_again(run_import, tmp_path, redis):
    """A file imported before the upgrade, whose claims are string keys per row (``keys.dedup``,
    as the previous version wrote them): the dry run and the import both see them."""
    sheet = write_bytes(tmp_path / "leads.csv", "name,phone\nRavi,9876543210\n")
    assert summary(run_import(sheet).out)["accepted"] == 1
    [first] = stored(redis)
    for bucket in redis.scan_iter(keys.dedup_day("*")):
        redis.delete(bucket)
    redis.set(keys.dedup(first.route, first.event.event_id), first.id, ex=3600)

    dry = run_import(sheet, "--dry-run")
    assert summary(dry.out)["would import"] == 0 and summary(dry.out)["duplicates"] == 1
    again = run_import(sheet)
    assert summary(again.out)["accepted"] == 0 and summary(again.out)["duplicates"] == 1
    assert [x.id for x in stored(redis)] == [first.id]


def test_rejects_file_holds_each_row_as_it_was_with_its_reason(run_import, tmp_path):
    sheet = write_bytes(
        tmp_path / "leads.csv",
        "Name;Phone;Notes\n"
        "Ravi;9876543210;fine\n"
        'Short;12345;"two\nlines; and a semicolon"\n'
        "Nobody;;x\n"
        "Extra;9876543211;a;b\n",
        bom=True,
        crlf=True,
    )
    rejects = tmp_path / "rejects.csv"
    r = run_import(sheet, "--rejects", str(rejects))
    assert r.returncode == 1  # the row with an extra cell could not be read
    assert f"rows not imported (3), each with its reason: {rejects}" in r.out
    raw = rejects.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), "Excel needs the BOM to read UTF-8"
    with rejects.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    assert rows[0] == ["reason", "row", "Name", "Phone", "Notes"]
    by_row = {row[1]: row for row in rows[1:]}
    assert set(by_row) == {"3", "4", "5"}
    assert by_row["3"][0] == "phone number: '12345' is not a valid phone number (tried IN)"
    assert by_row["3"][2:] == ["Short", "12345", "two\r\nlines; and a semicolon"]
    assert by_row["4"][0].startswith("no phone number")
    assert by_row["5"][0].startswith("4 cells but the header has 3 columns")
    assert by_row["5"][2:] == ["Extra", "9876543211", "a", "b"]


def test_a_file_that_is_not_utf8_is_refused_naming_the_line(run_import, tmp_path, redis):
    legacy = tmp_path / "legacy.csv"
    legacy.write_bytes("name,phone\nRavi,9876543210\nJosé,9876543211\n".encode("cp1252"))
    r = run_import(legacy)
    assert r.returncode == 1
    assert "line 3: byte 0xe9 at column 4 is not UTF-8" in r.err
    assert "--encoding cp1252" in r.err
    assert redis.dbsize() == 0, "nothing of a file that cannot be read is imported"

    named = run_import(legacy, "--encoding", "cp1252")
    assert named.returncode == 0, named.err
    assert sorted(x.contact["name"] for x in stored(redis)) == ["José", "Ravi"]


def test_redis_unreachable_is_a_clear_error(tmp_path):
    from bridge.storage import free_port

    sheet = write_bytes(tmp_path / "leads.csv", "name,phone\nRavi,9876543210\n")
    config = write_config(tmp_path / "config.toml", {"routes": [route_dict()]})
    env = {
        **os.environ,
        "BRIDGE_CONFIG": str(config),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    }
    r = subprocess.run(
        [sys.executable, "-m", "bridge", "import", str(sheet), "--route", "leads"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "stopped after 0 rows: Redis unavailable" in err
    assert "not imported twice when the command runs again" in err
    assert "Traceback" not in err


def test_progress_lines_when_not_a_terminal(run_import, tmp_path):
    rows = "".join(f"Lead {i},98765{i:05d}\n" for i in range(1200))
    r = run_import(write_bytes(tmp_path / "leads.csv", "name,phone\n" + rows))
    assert r.returncode == 0, r.err
    last = r.err.strip().splitlines()[-1]
    assert last.startswith("1200/1200 rows (100%), ") and "rows/s" in last
    assert "\r" not in r.err


def backfill_tickets(redis) -> list[str]:
    from jobs.lanes import Lanes, pending_key

    return [
        t.decode()
        for kid, lane in Lanes(redis).lanes()
        if lane == "backfill"
        for t in redis.zrange(pending_key(kid, lane), 0, -1)
    ]


def test_ten_thousand_rows_stored_with_a_job_each_and_not_again(run_import, tmp_path, redis):
    count = 10_000
    rows = "".join(f"Lead {i},+9198{i:08d},city {i % 7}\n" for i in range(count))
    sheet = write_bytes(tmp_path / "big.csv", "name,phone,city\n" + rows)
    r = run_import(sheet)
    assert r.returncode == 0, r.err
    assert summary(r.out)["accepted"] == count
    deliveries = stored(redis)
    assert len(deliveries) == count
    assert {(x.status, x.lane) for x in deliveries} == {("queued", "backfill")}
    assert {x.contact["phoneNumber"] for x in deliveries} == {f"+9198{i:08d}" for i in range(count)}
    # each waits in the backfill lane of its key (``jobs.lanes``), under its current ticket
    tickets = backfill_tickets(redis)
    assert sorted(tickets) == sorted(x.job_id for x in deliveries)

    again = run_import(sheet)
    assert summary(again.out) == {"accepted": 0, "duplicates": count, "skipped": 0}
    assert len(stored(redis)) == count and len(backfill_tickets(redis)) == count


def test_an_imported_file_is_delivered_by_a_worker(
    run_import, tmp_path, redis, run_jobs, make_settings, sandbox
):
    # Delivery correctness only, so the file is kept small here (bench/backfill.py and
    # bench/drain.py time 10,000 rows end to end).
    count = 250
    sandbox.configure(general_limit=100_000)
    rows = "".join(f"Lead {i},98{i:08d},city {i % 7}\n" for i in range(count))
    r = run_import(write_bytes(tmp_path / "leads.csv", "name,phone,city\n" + rows))
    assert summary(r.out)["accepted"] == count
    run_jobs(make_settings(oliai={"general_per_minute": 100_000}))
    assert {x.status for x in stored(redis)} == {"delivered"}
    org = sandbox.org_state()
    contacts = {c["phoneNumber"]: c for c in org["contacts"]}
    assert set(contacts) == {f"+9198{i:08d}" for i in range(count)}
    assert contacts["+919800000007"]["name"] == "Lead 7"
    assert contacts["+919800000007"]["metadata"] == {"city": "city 0"}
    [audience] = org["audiences"]
    assert set(audience["contactIds"]) == {c["id"] for c in contacts.values()}


def test_imported_rows_of_a_provider_route_replay_with_remap(
    bridge, run_import, tmp_path, redis, run_jobs, make_settings, sandbox
):
    # A Typeform route: its webhooks are Typeform's JSON, its spreadsheet export is columns.
    route = route_dict(
        source="typeform",
        secret="typeform-secret-1",
        audience_name=None,
        audience_id="aud_typo",
        fields={"phoneNumber": "fields.Mobile"},
    )
    sheet = write_bytes(tmp_path / "typeform.csv", "Name,Mobile\nRavi,9876543210\n")
    assert summary(run_import(sheet, route=route).out)["accepted"] == 1
    run_jobs(make_settings(routes=[route]))
    [failed] = stored(redis)
    assert (failed.status, failed.reason_code) == ("failed", "not_found")

    fixed = route | {
        "audience_id": None,
        "audience_name": "Test leads",
        "fields": {"phoneNumber": "fields.Mobile", "name": "join(' ', [fields.Name, '(fixed)'])"},
    }
    fixed = {k: v for k, v in fixed.items() if v is not None}
    replayed = bridge("replay", "--all", "--remap", route=fixed)
    assert "requeued 1 of 1" in replayed.out, replayed.err
    assert stored(redis)[0].lane == "backfill"
    run_jobs(make_settings(routes=[fixed]))
    assert stored(redis)[0].status == "delivered"
    [contact] = sandbox.org_state()["contacts"]
    assert contact["name"] == "Ravi (fixed)"


def test_progress_bar_on_a_terminal(tmp_path, redis, redis_server, sandbox):
    import pty

    rows = "".join(f"Lead {i},98765{i:05d}\n" for i in range(600))
    sheet = write_bytes(tmp_path / "leads.csv", "name,phone\n" + rows)
    config = write_config(tmp_path / "config.toml", {"routes": [route_dict()]})
    env = {**os.environ, "BRIDGE_CONFIG": str(config), "REDIS_URL": redis_server.url}
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "import", str(sheet), "--route", "leads"],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        out, _ = process.communicate(timeout=120)
        os.close(terminal)
        terminal = None
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: everything is read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal is not None:
            os.close(terminal)
        os.close(controller)
    assert process.returncode == 0
    assert summary(out.decode())["accepted"] == 600
    assert b"\r[" + b"#" * 30 + b"] 600/600 rows 100% " in shown
    assert b"rows/s" in shown
