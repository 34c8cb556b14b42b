"""Quantities: a number with a unit."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .registry import DimensionError, convert, lookup, units_of

_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]+)\s*$")
# Units humanize() may pick, per dimension and system.
_SYSTEMS = {
    "metric": {"length": ("mm", "cm", "m", "km"), "mass": ("g", "kg"),
               "time": ("s", "min", "h", "d")},
    "imperial": {"length": ("in", "ft", "mi"), "mass": ("oz", "lb"),
                 "time": ("s", "min", "h", "d")},
}


@dataclass(frozen=True)
class Quantity:
    value: float
    unit: str

    def __post_init__(self) -> None:
        lookup(self.unit)  # fail early on an unknown unit

    @property
    def dimension(self) -> str:
        return lookup(self.unit).dimension

    def to(self, unit: str) -> Quantity:
        return Quantity(convert(self.value, self.unit, unit), unit)

    def _same_dimension(self, other: Quantity, what: str) -> None:
        if self.dimension != other.dimension:
            raise DimensionError(f"cannot {what} {self.dimension} and {other.dimension}")

    def __add__(self, other: object) -> Quantity:
        if not isinstance(other, Quantity):
            return NotImplemented
        self._same_dimension(other, "add")
        if lookup(self.unit).is_affine or lookup(other.unit).is_affine:
            raise DimensionError(f"adding {self.unit} and {other.unit} is ambiguous; "
                                 f"convert to an absolute unit first")
        return Quantity(self.value + other.to(self.unit).value, self.unit)

    def __sub__(self, other: object) -> Quantity:
        if not isinstance(other, Quantity):
            return NotImplemented
        return self + Quantity(-other.value, other.unit)

    def __mul__(self, factor: float) -> Quantity:
        if not isinstance(factor, (int, float)):
            return NotImplemented
        return Quantity(self.value * factor, self.unit)

    __rmul__ = __mul__

    def isclose(self, other: Quantity, rel_tol: float = 1e-9, abs_tol: float = 1e-12) -> bool:
        self._same_dimension(other, "compare")
        return math.isclose(self.value, other.to(self.unit).value,
                            rel_tol=rel_tol, abs_tol=abs_tol)

    def __lt__(self, other: Quantity) -> bool:
        self._same_dimension(other, "compare")
        return self.value < other.to(self.unit).value

    def format(self, digits: int = 2) -> str:
        text = f"{self.value:.{digits}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return f"{text} {self.unit}"

    def __str__(self) -> str:
        return self.format()


def parse(text: str) -> Quantity:
    """`"3.5 km"`, `"-40degC"`, `"2 hours"` -> Quantity (long unit names become symbols)."""
    m = _QUANTITY.match(text)
    if m is None:
        raise ValueError(f"not a quantity: {text!r}")
    return Quantity(float(m.group(1)), lookup(m.group(2)).symbol)


def humanize(q: Quantity, system: str = "metric") -> Quantity:
    """`q` in the largest unit of `system` in which its magnitude is at least 1."""
    choices = _SYSTEMS[system].get(q.dimension)
    if not choices:
        return q
    allowed = [u for u in units_of(q.dimension) if u.symbol in choices]
    best = allowed[0]
    for unit in allowed:
        if abs(q.to(unit.symbol).value) >= 1:
            best = unit
    return q.to(best.symbol)
