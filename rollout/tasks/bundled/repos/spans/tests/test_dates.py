import datetime

import pytest

from spans import add_days, day_of_year, days_between, days_in_month, is_leap, weekday


def test_leap_years():
    assert is_leap(2024)
    assert is_leap(2000)


def test_century_not_leap():
    assert not is_leap(1900)


def test_common_year():
    assert not is_leap(2023)


def test_days_in_february():
    assert days_in_month(2024, 2) == 29
    assert days_in_month(2023, 2) == 28


def test_days_in_long_and_short_months():
    assert days_in_month(2023, 1) == 31
    assert days_in_month(2023, 4) == 30
    assert days_in_month(2023, 12) == 31


def test_days_in_month_rejects_bad_month():
    with pytest.raises(ValueError):
        days_in_month(2023, 13)


def test_day_of_year():
    assert day_of_year(2023, 1, 1) == 1
    assert day_of_year(2023, 3, 1) == 60
    assert day_of_year(2024, 12, 31) == 366


def test_day_of_year_rejects_bad_day():
    with pytest.raises(ValueError):
        day_of_year(2023, 2, 29)


def test_add_days_within_month():
    assert add_days((2023, 5, 10), 5) == (2023, 5, 15)


def test_add_days_across_year():
    assert add_days((2023, 12, 30), 3) == (2024, 1, 2)


def test_add_days_leap_february():
    assert add_days((2024, 2, 28), 1) == (2024, 2, 29)


def test_add_days_negative():
    assert add_days((2024, 3, 1), -1) == (2024, 2, 29)


def test_add_days_negative_across_year():
    assert add_days((2024, 1, 1), -1) == (2023, 12, 31)


@pytest.mark.parametrize("n", [0, 1, 59, 365, 1000, -400])
def test_add_days_matches_datetime(n):
    want = datetime.date(2021, 6, 15) + datetime.timedelta(days=n)
    assert add_days((2021, 6, 15), n) == (want.year, want.month, want.day)


def test_days_between():
    assert days_between((2024, 1, 1), (2024, 3, 1)) == 60


def test_days_between_is_signed():
    assert days_between((2024, 3, 1), (2024, 1, 1)) == -60


@pytest.mark.parametrize("date", [(2024, 7, 4), (1999, 12, 31), (2000, 2, 29), (1900, 3, 1)])
def test_weekday_matches_datetime(date):
    assert weekday(*date) == datetime.date(*date).weekday()
