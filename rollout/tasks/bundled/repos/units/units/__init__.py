"""Physical quantities with units: conversion, arithmetic, parsing and formatting."""

from .quantity import Quantity, humanize, parse
from .registry import DimensionError, Unit, UnknownUnit, convert, lookup, units_of

__all__ = ["DimensionError", "Quantity", "Unit", "UnknownUnit", "convert", "humanize",
           "lookup", "parse", "units_of"]
