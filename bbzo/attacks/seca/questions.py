"""Multiple-choice question sets: JSONL or CSV files, and the built-in general-knowledge set.

Accepted records (one per JSONL line or CSV row):

- MMLU-like: ``question``, ``choices`` (a list; in CSV a JSON list or columns ``A``, ``B``,
  ...), ``answer`` (an index from 0, or a letter), optional ``subject`` and ``id``.
- TOFU: ``question``, ``answer`` (the right text), ``perturbed_answer`` (a list of wrong texts,
  or one), optional ``subject`` and ``id``.

Options are shuffled per question with a generator seeded by (seed, question id), so a question's
order does not depend on which other questions the file holds. Files are UTF-8, with or
without a byte-order mark (as Excel writes them). A malformed record raises ``InputError``
naming the file, the line and the field, with values shown escaped (``'\\ufeff'``), never raw.
"""

from __future__ import annotations

import csv
import io
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bbzo.errors import InputError
from bbzo.runs.reader import show

LETTERS = string.ascii_uppercase
DEFAULT_SUBJECT = "general knowledge"
BUILTIN = "general_knowledge.jsonl"


@dataclass(frozen=True)
class Question:
    """One multiple-choice question.

    Attributes:
        id: unique within its set.
        question: the question text (without the options).
        choices: option texts, in presentation order.
        answer: index of the correct option in ``choices``.
        subject: topic, used for the expert persona ("an expert in <subject>").
    """

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = DEFAULT_SUBJECT

    @property
    def letters(self) -> tuple[str, ...]:
        """Option letters ``A``, ``B``, ... (one per choice)."""
        return tuple(LETTERS[: len(self.choices)])

    def option_text(self, index: int) -> str:
        """Option ``index`` as every prompt shows it: ``"B. Berlin"``."""
        return f"{LETTERS[index]}. {self.choices[index]}"

    def options_text(self, sep: str = "; ") -> str:
        """Every option as ``option_text`` shows it, joined by ``sep``."""
        return sep.join(self.option_text(i) for i in range(len(self.choices)))

    def shuffled(self, seed: int) -> Question:
        """The same question with its options in an order drawn from (seed, id)."""
        order = list(range(len(self.choices)))
        random.Random(f"seca-options:{seed}:{self.id}").shuffle(order)
        return Question(self.id, self.question, tuple(self.choices[i] for i in order),
                        order.index(self.answer), self.subject)


