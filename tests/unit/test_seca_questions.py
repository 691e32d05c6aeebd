"""SECA question sets: JSONL / CSV, MMLU-like and TOFU forms, the built-in set, the seeded
option shuffle, and errors that name the line and the field."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bbzo.attacks.seca.questions import Question, load_questions
from bbzo.errors import InputError


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(tmp_path, *records, name="q.jsonl"):
    return write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))


def test_jsonl_mmlu_index_and_letter_answers(tmp_path):
    path = jsonl(tmp_path,
                 {"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1,
                  "subject": "high_school_mathematics", "id": "m1"},
                 {"question": "Sky colour?", "choices": ["red", "blue"], "answer": "b"})
    a, b = load_questions(path, shuffle=False)
    assert a == Question("m1", "2+2?", ("3", "4", "5", "6"), 1, "high school mathematics")
    assert (b.id, b.answer, b.subject, b.letters) == ("line-2", 1, "general knowledge",
                                                      ("A", "B"))


def test_csv_letter_columns_and_json_choices(tmp_path):
    path = write(tmp_path, "q.csv",
                 "id,question,A,B,C,D,answer,subject\n"
                 'c1,"Largest planet, by mass?",Mars,Jupiter,Venus,Earth,B,astronomy\n'
                 "c2,Water formula?,H2O,CO2,O2,NaCl,0,\n")
    c1, c2 = load_questions(path, shuffle=False)
    assert c1 == Question("c1", "Largest planet, by mass?", ("Mars", "Jupiter", "Venus", "Earth"),
                          1, "astronomy")
    assert (c2.answer, c2.subject) == (0, "general knowledge")
    path = write(tmp_path, "j.csv", 'question,choices,answer\nQ?,"[""x"", ""y""]",1\n')
    assert load_questions(path, shuffle=False)[0].choices == ("x", "y")


def test_tofu_form_puts_the_right_answer_among_the_wrong_ones(tmp_path):
    path = jsonl(tmp_path, {"question": "Where is the Eiffel Tower?", "answer": "Paris",
                            "perturbed_answer": ["Berlin", "London", "Madrid"]})
    q = load_questions(path, shuffle=False)[0]
    assert q.choices == ("Paris", "Berlin", "London", "Madrid") and q.answer == 0
    shuffled = load_questions(path, seed=3)[0]
    assert sorted(shuffled.choices) == sorted(q.choices)
    assert shuffled.choices[shuffled.answer] == "Paris"


def test_shuffle_is_determined_by_seed_and_id(tmp_path):
    records = [{"id": f"q{i}", "question": f"Question {i}?",
                "choices": ["w", "x", "y", "z"], "answer": i % 4} for i in range(40)]
    path = jsonl(tmp_path, *records)
    first, again = load_questions(path, seed=7), load_questions(path, seed=7)
    assert first == again
    for q, r in zip(first, records, strict=True):
        assert q.choices[q.answer] == r["choices"][r["answer"]]
    other = load_questions(path, seed=8)
    assert sum(a.choices != b.choices for a, b in zip(first, other, strict=True)) >= 20
    # A question's order depends on its id, not on the questions around it.
    alone = jsonl(tmp_path, records[5], name="alone.jsonl")
    assert load_questions(alone, seed=7)[0] == first[5]
    # Over 40 questions every position holds the answer at least once (P(miss) < 4e-4 each).
    assert set(Counter(q.answer for q in first)) == {0, 1, 2, 3}


def test_limit_keeps_the_first_questions(tmp_path):
    path = jsonl(tmp_path, *[{"question": f"Q{i}?", "choices": ["a", "b"], "answer": 0}
                             for i in range(5)])
    assert [q.question for q in load_questions(path, limit=2)] == ["Q0?", "Q1?"]
    with pytest.raises(InputError, match="limit"):
        load_questions(path, limit=0)


def test_builtin_set():
    questions = load_questions(None, shuffle=False)
    assert len(questions) == 50
    assert len({q.id for q in questions}) == 50
    assert all(len(q.choices) == 4 and len(set(q.choices)) == 4 for q in questions)
    assert len({q.subject for q in questions}) >= 10
    assert Counter(q.answer for q in questions).most_common(1)[0][1] <= 15


@pytest.mark.parametrize("name, text, fragment", [
    ("q.jsonl", '{"question": "a?", "choices": ["x", "y"], "answer": 0}\n\n{oops\n',
     "q.jsonl line 3: not valid JSON"),
    ("q.jsonl", '{"question": "a?", "choices": ["x", "y"], "answer": 0}\n'
                '{"choices": ["x", "y"], "answer": 0}\n', "line 2: field 'question'"),
    ("q.jsonl", '{"question": "a?", "choices": ["x", "y"], "answer": 2}\n',
     "line 1: field 'answer' must be an index 0..1 or a letter A-B"),
    ("q.jsonl", '{"question": "a?", "choices": ["x", "y"], "answer": "AB"}\n',
     "line 1: field 'answer'"),
    ("q.jsonl", '{"question": "a?", "choices": ["x", "x"], "answer": 0}\n',
     "line 1: field 'choices' repeats"),
    ("q.jsonl", '{"question": "a?", "choices": ["x"], "answer": 0}\n',
     "line 1: field 'choices' must give 2 to 26 options"),
    ("q.jsonl", '{"question": "a?", "answer": 0}\n', "line 1: field 'choices' is missing"),
    ("q.jsonl", '{"question": "a?", "answer": "", "perturbed_answer": ["b"]}\n',
     "line 1: field 'answer' must be a non-empty string"),
    ("q.jsonl", '{"id": 1, "question": "a?", "choices": ["x", "y"], "answer": 0}\n'
                '{"id": "1", "question": "b?", "choices": ["x", "y"], "answer": 0}\n',
     "line 2: field 'id' repeats '1' from line 1"),
    ("q.jsonl", '["a list"]\n', "line 1: expected a JSON object"),
    ("q.csv", "question,A,B,answer\nQ?,x,y,0\nR?,x,,1\n", "q.csv line 3: field 'choices'"),
    ("q.csv", "question,A,C,answer\nQ?,x,y,0\n", "line 1: option columns must be consecutive"),
    ("q.csv", "prompt,A,B\nQ?,x,y\n", "line 1: the CSV header needs a 'question' column"),
    ("q.csv", 'question,choices,answer\nQ?,"[x, y]",0\n', "line 2: field 'choices' must hold "
                                                         "a JSON list"),
    ("q.txt", "whatever", "must end in .jsonl or .csv"),
    ("q.jsonl", "\n\n", "holds no questions"),
])
def test_malformed_files_name_line_and_field(tmp_path, name, text, fragment):
    with pytest.raises(InputError) as err:
        load_questions(write(tmp_path, name, text))
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(InputError, match="cannot read question file"):
        load_questions(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("name, text", [
    ("q.jsonl", '{"question": "a?", "choices": ["x", "y"], "answer": 1}\n'),
    ("q.csv", "question,A,B,answer\na?,x,y,1\n"),
])
def test_a_byte_order_mark_is_accepted(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # what Excel writes
    [q] = load_questions(path, shuffle=False)
    assert (q.question, q.choices, q.answer) == ("a?", ("x", "y"), 1)


@pytest.mark.parametrize("name, text, fragment", [
    ("q.jsonl", '{"question": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
     "q.jsonl line 1: JSON nested too deeply"),
    ("q.jsonl", '{"question": "a?", "choices": ["x", "y"], "answer": ' + "9" * 5000 + "}\n",
     "q.jsonl line 1: not valid JSON"),
    ("q.jsonl", '{"question": "a?", "choices": ["x", "y"], "answer": "\u00b2"}\n',
     "line 1: field 'answer' must be an index 0..1 or a letter A-B, got '\u00b2'"),
    ("q.jsonl", '{"id": [1], "question": "a?", "choices": ["x", "y"], "answer": 0}\n',
     "line 1: field 'id' must be a string or an integer, got [1]"),
    ("q.csv", 'question,choices,answer\nQ?,"' + "[" * 100_000 + '",0\n',
     "q.csv line 2: field 'choices' must hold a JSON list of strings"),
    ("q.csv", 'question,A,B,answer\nQ?,"' + "x" * 200_000 + '",y,0\n',
     "q.csv line 2: not valid CSV (field larger than field limit"),
])
def test_pathological_lines_are_input_errors(tmp_path, name, text, fragment):
    with pytest.raises(InputError) as err:
        load_questions(write(tmp_path, name, text))
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, shown", [
    ("\u200bquestion,A,B\nQ?,x,y\n", "'\\u200bquestion'"),
    ("question,A,B,answer\nQ?,x,y,\u200bB\n", "'\\u200bB'"),
])
def test_invisible_characters_are_shown_escaped(tmp_path, text, shown):
    with pytest.raises(InputError) as err:
        load_questions(write(tmp_path, "q.csv", text))
    assert shown in str(err.value) and "\u200b" not in str(err.value)


def test_a_line_separator_inside_a_json_string_does_not_split_the_line(tmp_path):
    [q] = load_questions(jsonl(tmp_path, {"question": "a\u2028b?", "choices": ["x", "y"],
                                          "answer": 0}), shuffle=False)
    assert q.question == "a\u2028b?"


WRONG = [None, True, 0, -1, 10 ** 30, 1.5, float("nan"), "", "AB", "\u200b", "\u00b2", [],
         ["x"], ["x", 1], {"a": 1}]


@pytest.mark.parametrize("field", ["question", "choices", "answer", "id", "subject",
                                   "perturbed_answer"])
def test_every_wrong_value_of_every_field_is_read_or_refused_in_one_line(tmp_path, field):
    good = {"question": "Q?", "choices": ["x", "y"], "answer": 1}
    for i, value in enumerate(WRONG):
        path = jsonl(tmp_path, {**good, field: value}, name=f"q{i}.jsonl")
        try:
            load_questions(path)
        except InputError as err:
            assert "\n" not in str(err) and str(err).isprintable()
