import pytest

from spans import Interval, gaps, merge, total_length


def test_rejects_reversed():
    with pytest.raises(ValueError):
        Interval(3, 1)


def test_length():
    assert Interval(2, 7).length == 5


def test_empty():
    assert Interval(4, 4).empty
    assert not Interval(4, 5).empty


def test_contains_is_half_open():
    iv = Interval(0, 10)
    assert iv.contains(0)
    assert iv.contains(9.5)
    assert not iv.contains(10)


def test_contains_below_start():
    assert not Interval(0, 10).contains(-1)


def test_overlaps():
    assert Interval(0, 5).overlaps(Interval(4, 8))


def test_touching_does_not_overlap():
    assert not Interval(0, 5).overlaps(Interval(5, 8))


def test_overlap_is_symmetric():
    a, b = Interval(3, 9), Interval(0, 4)
    assert a.overlaps(b) and b.overlaps(a)


def test_intersection():
    assert Interval(0, 5).intersection(Interval(3, 9)) == Interval(3, 5)


def test_intersection_disjoint_is_none():
    assert Interval(0, 2).intersection(Interval(5, 9)) is None


def test_intersection_nested():
    assert Interval(0, 10).intersection(Interval(2, 3)) == Interval(2, 3)


def test_shift():
    assert Interval(1, 4).shift(-2) == Interval(-1, 2)


def test_clamp_inside_and_outside():
    iv = Interval(10, 20)
    assert iv.clamp(15) == 15
    assert iv.clamp(3) == 10
    assert iv.clamp(25) == 20


def test_merge_overlapping():
    assert merge([Interval(5, 8), Interval(1, 3), Interval(2, 6)]) == [Interval(1, 8)]


def test_merge_touching():
    assert merge([Interval(0, 2), Interval(2, 4)]) == [Interval(0, 4)]


def test_merge_keeps_disjoint_sorted():
    assert merge([Interval(7, 9), Interval(0, 1)]) == [Interval(0, 1), Interval(7, 9)]


def test_merge_drops_empty():
    assert merge([Interval(3, 3), Interval(0, 1)]) == [Interval(0, 1)]


def test_merge_contained():
    assert merge([Interval(0, 10), Interval(2, 3)]) == [Interval(0, 10)]


def test_total_length_counts_overlap_once():
    assert total_length([Interval(0, 4), Interval(2, 6), Interval(10, 11)]) == 7


def test_gaps():
    got = gaps([Interval(2, 4), Interval(6, 7)], Interval(0, 10))
    assert got == [Interval(0, 2), Interval(4, 6), Interval(7, 10)]


def test_gaps_fully_covered():
    assert gaps([Interval(-5, 50)], Interval(0, 10)) == []


def test_gaps_nothing_covered():
    assert gaps([], Interval(0, 3)) == [Interval(0, 3)]


def test_gaps_ignores_outside():
    assert gaps([Interval(20, 30)], Interval(0, 3)) == [Interval(0, 3)]