def load_questions(path: str | Path | None = None, *, seed: int = 0, shuffle: bool = True,
                   limit: int | None = None) -> list[Question]:
    """Questions from a ``.jsonl`` or ``.csv`` file (None: the built-in set of 50).

    Args:
        path: the file; None loads the built-in general-knowledge set.
        seed: seed of the option shuffle.
        shuffle: shuffle each question's options (True) or keep the file's order.
        limit: keep only the first ``limit`` questions (None: all).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer or None, got {limit!r}")
    if path is None:
        source = resources.files("bbzo.attacks.seca").joinpath("data").joinpath(BUILTIN)
        name, text = BUILTIN, source.read_text(encoding="utf-8-sig")
        rows = _jsonl_rows(text, name)
    else:
        file = Path(path)
        name = str(file)
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read question file {file}: {err}") from None
        suffix = file.suffix.lower()
        if suffix == ".csv":
            rows = _csv_rows(text, name)
        elif suffix in (".jsonl", ".json"):
            rows = _jsonl_rows(text, name)
        else:
            raise InputError(f"question file {file} must end in .jsonl or .csv, got "
                             f"{suffix or 'no suffix'!r}")
    questions, seen = [], {}
    for line, record in rows:
        q = _question(record, f"{name} line {line}", default_id=f"line-{line}")
        if q.id in seen:
            raise InputError(f"{name} line {line}: field 'id' repeats {show(q.id)} from line "
                             f"{seen[q.id]}; ids must be unique")
        seen[q.id] = line
        questions.append(q.shuffled(seed) if shuffle else q)
    if not questions:
        raise InputError(f"{name} holds no questions")
    return questions[:limit]


def _jsonl_rows(text: str, name: str) -> Iterator[tuple[int, dict]]:
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        record, problem = _json(raw)
        if problem:
            raise InputError(f"{name} line {line}: {problem}; each line must be one JSON object")
        if not isinstance(record, dict):
            raise InputError(f"{name} line {line}: expected a JSON object with a 'question' "
                             f"field, got {type(record).__name__}")
        yield line, record


def _csv_rows(text: str, name: str) -> Iterator[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames or []
        yield from _csv_records(reader, header, name)
    except csv.Error as err:
        raise InputError(f"{name} line {reader.line_num + 1}: not valid CSV ({err})") from None


def _csv_records(reader: csv.DictReader, header: list[str],
                 name: str) -> Iterator[tuple[int, dict]]:
    if "question" not in header:
        raise InputError(f"{name} line 1: the CSV header needs a 'question' column, got "
                         f"{', '.join(map(show, header)) or 'no columns'}")
    letters = [c for c in LETTERS if c in header]
    if letters and letters != list(LETTERS[: len(letters)]):
        raise InputError(f"{name} line 1: option columns must be consecutive from A, got "
                         f"{', '.join(letters)}")
    for record in reader:
        line = reader.line_num
        if None in record:
            raise InputError(f"{name} line {line}: more cells than header columns")
        if letters and "choices" not in record:
            record["choices"] = [record.pop(c) for c in letters]
        elif isinstance(record.get("choices"), str):
            record["choices"] = _json_cell(record["choices"], f"{name} line {line}", "choices")
        if isinstance(record.get("perturbed_answer"), str) \
                and record["perturbed_answer"].lstrip().startswith("["):
            record["perturbed_answer"] = _json_cell(record["perturbed_answer"],
                                                    f"{name} line {line}", "perturbed_answer")
        yield line, {k: v for k, v in record.items() if v != ""}


def _json(text: str) -> tuple[Any, str | None]:
    """``text`` parsed as JSON and None, or None and what is wrong with it."""
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "JSON nested too deeply"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg})"
    except ValueError:  # json.loads refuses integers of over 4300 digits
        return None, "not valid JSON (a number of over 4300 digits)"


def _json_cell(cell: str, where: str, field: str) -> Any:
    value, problem = _json(cell)
    if problem:
        raise InputError(f"{where}: field {field!r} must hold a JSON list of strings, got "
                         f"{show(cell)} ({problem})")
    return value


def _text(record: dict, field: str, where: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        what = "missing" if value is None else f"got {show(value)}"
        raise InputError(f"{where}: field {field!r} must be a non-empty string ({what})")
    return value.strip()


def _question(record: dict, where: str, default_id: str) -> Question:
    """A ``Question`` from one MMLU-like or TOFU record."""
    question = _text(record, "question", where)
    subject = _text(record, "subject", where) if "subject" in record else DEFAULT_SUBJECT
    qid = _id(record.get("id"), where) or default_id
    if "choices" in record:
        choices = _choices(record["choices"], "choices", where)
        answer = _answer_index(record.get("answer"), len(choices), where)
    elif "perturbed_answer" in record:
        right = _text(record, "answer", where)
        wrong = record["perturbed_answer"]
        choices = _choices([right, *(wrong if isinstance(wrong, list) else [wrong])],
                           "perturbed_answer", where)
        answer = 0
    else:
        raise InputError(f"{where}: field 'choices' is missing (a list of options; CSV files "
                         f"may use columns A, B, ...; TOFU records use 'perturbed_answer')")
    return Question(qid, question, choices, answer, subject.replace("_", " "))


def _id(value: Any, where: str) -> str:
    """The record's id as a string ("" when absent)."""
    if value is None or isinstance(value, str):
        return (value or "").strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InputError(f"{where}: field 'id' must be a string or an integer, got {show(value)}")


def _choices(value: Any, field: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not 2 <= len(value) <= len(LETTERS):
        raise InputError(f"{where}: field {field!r} must give 2 to {len(LETTERS)} options in "
                         f"all, got {show(value)}")
    if not all(isinstance(c, str) and c.strip() for c in value):
        raise InputError(f"{where}: field {field!r} must hold non-empty strings, got "
                         f"{show(value)}")
    choices = tuple(c.strip() for c in value)
    if len(set(choices)) != len(choices):
        raise InputError(f"{where}: field {field!r} repeats an option: {show(list(choices))}")
    return choices


def _answer_index(value: Any, n: int, where: str) -> int:
    """The answer as an index: an integer 0..n-1, a digit string, or a letter A.."""
    letters = LETTERS[:n]
    digits = value.strip() if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 3:  # no index is longer
        value = int(digits)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    letter = value.strip().upper() if isinstance(value, str) else None
    if letter is not None and len(letter) == 1 and letter in letters:
        return letters.index(letter)
    raise InputError(f"{where}: field 'answer' must be an index 0..{n - 1} or a letter "
                     f"{letters[0]}-{letters[-1]}, got {show(value)}")
