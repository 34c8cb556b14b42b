import pytest

from tinycalc import CalcError, evaluate


def test_addition():
    assert evaluate("1 + 2") == 3


def test_precedence():
    assert evaluate("2 + 3 * 4") == 14


def test_subtraction_chain():
    assert evaluate("10 - 4 - 3") == 3


def test_division():
    assert evaluate("7 / 2") == 3.5


def test_floor_division():
    assert evaluate("7 // 2") == 3


def test_modulo():
    assert evaluate("17 % 5") == 2


def test_power_right_assoc():
    assert evaluate("2 ^ 3 ^ 2") == 512


def test_unary_minus_binds_tighter_than_times():
    assert evaluate("-2 * 3") == -6


def test_unary_minus_looser_than_power():
    assert evaluate("-2 ^ 2") == -4


def test_unary_plus():
    assert evaluate("+5 - 1") == 4


def test_variables():
    assert evaluate("x * y + 1", {"x": 3, "y": 4}) == 13


def test_undefined_variable():
    with pytest.raises(CalcError):
        evaluate("x + 1")


def test_division_by_zero():
    with pytest.raises(CalcError):
        evaluate("1 / 0")


def test_modulo_by_zero():
    with pytest.raises(CalcError):
        evaluate("1 % 0")


def test_abs():
    assert evaluate("abs(3 - 10)") == 7


def test_min_max():
    assert evaluate("max(1, 5, 3) - min(4, 2)") == 3


def test_clamp():
    assert evaluate("clamp(15, 0, 10)") == 10
    assert evaluate("clamp(-3, 0, 10)") == 0
    assert evaluate("clamp(4, 0, 10)") == 4


def test_clamp_bad_bounds():
    with pytest.raises(CalcError):
        evaluate("clamp(1, 5, 0)")


def test_wrong_arity():
    with pytest.raises(CalcError):
        evaluate("abs(1, 2)")


def test_max_needs_arguments():
    with pytest.raises(CalcError):
        evaluate("max()")


def test_unknown_function():
    with pytest.raises(CalcError):
        evaluate("sqrt(4)")


def test_nested_calls():
    assert evaluate("max(abs(-3), min(10, 2 ^ 3))") == 8


def test_float_arithmetic():
    assert evaluate("0.5 + .25") == 0.75
