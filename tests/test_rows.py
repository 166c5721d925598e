"""Reading backfill files (bridge.rows): what spreadsheets export, and files that cannot be read."""

import codecs

import pytest

from bridge.rows import RowFile, UnreadableFile, sniff_delimiter, unique_columns


def read(path, **kw):
    rows = RowFile.open(path, **kw)
    return rows, list(rows)


@pytest.mark.parametrize(
    "header, expected",
    [
        ("Name,Phone,City", ","),
        ("Name;Phone;City", ";"),
        ("Name\tPhone\tCity", "\t"),
        ('"Name, full";Phone;City', ";"),  # a quoted comma in a semicolon file
        ('Name,"Notes; misc",Phone', ","),
        ("phone", ","),  # one column: nothing to tell, comma
    ],
)
def test_the_delimiter_is_told_by_the_header_row(header, expected):
    # the rows below the header would mislead a guess by consistency (csv.Sniffer)
    sample = header + '\r\nRavi;1;"a\nb"\r\nx,y,z,w;q\r\n'
    assert sniff_delimiter(sample) == expected


def test_excel_unicode_text_is_utf16_with_tabs(tmp_path):
    path = tmp_path / "unicode.txt"
    text = "Name\tPhone\r\nज़ोया\t9876543210\r\n"
    path.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    rows, [row] = read(path)
    assert (rows.encoding, rows.delimiter) == ("utf-16", "\t")
    assert row.fields == {"Name": "ज़ोया", "Phone": "9876543210"}


def test_blank_and_repeated_column_names_get_names_of_their_own():
    assert unique_columns([" Phone ", "", "Phone", "Phone"]) == [
        "Phone",
        "column 2",
        "Phone (2)",
        "Phone (3)",
    ]


def test_short_rows_are_padded_and_blank_rows_are_told(tmp_path):
    path = tmp_path / "leads.csv"
    path.write_text("name,phone,city\nRavi,9876543210\n,,\n\nAsha,9876543211,Pune,,\n")
    _, rows = read(path)
    assert [r.number for r in rows] == [2, 3, 4, 5]
    assert rows[0].fields == {"name": "Ravi", "phone": "9876543210", "city": ""}
    assert rows[1].blank and rows[2].blank
    # empty trailing cells (Excel pads rows) are not "more cells than the header"
    assert rows[3].problem is None and rows[3].fields["city"] == "Pune"


def test_a_quote_never_closed_is_refused_naming_its_line(tmp_path):
    path = tmp_path / "leads.csv"
    path.write_text('name,phone,notes\nRavi,9876543210,ok\nAsha,9876543211,"never closed\nmore\n')
    rows = RowFile.open(path)
    with pytest.raises(UnreadableFile, match=r"line 3: unexpected end of data"):
        rows.count()


@pytest.mark.parametrize("content", [b"", b"\n\n", b",,\n1,2\n"])
def test_a_file_without_a_header_is_refused(tmp_path, content):
    path = tmp_path / "leads.csv"
    path.write_bytes(content)
    with pytest.raises(UnreadableFile, match="no header row"):
        RowFile.open(path)


def test_a_missing_file_and_an_unknown_encoding_are_named(tmp_path):
    with pytest.raises(UnreadableFile, match="No such file"):
        RowFile.open(tmp_path / "nope.csv")
    path = tmp_path / "leads.csv"
    path.write_text("name\n")
    with pytest.raises(UnreadableFile, match="unknown encoding 'klingon'"):
        RowFile.open(path, encoding="klingon")


def test_json_lines_are_told_by_extension_or_content(tmp_path):
    for name in ("leads.ndjson", "leads.export"):
        path = tmp_path / name
        path.write_text('{"phone": "9876543210"}\r\n{"phone": "9876543211"}\r\n')
        rows, read_rows = read(path)
        assert rows.kind == "jsonl"
        assert [r.fields["phone"] for r in read_rows] == ["9876543210", "9876543211"]
