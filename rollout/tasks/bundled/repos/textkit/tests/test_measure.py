import pytest

from textkit import caesar, center, char_histogram, common_prefix, is_palindrome, truncate
from textkit import word_count, wrap


def test_word_count():
    assert word_count("  one two\tthree\nfour ") == 4


def test_word_count_empty():
    assert word_count("") == 0


def test_char_histogram_ignores_case():
    assert char_histogram("AaB!") == {"a": 2, "b": 1}


def test_char_histogram_case_sensitive():
    assert char_histogram("AaB", ignore_case=False) == {"A": 1, "a": 1, "B": 1}


def test_palindrome_sentence():
    assert is_palindrome("A man, a plan, a canal: Panama")


def test_not_palindrome():
    assert not is_palindrome("palindrome")


def test_palindrome_even_length():
    assert is_palindrome("abba")


def test_palindrome_near_miss():
    assert not is_palindrome("abca")


def test_palindrome_empty():
    assert is_palindrome("")


def test_truncate_short_text_unchanged():
    assert truncate("hello", 10) == "hello"


def test_truncate_exact_width_unchanged():
    assert truncate("hello", 5) == "hello"


def test_truncate_adds_ellipsis():
    assert truncate("hello world", 8) == "hello..."


def test_truncate_tiny_width():
    assert truncate("hello world", 2) == ".."


def test_truncate_negative_width():
    with pytest.raises(ValueError):
        truncate("x", -1)


def test_wrap_greedy():
    assert wrap("the quick brown fox jumps", 10) == ["the quick", "brown fox", "jumps"]


def test_wrap_exact_fit():
    assert wrap("ab cd", 5) == ["ab cd"]


def test_wrap_long_word():
    assert wrap("a extraordinarily b", 5) == ["a", "extraordinarily", "b"]


def test_wrap_empty():
    assert wrap("   ", 4) == []


def test_wrap_rejects_zero_width():
    with pytest.raises(ValueError):
        wrap("x", 0)


def test_center_even():
    assert center("ab", 6) == "  ab  "


def test_center_odd_extra_goes_right():
    assert center("ab", 5, "*") == "*ab**"


def test_center_too_wide():
    assert center("abcdef", 3) == "abcdef"


def test_center_bad_fill():
    with pytest.raises(ValueError):
        center("a", 3, "--")


def test_caesar_shift():
    assert caesar("abc xyz", 3) == "def abc"


def test_caesar_preserves_case_and_punctuation():
    assert caesar("Hello, World!", 1) == "Ifmmp, Xpsme!"


def test_caesar_negative_shift_roundtrip():
    assert caesar(caesar("Round Trip", 5), -5) == "Round Trip"


def test_common_prefix():
    assert common_prefix(["interval", "internet", "interior"]) == "inter"


def test_common_prefix_none():
    assert common_prefix(["abc", "xyz"]) == ""


def test_common_prefix_empty_list():
    assert common_prefix([]) == ""


def test_common_prefix_one_is_prefix_of_other():
    assert common_prefix(["ab", "abc"]) == "ab"
