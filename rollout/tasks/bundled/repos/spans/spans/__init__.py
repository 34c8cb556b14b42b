"""Half-open numeric intervals and proleptic Gregorian calendar arithmetic."""

from spans.dates import add_days, day_of_year, days_between, days_in_month, is_leap, weekday
from spans.interval import Interval, gaps, merge, total_length

__all__ = ["Interval", "add_days", "day_of_year", "days_between", "days_in_month", "gaps",
           "is_leap", "merge", "total_length", "weekday"]
