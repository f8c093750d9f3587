"""The user's own files for `tart eval --data` / `tart predict`: formats, labels, and every mistake
as one line on stderr with exit code 2."""

import json

import pytest

from symtune.errors import UserError
from tart.cli import main
from tart.userdata import label_ids, read_labelled, read_texts


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_bytes(path, data):
    path.write_bytes(data)
    return path


def test_jsonl_string_labels_get_ids_in_alphabetical_order(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"},
                                              {"text": "c", "label": "pos"}])
    data = read_labelled(path)
    assert data.texts == ("a", "b", "c") and data.classes == ("neg", "pos")
    assert data.labels.tolist() == [1, 0, 1]


def test_csv_with_other_field_names_and_integer_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('review,stars\n"good, really",10\nbad,2\n\nfine,10\n', encoding="utf-8")
    data = read_labelled(path, text_field="review", label_field="stars")
    assert data.texts == ("good, really", "bad", "fine")
    assert data.classes == (2, 10)  # integers in numeric order, not "10" < "2"
    assert data.labels.tolist() == [1, 0, 1]


def test_queries_need_only_the_text_field(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"text": "x"}, {"text": "y", "label": 3}])
    assert read_texts(path) == ["x", "y"]


def test_one_class_is_refused():
    with pytest.raises(UserError, match="every example is labelled 'pos'; TART needs examples of at least two"):
        label_ids(["pos", "pos"])


MISTAKES = {
    "missing file": (lambda d: d / "absent.jsonl", "no such file"),
    "missing field": (lambda d: write_jsonl(d / "f.jsonl", [{"sentence": "a", "label": 0}]),
                      "line 1 has no field 'text' (it has 'sentence', 'label'); name the right one with --text_field"),
    "single class": (lambda d: write_jsonl(d / "f.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 1}]),
                     "every example is labelled 1"),
    "empty text": (lambda d: write_jsonl(d / "f.jsonl", [{"text": "a", "label": 0}, {"text": "  ", "label": 1}]),
                   "line 2: empty text"),
    "not UTF-8": (lambda d: write_bytes(d / "f.csv", b"text,label\nok,0\ncaf\xe9,1\n"),
                  "line 3: not UTF-8 (byte 0xe9); save the file as UTF-8"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_bad_files_are_one_line_and_exit_2(command, mistake, tmp_path, capsys):
    make, message = MISTAKES[mistake]
    bad = make(tmp_path)
    good = write_jsonl(tmp_path / "queries.jsonl", [{"text": "a query"}])
    if command == "eval":
        argv = ["eval", f"--data={bad}", f"--run_dir={tmp_path / 'run'}"]
    else:
        argv = ["predict", f"--examples={bad}", f"--queries={good}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tart: error: ") and message in err[0], err


def test_bad_queries_file_is_one_line_and_exit_2(tmp_path, capsys):
    examples = write_jsonl(tmp_path / "e.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": "fine"}, {"text": ""}])
    assert main(["predict", f"--examples={examples}", f"--queries={queries}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tart: error: {queries} line 2: empty text; fill it in or remove the row"]
