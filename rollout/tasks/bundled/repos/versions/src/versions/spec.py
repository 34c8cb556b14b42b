"""Version specifiers (`>=1.2.0`, `!=1.3.0`, `^1.2.3`, `~1.2.3`) and comma-joined sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .version import InvalidVersion, Version

# Two-character operators first, so that ">=" is not read as ">".
OPERATORS = ("==", "!=", ">=", "<=", ">", "<", "^", "~")


class InvalidSpecifier(ValueError):
    """A string that is not a version specifier."""


def _as_version(v: Version | str) -> Version:
    return v if isinstance(v, Version) else Version.parse(v)


@dataclass(frozen=True)
class Specifier:
    op: str
    version: Version

    @classmethod
    def parse(cls, text: str) -> Specifier:
        text = text.strip()
        for op in OPERATORS:
            if text.startswith(op):
                rest = text[len(op):].strip()
                break
        else:
            op, rest = "==", text
        try:
            return cls(op, Version.parse(rest))
        except InvalidVersion as e:
            raise InvalidSpecifier(f"bad specifier {text!r}: {e}") from None

    def bounds(self) -> tuple[Version, Version]:
        """The half-open range [low, high) that `^` or `~` allows."""
        v = self.version
        if self.op == "^":  # no change to the left-most non-zero part
            if v.major > 0:
                return v, Version(v.major + 1)
            if v.minor > 0:
                return v, Version(0, v.minor + 1)
            return v, Version(0, 0, v.patch + 1)
        if self.op == "~":  # patch-level changes only
            return v, Version(v.major, v.minor + 1)
        raise ValueError(f"{self.op!r} has no range")

    def contains(self, version: Version | str, *, prereleases: bool = False) -> bool:
        version = _as_version(version)
        if version.is_prerelease and not (prereleases or self.version.is_prerelease):
            return False
        op, v = self.op, self.version
        if op == "==":
            return version == v
        if op == "!=":
            return version != v
        if op == ">=":
            return version >= v
        if op == "<=":
            return version <= v
        if op == ">":
            return version > v
        if op == "<":
            return version < v
        low, high = self.bounds()
        return low <= version < high

    def __str__(self) -> str:
        return f"{self.op}{self.version}"


class SpecifierSet:
    """All of several specifiers, e.g. `>=1.2.0, <2.0.0, !=1.5.1`."""

    def __init__(self, text: str = "") -> None:
        self.specifiers = tuple(Specifier.parse(p) for p in text.split(",") if p.strip())

    def contains(self, version: Version | str, *, prereleases: bool = False) -> bool:
        version = _as_version(version)
        if version.is_prerelease and not prereleases:
            # Even an empty set admits a pre-release only when one of its specifiers names one.
            prereleases = any(s.version.is_prerelease for s in self.specifiers)
            if not prereleases:
                return False
        return all(s.contains(version, prereleases=prereleases) for s in self.specifiers)

    def __contains__(self, version: Version | str) -> bool:
        return self.contains(version)

    def filter(self, versions: Iterable[Version | str], *, prereleases: bool = False) -> list:
        """The given versions that match, in their order and form (strings stay strings)."""
        return [v for v in versions if self.contains(v, prereleases=prereleases)]

    def best(self, versions: Iterable[Version | str], *,
             prereleases: bool = False) -> Version | None:
        """The highest matching version, or None."""
        matching = [_as_version(v) for v in self.filter(versions, prereleases=prereleases)]
        return max(matching) if matching else None

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.specifiers)
