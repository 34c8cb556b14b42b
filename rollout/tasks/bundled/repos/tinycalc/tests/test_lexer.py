import pytest

from tinycalc import LexError, tokenize


def test_integers_and_ops():
    assert tokenize("1 + 23") == [("num", 1), ("op", "+"), ("num", 23)]


def test_float():
    assert tokenize("3.25") == [("num", 3.25)]


def test_leading_dot_float():
    assert tokenize(".5") == [("num", 0.5)]


def test_names_with_underscores_and_digits():
    assert tokenize("rate_2") == [("name", "rate_2")]


def test_floor_division_is_one_token():
    assert tokenize("7//2") == [("num", 7), ("op", "//"), ("num", 2)]


def test_parens_and_commas():
    kinds = [k for k, _ in tokenize("max(1, 2)")]
    assert kinds == ["name", "lparen", "num", "comma", "num", "rparen"]


def test_whitespace_ignored():
    assert tokenize("  \t2\n") == [("num", 2)]


def test_bad_character():
    with pytest.raises(LexError):
        tokenize("2 $ 3")
