"""Semantic version numbers: parse, compare, bump, and match against specifiers."""

from .spec import InvalidSpecifier, Specifier, SpecifierSet
from .version import InvalidVersion, Version, parse

__all__ = ["InvalidSpecifier", "InvalidVersion", "Specifier", "SpecifierSet", "Version", "parse"]
