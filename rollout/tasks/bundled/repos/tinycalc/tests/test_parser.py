import pytest

from tinycalc import ParseError, parse


def test_precedence():
    assert parse("1 + 2 * 3") == ("bin", "+", ("num", 1), ("bin", "*", ("num", 2), ("num", 3)))


def test_left_associative_minus():
    assert parse("8 - 3 - 1") == ("bin", "-", ("bin", "-", ("num", 8), ("num", 3)), ("num", 1))


def test_right_associative_power():
    assert parse("2 ^ 3 ^ 2") == ("bin", "^", ("num", 2), ("bin", "^", ("num", 3), ("num", 2)))


def test_parentheses():
    assert parse("(1 + 2) * 3") == ("bin", "*", ("bin", "+", ("num", 1), ("num", 2)), ("num", 3))


def test_unary_minus():
    assert parse("-x") == ("neg", ("var", "x"))


def test_call_with_args():
    assert parse("max(1, y)") == ("call", "max", [("num", 1), ("var", "y")])


def test_call_without_args():
    assert parse("f()") == ("call", "f", [])


def test_trailing_garbage():
    with pytest.raises(ParseError):
        parse("1 2")


def test_unclosed_paren():
    with pytest.raises(ParseError):
        parse("(1 + 2")


def test_dangling_operator():
    with pytest.raises(ParseError):
        parse("1 +")
