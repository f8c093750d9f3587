"""Labelled texts from the user's own files, for `tart eval --data` and `tart predict`.

A file is JSON Lines (`.jsonl`, `.json`, `.ndjson`: one object per line) or CSV / TSV (`.csv`,
`.tsv`: a header row naming the columns), UTF-8. One field holds the text, one the label; labels
may be strings or integers (in CSV, integer-looking labels count as integers). Classes are ordered
integers first (numerically), then strings (alphabetically). Every mistake is a `UserError` naming
the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Iterator, Sequence

import numpy as np

from symtune.errors import UserError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_INTEGER = re.compile(r"[+-]?\d+")


class InputNote(UserWarning):
    """Something done to the user's input that they should hear about once (the `tart` commands
    print it as one `note:` line)."""


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with label ids into `classes` (the label values as the file writes them)."""

    texts: tuple[str, ...]
    labels: np.ndarray  # int64 ids into classes
    classes: tuple[Hashable, ...]

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.classes)


def label_ids(values: Sequence[Hashable], source: str = "the examples") -> tuple[np.ndarray, tuple[Hashable, ...]]:
    """Ids of `values` and the classes in id order; a UserError when there are fewer than two."""
    classes = tuple(sorted(set(values), key=lambda v: (isinstance(v, str), v)))
    if len(classes) < 2:
        found = f"every example is labelled {classes[0]!r}" if classes else "there are no examples"
        raise UserError(f"{source}: {found}; TART needs examples of at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], np.int64), classes


def checked_text(value: object, where: str) -> str:
    """`value` as an input text; a UserError (naming `where`) when it is empty or not text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: the text is a {type(value).__name__}, not a string")
    if not value.strip():
        raise UserError(f"{where}: empty text; fill it in or remove the row")
    return value


def read_labelled(path: str | Path, text_field: str = "text", label_field: str = "label") -> LabelledTexts:
    """Every row's text and label; at least two classes."""
    texts, values = [], []
    for where, row in _rows(path, (text_field, label_field)):
        texts.append(checked_text(row[text_field], where))
        values.append(_label_value(row[label_field], where, from_csv=Path(path).suffix.lower() in CSV_DELIMITERS))
    if not texts:
        raise UserError(f"{path} has no rows")
    labels, classes = label_ids(values, str(path))
    return LabelledTexts(tuple(texts), labels, classes)


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Every row's text (other fields, a label included, are ignored)."""
    texts = [checked_text(row[text_field], where) for where, row in _rows(path, (text_field,))]
    if not texts:
        raise UserError(f"{path} has no rows")
    return texts


def _label_value(value: object, where: str, from_csv: bool) -> Hashable:
    if isinstance(value, str):
        value = value.strip()
        if from_csv and _INTEGER.fullmatch(value):
            return int(value)
        if value:
            return value
    elif isinstance(value, int):  # bool included: true/false are two classes
        return value
    raise UserError(f"{where}: the label must be a non-empty string or an integer, not {value!r}")


def _rows(path: str | Path, fields: Sequence[str]) -> Iterator[tuple[str, dict]]:
    """(where, row) of each row holding every one of `fields`; `where` is "FILE line N"."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"{path}: " + ("a directory, not a file" if path.is_dir() else "no such file"))
    if suffix not in JSONL_SUFFIXES and suffix not in CSV_DELIMITERS:
        raise UserError(f"{path}: unknown file type {suffix or '(none)'!r}; use .jsonl (JSON Lines) or .csv")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: not UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None
    rows = _json_lines(path, text) if suffix in JSONL_SUFFIXES else _csv_rows(path, text, CSV_DELIMITERS[suffix])
    for where, row in rows:
        for name in fields:
            if row.get(name) is None:
                flag = "--text_field" if name == fields[0] else "--label_field"
                raise UserError(f"{where} has no field {name!r} (it has {', '.join(map(repr, row)) or 'none'}); "
                                f"name the right one with {flag}")
        yield where, row


def _json_lines(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not JSON ({e.msg}); a .jsonl file holds one JSON object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: a {type(row).__name__}, not a JSON object")
        yield where, row


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for row in reader:
            if any(v and v.strip() for k, v in row.items() if k is not None):  # skip blank lines
                yield f"{path} line {reader.line_num}", row
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None
