"""Half-open intervals [start, end) and operations on lists of them."""


class Interval:
    def __init__(self, start, end):
        if end < start:
            raise ValueError(f"interval end {end} is before start {start}")
        self.start = start
        self.end = end

    def __repr__(self):
        return f"Interval({self.start!r}, {self.end!r})"

    def __eq__(self, other):
        return isinstance(other, Interval) and (self.start, self.end) == (other.start, other.end)

    def __hash__(self):
        return hash((self.start, self.end))

    @property
    def length(self):
        return self.end - self.start

    @property
    def empty(self):
        return self.start == self.end

    def contains(self, x):
        return self.start <= x < self.end

    def overlaps(self, other):
        return self.start < other.end and other.start < self.end

    def intersection(self, other):
        """The common part, or None when the intervals do not overlap."""
        start = max(self.start, other.start)
        end = min(self.end, other.end)
        if start < end:
            return Interval(start, end)
        return None

    def shift(self, delta):
        return Interval(self.start + delta, self.end + delta)

    def clamp(self, x):
        """The point of the closed hull [start, end] nearest to x."""
        if x < self.start:
            return self.start
        if x > self.end:
            return self.end
        return x


def merge(intervals):
    """Merge overlapping or touching intervals; the result is sorted and disjoint."""
    ordered = sorted(intervals, key=lambda iv: (iv.start, iv.end))
    merged = []
    for iv in ordered:
        if iv.empty:
            continue
        if merged and iv.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = Interval(last.start, max(last.end, iv.end))
        else:
            merged.append(iv)
    return merged


def total_length(intervals):
    return sum(iv.length for iv in merge(intervals))


def gaps(intervals, within):
    """The parts of `within` not covered by any interval."""
    result = []
    cursor = within.start
    for iv in merge(intervals):
        if iv.end <= within.start or iv.start >= within.end:
            continue
        if iv.start > cursor:
            result.append(Interval(cursor, iv.start))
        cursor = max(cursor, iv.end)
    if cursor < within.end:
        result.append(Interval(cursor, within.end))
    return result
