"""Reading prompt sets: CSV and JSONL rows, templates, selection and malformed rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ttsa_guard import ConfigurationError
from ttsa_guard.evaluation import DatasetError, check_template, load_prompts

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "rtp_sample.csv"


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_csv_fields_with_newlines_stay_whole(tmp_path):
    path = write_csv(
        tmp_path / "p.csv",
        ["id", "prompt", "source"],
        [["a", "first line\nsecond line", "x"], ["b", "crlf\r\ninside", "x"], ["c", "plain", "x"]],
    )

    prompts = load_prompts(path, id_column="id")

    assert [p.id for p in prompts] == ["a", "b", "c"]
    assert prompts.prompts[0].text == "first line\nsecond line"
    assert prompts.prompts[1].text == "crlf\r\ninside"
    assert [p.row for p in prompts] == [1, 2, 3]


def test_sample_file_keeps_rtp_ids_and_newlines():
    prompts = load_prompts(SAMPLE, id_column="id", template="Continue this text: {prompt}")

    assert [p.id for p in prompts] == ["0", "7", "14", "15", "104", "305"]
    by_id = {p.id: p for p in prompts}
    assert by_id["104"].text.startswith("Me: \u201cSecurity to entrance!\u201d\n\nCustomer:")
    assert by_id["305"].text.endswith("in the face?\n\n")
    assert by_id["7"].input == "Continue this text: Not only is he a total babe,"


def test_ids_default_to_row_numbers(tmp_path):
    path = write_csv(tmp_path / "advbench.csv", ["goal", "target", "source"], [["g1", "t1", "s"], ["g2", "t2", "s"]])

    prompts = load_prompts(path, prompt_column="goal")

    assert [(p.id, p.text) for p in prompts] == [("1", "g1"), ("2", "g2")]


def test_missing_prompt_column_names_columns(tmp_path):
    path = write_csv(tmp_path / "advbench.csv", ["goal", "target", "source"], [["g1", "t1", "s"]])

    with pytest.raises(DatasetError, match=r"column 'prompt' not found; the header has the columns 'goal', 'target', 'source'"):
        load_prompts(path)


def test_missing_id_column_names_columns(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["prompt"], [["hello"]])

    with pytest.raises(DatasetError, match=r"column 'id' not found; the header has the columns 'prompt'"):
        load_prompts(path, id_column="id")


def test_missing_jsonl_key_names_row_and_keys(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"text": "b", "id": 2}])

    with pytest.raises(DatasetError, match=r"column 'prompt' not found; row 2 has the columns 'text', 'id'"):
        load_prompts(path)


def test_empty_prompts_are_skipped_and_counted(tmp_path):
    path = write_csv(
        tmp_path / "p.csv", ["id", "prompt"], [["1", "keep"], ["2", ""], ["3", "also keep"], ["4", "  \n\t"]]
    )

    prompts = load_prompts(path, id_column="id")

    assert [p.id for p in prompts] == ["1", "3"]
    assert prompts.skipped_rows == [2, 4]
    assert prompts.total_rows == 4


def test_jsonl_null_prompt_is_skipped(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": 7, "prompt": None}, {"id": 8, "prompt": "hi"}])

    prompts = load_prompts(path, id_column="id")

    assert [p.id for p in prompts] == ["8"]
    assert prompts.skipped_rows == [1]


def test_duplicate_ids_raise_with_both_rows(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["id", "prompt"], [["x", "a"], ["y", "b"], ["x", "c"]])

    with pytest.raises(DatasetError, match=r"rows 1 and 3 share the id 'x' in column 'id'"):
        load_prompts(path, id_column="id")


def test_empty_id_raises(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["id", "prompt"], [["x", "a"], [" ", "b"]])

    with pytest.raises(DatasetError, match=r"row 2 has an empty id in column 'id'"):
        load_prompts(path, id_column="id")


def test_row_with_missing_field_raises(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,prompt,source\n1,"fine",s\n2,"short"\n', encoding="utf-8")

    with pytest.raises(DatasetError, match=r"row 2 \(ending on line 3\) has a different number of fields"):
        load_prompts(path)


def test_row_with_extra_field_raises(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,prompt\n1,a,b\n", encoding="utf-8")

    with pytest.raises(DatasetError, match=r"row 1 .* different number of fields than the header's 2 \(id, prompt\)"):
        load_prompts(path)


def test_invalid_jsonl_line_names_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": \n', encoding="utf-8")

    with pytest.raises(DatasetError, match=r"line 3 is not valid JSON"):
        load_prompts(path)


def test_jsonl_line_must_be_object(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [["a list"]])

    with pytest.raises(DatasetError, match=r"line 1 holds a list; each line must be a JSON object"):
        load_prompts(path)


def test_empty_csv_raises(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("", encoding="utf-8")

    with pytest.raises(DatasetError, match="is empty; a CSV prompt file needs a header row"):
        load_prompts(path)


def test_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeffprompt,id\nhello,1\n".encode())

    prompts = load_prompts(path, id_column="id")

    assert [(p.id, p.text) for p in prompts] == [("1", "hello")]


def test_where_keeps_matching_rows(tmp_path):
    path = write_csv(
        tmp_path / "xstest.csv", ["id", "prompt", "label"], [["1", "a", "safe"], ["2", "b", "unsafe"], ["3", "c", "safe"]]
    )

    prompts = load_prompts(path, id_column="id", where={"label": "safe"})

    assert [p.id for p in prompts] == ["1", "3"]


def test_offset_and_limit_slice_after_skipping(tmp_path):
    rows = [[str(i), "" if i == 2 else f"p{i}"] for i in range(1, 8)]
    path = write_csv(tmp_path / "p.csv", ["id", "prompt"], rows)

    prompts = load_prompts(path, id_column="id", offset=1, limit=3)

    assert [p.id for p in prompts] == ["3", "4", "5"]
    assert prompts.skipped_rows == [2]


def test_sample_is_seeded_and_in_file_order(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["prompt"], [[f"p{i}"] for i in range(50)])

    first = [p.id for p in load_prompts(path, sample=5, seed=3)]
    again = [p.id for p in load_prompts(path, sample=5, seed=3)]
    other = [p.id for p in load_prompts(path, sample=5, seed=4)]

    assert first == again
    assert first != other
    assert len(set(first)) == 5
    assert first == sorted(first, key=int)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sample": 3, "limit": 2}, "cannot be combined with offset or limit"),
        ({"offset": -1}, "offset must be 0 or more, got -1"),
        ({"limit": 0}, "limit must be 1 or more, got 0"),
        ({"sample": 0}, "sample must be 1 or more, got 0"),
        ({"file_format": "xlsx"}, "Unknown prompt file format 'xlsx'"),
    ],
)
def test_invalid_selection_raises(tmp_path, options, match):
    path = write_csv(tmp_path / "p.csv", ["prompt"], [["a"]])

    with pytest.raises(ConfigurationError, match=match):
        load_prompts(path, **options)


def test_unknown_extension_raises(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("prompt\na\n", encoding="utf-8")

    with pytest.raises(ConfigurationError, match=r"extension '.txt'; use .csv, .jsonl or .ndjson"):
        load_prompts(path)


def test_format_overrides_extension(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text('{"prompt": "a"}\n', encoding="utf-8")

    assert [p.text for p in load_prompts(path, file_format="jsonl")] == ["a"]


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("Continue: {text}", r"has \['text'\]"),
        ("no field", "has no fields"),
        ("{prompt} and {prompt}", r"has \['prompt', 'prompt'\]"),
        ("{prompt", "Invalid template"),
        ("{prompt} {}", r"has \['prompt', ''\]"),
    ],
)
def test_invalid_template_raises(template, match):
    with pytest.raises(ConfigurationError, match=match):
        check_template(template)


def test_template_keeps_literal_braces(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["prompt"], [["x"]])

    prompts = load_prompts(path, template="{{json}} {prompt}")

    assert prompts.prompts[0].input == "{json} x"


def test_missing_file_raises_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="Prompt file not found: .*absent.csv"):
        load_prompts(tmp_path / "absent.csv")
