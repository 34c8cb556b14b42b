import pytest

from versions import InvalidSpecifier, Specifier, SpecifierSet, Version, parse


def test_parse_operators():
    assert Specifier.parse(">=1.2.0") == Specifier(">=", Version(1, 2, 0))
    assert Specifier.parse("<= 2.0.0").op == "<="
    assert Specifier.parse("1.0.0").op == "=="
    assert Specifier.parse("^0.3.1").op == "^"


def test_parse_rejects_bad_versions():
    with pytest.raises(InvalidSpecifier, match="bad specifier '>=1.2'"):
        Specifier.parse(">=1.2")


@pytest.mark.parametrize("spec, version, expected", [
    pytest.param("==1.2.3", "1.2.3", True, id="eq-same"),
    pytest.param("==1.2.3", "1.2.4", False, id="eq-other"),
    pytest.param("!=1.2.3", "1.2.4", True, id="ne-other"),
    pytest.param("!=1.2.3", "1.2.3", False, id="ne-same"),
    pytest.param(">=1.2.3", "1.2.3", True, id="ge-same"),
    pytest.param(">=1.2.3", "1.2.2", False, id="ge-lower"),
    pytest.param(">1.2.3", "1.2.3", False, id="gt-same"),
    pytest.param("<2.0.0", "1.99.0", True, id="lt-lower"),
    pytest.param("<2.0.0", "2.0.0", False, id="lt-same"),
    pytest.param("<=2.0.0", "2.0.0", True, id="le-same"),
])
def test_comparison_operators(spec, version, expected):
    assert Specifier.parse(spec).contains(version) is expected


def test_caret_ranges():
    assert Specifier.parse("^1.2.3").bounds() == (parse("1.2.3"), parse("2.0.0"))
    assert Specifier.parse("^0.2.3").bounds() == (parse("0.2.3"), parse("0.3.0"))
    assert Specifier.parse("^0.0.3").bounds() == (parse("0.0.3"), parse("0.0.4"))
    assert Specifier.parse("^1.2.3").contains("1.9.0")
    assert not Specifier.parse("^1.2.3").contains("2.0.0")
    assert not Specifier.parse("^0.2.3").contains("0.3.0")


def test_tilde_ranges():
    spec = Specifier.parse("~1.4.2")
    assert spec.contains("1.4.9")
    assert not spec.contains("1.5.0")
    assert not spec.contains("1.4.1")


def test_bounds_only_for_ranges():
    with pytest.raises(ValueError):
        Specifier.parse(">=1.0.0").bounds()


def test_prereleases_are_excluded_unless_asked_for():
    spec = Specifier.parse(">=1.0.0")
    assert not spec.contains("1.1.0-rc.1")
    assert spec.contains("1.1.0-rc.1", prereleases=True)


def test_a_prerelease_specifier_admits_prereleases():
    assert Specifier.parse(">=1.0.0-beta").contains("1.0.0-rc.1")


def test_str_of_a_specifier():
    assert str(Specifier.parse(" >= 1.2.0")) == ">=1.2.0"


def test_set_needs_every_specifier():
    s = SpecifierSet(">=1.2.0, <2.0.0, !=1.5.1")
    assert "1.2.0" in s
    assert "1.9.9" in s
    assert "1.5.1" not in s
    assert "2.0.0" not in s
    assert "1.1.9" not in s


def test_empty_set_matches_every_release():
    assert "0.0.1" in SpecifierSet("")
    assert "0.0.1-dev.1" not in SpecifierSet("")


def test_filter_keeps_order_and_form():
    s = SpecifierSet("^1.0.0")
    assert s.filter(["0.9.0", "1.4.0", "1.0.0", "2.0.0", "1.1.0-rc.1"]) == ["1.4.0", "1.0.0"]
    assert s.filter([Version(1, 2, 0)]) == [Version(1, 2, 0)]


def test_best_picks_the_highest_match():
    versions = ["1.0.0", "1.4.2", "1.10.0", "2.0.0", "1.11.0-rc.1"]
    assert SpecifierSet(">=1.0.0,<2.0.0").best(versions) == parse("1.10.0")
    assert SpecifierSet(">=1.0.0,<2.0.0").best(versions, prereleases=True) == parse("1.11.0-rc.1")
    assert SpecifierSet(">=3.0.0").best(versions) is None


def test_str_of_a_set():
    assert str(SpecifierSet(">=1.0.0 , <2.0.0")) == ">=1.0.0,<2.0.0"
