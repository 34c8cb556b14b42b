"""A tiny arithmetic expression language: numbers, variables, + - * / // % ^, calls."""

from tinycalc.evaluator import CalcError, evaluate
from tinycalc.lexer import LexError, tokenize
from tinycalc.parser import ParseError, parse

__all__ = ["CalcError", "LexError", "ParseError", "evaluate", "parse", "tokenize"]
