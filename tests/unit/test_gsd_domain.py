"""User-given domains: both file forms, encoding and decoding, errors naming the bad cell."""

import json

import numpy as np
import pytest

from bbzo.errors import InputError
from bbzo.privacy.gsd.domain import Domain, read_csv, write_csv

RICH = {"columns": {
    "sex": {"type": "categorical", "categories": ["F", "M"]},
    "age": {"type": "numeric", "min": 0, "max": 100, "bins": 10},
    "edu": {"type": "codes", "size": 4},
}}


def test_sizes_form_encodes_codes_in_domain_order(tmp_path):
    path = tmp_path / "domain.json"
    path.write_text(json.dumps({"a": 3, "b": 2}))
    domain = Domain.from_file(path)
    codes = domain.encode({"b": ["1", "0", "1"], "a": [2, 0, 1]})
    assert domain.names == ["a", "b"]
    np.testing.assert_array_equal(domain.sizes, [3, 2])
    np.testing.assert_array_equal(codes, [[2, 1], [0, 0], [1, 1]])
    assert domain.decode(codes) == {"a": ["2", "0", "1"], "b": ["1", "0", "1"]}


def test_rich_form_bins_numbers_and_maps_categories(tmp_path):
    domain = Domain.from_dict(RICH)
    np.testing.assert_array_equal(domain.sizes, [2, 10, 4])
    codes = domain.encode({"sex": ["M", "F", "M"], "age": ["0", "35.5", "100"],
                           "edu": ["3", "0", "2"]})
    np.testing.assert_array_equal(codes, [[1, 0, 3], [0, 3, 0], [1, 9, 2]])
    out = domain.decode(codes)
    assert out["sex"] == ["M", "F", "M"]
    assert out["age"] == ["5", "35", "95"]  # bin midpoints
    path = tmp_path / "synthetic.csv"
    write_csv(path, out, ["edu", "sex", "age"])
    assert read_csv(path) == {"edu": ["3", "0", "2"], "sex": ["M", "F", "M"],
                              "age": ["5", "35", "95"]}


def test_a_code_array_is_checked_as_codes_in_every_column_kind():
    domain = Domain.from_dict(RICH)
    codes = np.array([[1, 0, 3], [0, 9, 0]])
    np.testing.assert_array_equal(domain.encode(codes), codes)
    with pytest.raises(InputError, match="column 'age', data row 2: value 10"):
        domain.encode(np.array([[1, 0, 3], [0, 10, 0]]))


def test_numeric_column_with_the_users_bin_edges():
    domain = Domain.from_dict({"columns": {"age": {"type": "numeric",
                                                   "bins": [0, 18, 30, 65, 100]}}})
    assert domain.sizes.tolist() == [4]
    codes = domain.encode({"age": [0, 17.9, 18, 64, 65, 100]})
    assert codes[:, 0].tolist() == [0, 0, 1, 2, 3, 3]
    assert domain.decode(codes)["age"] == ["9", "9", "24", "47.5", "82.5", "82.5"]
    with pytest.raises(InputError, match="'age', data row 1: value -1"):
        domain.encode({"age": [-1]})
    for bad in ([5], [0, 10, 10], [0, "x"]):
        with pytest.raises(InputError, match="increasing numbers"):
            Domain.from_dict({"columns": {"age": {"type": "numeric", "bins": bad}}})
    with pytest.raises(InputError, match="differs from the bin edge"):
        Domain.from_dict({"columns": {"age": {"type": "numeric", "max": 90, "bins": [0, 100]}}})


@pytest.mark.parametrize("column, values, shown", [
    ("sex", ["M", "X"], "'X'"),
    ("age", ["3", "101"], "'101'"),
    ("edu", ["1", "4"], "'4'"),
    ("edu", ["1", "1.5"], "'1.5'"),
    ("age", ["3", "old"], "'old'"),
])
def test_out_of_domain_value_names_column_row_and_value(column, values, shown):
    data = {"sex": ["M", "F"], "age": ["1", "2"], "edu": ["0", "1"], column: values}
    with pytest.raises(InputError, match=f"column '{column}', data row 2: value {shown}"):
        Domain.from_dict(RICH).encode(data)


def test_domain_and_data_must_agree():
    domain = Domain.from_dict({"a": 2, "b": 2})
    with pytest.raises(InputError, match=r"lacks the domain's columns \['b'\]"):
        domain.encode({"a": [0]})
    with pytest.raises(InputError, match=r"has columns \['c'\]"):
        domain.encode({"a": [0], "b": [1], "c": [0]})
    with pytest.raises(InputError, match="no rows"):
        domain.encode({"a": [], "b": []})


@pytest.mark.parametrize("spec", [
    {}, [], {"a": 0}, {"a": "3"},
    {"columns": {"a": {"type": "text"}}},
    {"columns": {"a": {"type": "numeric", "min": 5, "max": 5}}},
    {"columns": {"a": {"type": "categorical", "categories": ["x", "x"]}}},
])
def test_bad_domain_specs_are_input_errors(spec):
    with pytest.raises(InputError):
        Domain.from_dict(spec)
