import unittest

from units import DimensionError, UnknownUnit, convert, lookup, units_of


class TestLength(unittest.TestCase):
    CASES = [
        (1, "km", "m", 1000.0),
        (250, "cm", "m", 2.5),
        (12, "in", "ft", 1.0),
        (1, "mi", "km", 1.609344),
        (3, "ft", "in", 36.0),
        (5, "mm", "cm", 0.5),
        (0, "km", "mi", 0.0),
    ]

    def test_table(self):
        for value, src, dst, expected in self.CASES:
            with self.subTest(value=value, src=src, dst=dst):
                self.assertAlmostEqual(convert(value, src, dst), expected, places=9)

    def test_round_trip(self):
        for src in ("mm", "cm", "m", "km", "in", "ft", "mi"):
            for dst in ("m", "ft"):
                with self.subTest(src=src, dst=dst):
                    self.assertAlmostEqual(convert(convert(7.25, src, dst), dst, src), 7.25)


class TestMassAndTime(unittest.TestCase):
    def test_mass(self):
        for value, src, dst, expected in [(1, "lb", "kg", 0.45359237), (16, "oz", "lb", 1.0),
                                          (2500, "g", "kg", 2.5), (1, "kg", "g", 1000.0)]:
            with self.subTest(src=src, dst=dst):
                self.assertAlmostEqual(convert(value, src, dst), expected, places=9)

    def test_time(self):
        for value, src, dst, expected in [(90, "min", "h", 1.5), (1, "d", "s", 86400.0),
                                          (7200, "s", "h", 2.0), (3, "h", "min", 180.0)]:
            with self.subTest(src=src, dst=dst):
                self.assertAlmostEqual(convert(value, src, dst), expected, places=9)


class TestTemperature(unittest.TestCase):
    CASES = [
        (0, "degC", "K", 273.15),
        (100, "degC", "degF", 212.0),
        (32, "degF", "degC", 0.0),
        (-40, "degF", "degC", -40.0),
        (0, "K", "degF", -459.67),
        (300, "K", "degC", 26.85),
        (37, "degC", "degC", 37.0),
    ]

    def test_table(self):
        for value, src, dst, expected in self.CASES:
            with self.subTest(value=value, src=src, dst=dst):
                self.assertAlmostEqual(convert(value, src, dst), expected, places=6)

    def test_affine_units(self):
        for symbol, affine in [("K", False), ("degC", True), ("degF", True)]:
            with self.subTest(symbol=symbol):
                self.assertIs(lookup(symbol).is_affine, affine)


class TestRegistry(unittest.TestCase):
    def test_aliases_and_plurals(self):
        for name, symbol in [("meter", "m"), ("Metres", "m"), ("feet", "ft"), ("foot", "ft"),
                             ("hours", "h"), ("Celsius", "degC"), ("kilograms", "kg")]:
            with self.subTest(name=name):
                self.assertEqual(lookup(name).symbol, symbol)

    def test_symbols_are_case_sensitive(self):
        for name in ("M", "KM", "S", "k"):
            with self.subTest(name=name):
                with self.assertRaises(UnknownUnit):
                    lookup(name)

    def test_unknown_unit_message(self):
        with self.assertRaises(UnknownUnit) as ctx:
            convert(1, "furlong", "m")
        self.assertEqual(str(ctx.exception), "unknown unit 'furlong'")

    def test_dimension_mismatch(self):
        for src, dst in [("m", "s"), ("kg", "K"), ("h", "ft")]:
            with self.subTest(src=src, dst=dst):
                with self.assertRaises(DimensionError):
                    convert(1, src, dst)

    def test_units_of_is_sorted_smallest_first(self):
        self.assertEqual([u.symbol for u in units_of("time")], ["s", "min", "h", "d"])
        self.assertEqual([u.symbol for u in units_of("length")][:3], ["mm", "cm", "in"])
        self.assertEqual(units_of("luminosity"), [])


if __name__ == "__main__":
    unittest.main()
