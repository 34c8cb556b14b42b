"""Small text utilities: case conversion, slugs, wrapping and measuring."""

from textkit.case import camel_case, kebab_case, slugify, snake_case, title_case, words
from textkit.measure import (
    caesar,
    center,
    char_histogram,
    common_prefix,
    is_palindrome,
    truncate,
    word_count,
    wrap,
)

__all__ = [
    "caesar", "camel_case", "center", "char_histogram", "common_prefix", "is_palindrome",
    "kebab_case", "slugify", "snake_case", "title_case", "truncate", "word_count", "words", "wrap",
]
