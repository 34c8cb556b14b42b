"""Versions of the form MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], ordered as in SemVer 2.0."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import total_ordering

_PATTERN = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
PARTS = ("major", "minor", "patch", "pre")


class InvalidVersion(ValueError):
    """A string that is not a semantic version."""


def _pre_key(pre: tuple[str, ...]) -> tuple:
    """Sort key of a pre-release: a release sorts after all of its pre-releases, numeric
    identifiers compare as numbers and before alphanumeric ones, a longer list wins ties."""
    if not pre:
        return (1,)
    idents = []
    for ident in pre:
        if ident.isdigit():
            idents.append((0, int(ident), ""))
        else:
            idents.append((1, 0, ident))
    return (0, tuple(idents))


@total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    major: int
    minor: int = 0
    patch: int = 0
    pre: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for part in ("major", "minor", "patch"):
            if getattr(self, part) < 0:
                raise InvalidVersion(f"{part} must not be negative")

    @classmethod
    def parse(cls, text: str) -> Version:
        m = _PATTERN.match(text.strip())
        if m is None:
            raise InvalidVersion(f"not a semantic version: {text!r}")
        pre = tuple(m.group("pre").split(".")) if m.group("pre") else ()
        build = tuple(m.group("build").split(".")) if m.group("build") else ()
        for ident in pre:
            if ident.isdigit() and len(ident) > 1 and ident.startswith("0"):
                raise InvalidVersion(f"leading zero in pre-release {ident!r} of {text!r}")
        return cls(int(m.group("major")), int(m.group("minor")), int(m.group("patch")),
                   pre, build)

    @property
    def is_prerelease(self) -> bool:
        return bool(self.pre)

    @property
    def release(self) -> Version:
        """The same version without pre-release and build metadata."""
        return Version(self.major, self.minor, self.patch)

    def _key(self) -> tuple:
        return (self.major, self.minor, self.patch, _pre_key(self.pre))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()  # build metadata never affects precedence

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += "-" + ".".join(self.pre)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def bump(self, part: str, label: str = "rc") -> Version:
        """The next version: `major`, `minor` and `patch` drop pre-release and build
        (finishing a pre-release of that part), `pre` counts the pre-release up."""
        if part == "major":
            if self.pre and self.minor == 0 and self.patch == 0:
                return self.release
            return Version(self.major + 1)
        if part == "minor":
            if self.pre and self.patch == 0:
                return self.release
            return Version(self.major, self.minor + 1)
        if part == "patch":
            if self.pre:
                return self.release
            return Version(self.major, self.minor, self.patch + 1)
        if part == "pre":
            if not self.pre:
                return Version(self.major, self.minor, self.patch + 1, (label, "1"))
            *head, last = self.pre
            if last.isdigit():
                return replace(self, pre=(*head, str(int(last) + 1)), build=())
            return replace(self, pre=(*self.pre, "1"), build=())
        raise ValueError(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")


def parse(text: str) -> Version:
    return Version.parse(text)
