"""The unit registry: every unit is an affine map to its dimension's base unit."""

from __future__ import annotations

from dataclasses import dataclass


class UnknownUnit(KeyError):
    """A unit symbol or name that is not defined."""

    def __str__(self) -> str:
        return f"unknown unit {self.args[0]!r}"


class DimensionError(ValueError):
    """An operation on quantities of different dimensions (metres plus seconds, say)."""


@dataclass(frozen=True)
class Unit:
    symbol: str
    dimension: str
    factor: float  # base = value * factor + offset
    offset: float = 0.0

    def to_base(self, value: float) -> float:
        return value * self.factor + self.offset

    def from_base(self, value: float) -> float:
        return (value - self.offset) / self.factor

    @property
    def is_affine(self) -> bool:
        """True for units with a shifted zero (degrees Celsius, Fahrenheit)."""
        return self.offset != 0.0


_UNITS: dict[str, Unit] = {}
_BY_DIMENSION: dict[str, list[Unit]] = {}


def define(symbol: str, dimension: str, factor: float, offset: float = 0.0,
           aliases: tuple[str, ...] = ()) -> Unit:
    if factor <= 0:
        raise ValueError(f"factor of {symbol!r} must be positive")
    unit = Unit(symbol, dimension, factor, offset)
    for name in (symbol, *aliases):
        if name in _UNITS:
            raise ValueError(f"unit {name!r} is already defined")
        _UNITS[name] = unit
    _BY_DIMENSION.setdefault(dimension, []).append(unit)
    return unit


def lookup(name: str) -> Unit:
    """A unit by symbol or alias; aliases (long names) also match in any case or plural."""
    unit = _UNITS.get(name)
    if unit is not None:
        return unit
    lowered = name.lower()
    for candidate in (lowered, lowered[:-1] if lowered.endswith("s") else lowered):
        unit = _UNITS.get(candidate)
        if unit is not None and candidate != unit.symbol:
            return unit
    raise UnknownUnit(name)


def units_of(dimension: str) -> list[Unit]:
    """The units of a dimension, smallest first."""
    return sorted(_BY_DIMENSION.get(dimension, []), key=lambda u: u.factor)


def convert(value: float, src: str, dst: str) -> float:
    a, b = lookup(src), lookup(dst)
    if a.dimension != b.dimension:
        raise DimensionError(f"cannot convert {a.dimension} ({src}) to {b.dimension} ({dst})")
    if a is b:
        return value
    return b.from_base(a.to_base(value))


define("mm", "length", 0.001, aliases=("millimeter", "millimetre"))
define("cm", "length", 0.01, aliases=("centimeter", "centimetre"))
define("m", "length", 1.0, aliases=("meter", "metre"))
define("km", "length", 1000.0, aliases=("kilometer", "kilometre"))
define("in", "length", 0.0254, aliases=("inch",))
define("ft", "length", 0.3048, aliases=("foot", "feet"))
define("mi", "length", 1609.344, aliases=("mile",))
define("g", "mass", 0.001, aliases=("gram",))
define("kg", "mass", 1.0, aliases=("kilogram",))
define("lb", "mass", 0.45359237, aliases=("pound",))
define("oz", "mass", 0.028349523125, aliases=("ounce",))
define("s", "time", 1.0, aliases=("second", "sec"))
define("min", "time", 60.0, aliases=("minute",))
define("h", "time", 3600.0, aliases=("hour",))
define("d", "time", 86400.0, aliases=("day",))
define("K", "temperature", 1.0, aliases=("kelvin",))
define("degC", "temperature", 1.0, 273.15, aliases=("celsius",))
define("degF", "temperature", 5 / 9, 273.15 - 32 * 5 / 9, aliases=("fahrenheit",))
