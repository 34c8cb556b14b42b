import unittest

from units import DimensionError, Quantity, UnknownUnit, humanize, parse


class TestParse(unittest.TestCase):
    def test_valid(self):
        for text, value, unit in [("3.5 km", 3.5, "km"), ("-40degC", -40.0, "degC"),
                                  ("  2 hours ", 2.0, "h"), (".5 mi", 0.5, "mi"),
                                  ("1e3 g", 1000.0, "g"), ("+7 Feet", 7.0, "ft")]:
            with self.subTest(text=text):
                q = parse(text)
                self.assertEqual((q.value, q.unit), (value, unit))

    def test_invalid(self):
        for text in ["", "km", "3..5 m", "3 m m", "12"]:
            with self.subTest(text=text):
                with self.assertRaises(ValueError):
                    parse(text)

    def test_unknown_unit(self):
        with self.assertRaises(UnknownUnit):
            parse("3 parsecs")


class TestArithmetic(unittest.TestCase):
    def test_add_converts_to_the_left_unit(self):
        for a, b, expected in [("1 km", "500 m", 1.5), ("2 ft", "6 in", 2.5),
                               ("1 h", "30 min", 1.5), ("1 kg", "250 g", 1.25)]:
            with self.subTest(a=a, b=b):
                total = parse(a) + parse(b)
                self.assertEqual(total.unit, parse(a).unit)
                self.assertAlmostEqual(total.value, expected)

    def test_subtract_and_scale(self):
        for q, expected in [(parse("1 km") - parse("250 m"), 0.75),
                            (parse("3 m") * 2, 6.0), (0.5 * parse("3 m"), 1.5)]:
            with self.subTest(q=str(q)):
                self.assertAlmostEqual(q.value, expected)

    def test_adding_other_dimensions_fails(self):
        with self.assertRaises(DimensionError):
            parse("1 m") + parse("1 s")

    def test_adding_affine_temperatures_fails(self):
        for a, b in [("20 degC", "5 degC"), ("1 K", "2 degF")]:
            with self.subTest(a=a, b=b):
                with self.assertRaises(DimensionError):
                    parse(a) + parse(b)
        self.assertEqual((parse("1 K") + parse("2 K")).value, 3.0)

    def test_comparisons(self):
        for small, big in [("999 m", "1 km"), ("11 in", "1 ft"), ("59 s", "1 min"),
                           ("-1 degC", "273 K")]:
            with self.subTest(small=small, big=big):
                self.assertTrue(parse(small) < parse(big))
                self.assertFalse(parse(big) < parse(small))

    def test_isclose(self):
        self.assertTrue(parse("1 mi").isclose(parse("1.609344 km")))
        self.assertFalse(parse("1 mi").isclose(parse("1.6 km")))
        with self.assertRaises(DimensionError):
            parse("1 mi").isclose(parse("1 h"))


class TestFormatting(unittest.TestCase):
    def test_format(self):
        for q, digits, text in [(Quantity(2.5, "km"), 2, "2.5 km"), (Quantity(3.0, "m"), 2, "3 m"),
                                (Quantity(1 / 3, "h"), 3, "0.333 h"),
                                (Quantity(10, "s"), 0, "10 s"), (Quantity(-0.125, "kg"), 2, "-0.12 kg")]:
            with self.subTest(text=text):
                self.assertEqual(q.format(digits), text)

    def test_humanize_metric(self):
        for text, expected in [("1500 m", "1.5 km"), ("0.25 m", "25 cm"), ("0.004 m", "4 mm"),
                               ("0.0001 m", "0.1 mm"), ("5400 s", "1.5 h"), ("2500 g", "2.5 kg")]:
            with self.subTest(text=text):
                self.assertEqual(str(humanize(parse(text))), expected)

    def test_humanize_imperial(self):
        for text, expected in [("36 in", "3 ft"), ("2 km", "1.24 mi"), ("20 oz", "1.25 lb")]:
            with self.subTest(text=text):
                self.assertEqual(str(humanize(parse(text), "imperial")), expected)

    def test_humanize_leaves_other_dimensions_alone(self):
        self.assertEqual(humanize(parse("300 K")), parse("300 K"))


if __name__ == "__main__":
    unittest.main()
