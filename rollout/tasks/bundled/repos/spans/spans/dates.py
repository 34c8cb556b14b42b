"""Calendar arithmetic on (year, month, day) tuples, without the datetime module."""

_MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def is_leap(year):
    if year % 400 == 0:
        return True
    if year % 100 == 0:
        return False
    return year % 4 == 0


def days_in_month(year, month):
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1..12, got {month}")
    if month == 2 and is_leap(year):
        return 29
    return _MONTH_DAYS[month - 1]


def _check(year, month, day):
    if not 1 <= day <= days_in_month(year, month):
        raise ValueError(f"invalid date {year}-{month}-{day}")


def day_of_year(year, month, day):
    _check(year, month, day)
    total = day
    for m in range(1, month):
        total += days_in_month(year, m)
    return total


def add_days(date, n):
    """The date `n` days after `date` (n may be negative)."""
    year, month, day = date
    _check(year, month, day)
    day += n
    while day > days_in_month(year, month):
        day -= days_in_month(year, month)
        month += 1
        if month > 12:
            month = 1
            year += 1
    while day < 1:
        month -= 1
        if month < 1:
            month = 12
            year -= 1
        day += days_in_month(year, month)
    return (year, month, day)


def _ordinal(year, month, day):
    y = year - 1
    return y * 365 + y // 4 - y // 100 + y // 400 + day_of_year(year, month, day)


def days_between(a, b):
    """Signed number of days from date a to date b."""
    return _ordinal(*b) - _ordinal(*a)


def weekday(year, month, day):
    """Monday is 0 and Sunday is 6, like datetime.date.weekday()."""
    return (_ordinal(year, month, day) + 6) % 7
