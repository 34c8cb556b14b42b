import pytest

from versions import InvalidVersion, Version, parse


def test_parse_core_version():
    v = parse("1.2.3")
    assert (v.major, v.minor, v.patch) == (1, 2, 3)
    assert v.pre == () and v.build == ()


def test_parse_accepts_a_v_prefix_and_whitespace():
    assert parse(" v2.0.10 ") == Version(2, 0, 10)


def test_parse_prerelease_and_build():
    v = parse("1.0.0-alpha.1+build.5")
    assert v.pre == ("alpha", "1")
    assert v.build == ("build", "5")
    assert v.is_prerelease


@pytest.mark.parametrize("text", [
    pytest.param("1.2", id="two-parts"),
    pytest.param("1.2.3.4", id="four-parts"),
    pytest.param("01.2.3", id="leading-zero"),
    pytest.param("1.2.3-", id="empty-prerelease"),
    pytest.param("1.2.3-01", id="zero-padded-prerelease"),
    pytest.param("a.b.c", id="letters"),
    pytest.param("", id="empty"),
])
def test_parse_rejects_invalid_versions(text):
    with pytest.raises(InvalidVersion):
        parse(text)


def test_negative_parts_are_rejected():
    with pytest.raises(InvalidVersion, match="minor"):
        Version(1, -1, 0)


def test_str_round_trips():
    for text in ["0.0.1", "1.2.3-rc.1", "1.2.3+sha.abc", "10.20.30-beta.2+exp.1"]:
        assert str(parse(text)) == text


def test_ordering_of_core_versions():
    assert parse("1.0.0") < parse("2.0.0") < parse("2.1.0") < parse("2.1.1")
    assert parse("1.10.0") > parse("1.9.0")


def test_prerelease_sorts_before_its_release():
    assert parse("1.0.0-rc.1") < parse("1.0.0")
    assert parse("1.0.0") > parse("1.0.0-alpha")


def test_semver_prerelease_precedence_chain():
    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
             "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"]
    versions = [parse(t) for t in chain]
    assert sorted(reversed(versions)) == versions


def test_build_metadata_is_ignored_in_comparisons():
    assert parse("1.2.3+a") == parse("1.2.3+b")
    assert len({parse("1.2.3+a"), parse("1.2.3")}) == 1


def test_release_drops_prerelease_and_build():
    assert parse("3.1.4-rc.2+b7").release == Version(3, 1, 4)


@pytest.mark.parametrize("start, part, expected", [
    ("1.2.3", "major", "2.0.0"),
    ("1.2.3", "minor", "1.3.0"),
    ("1.2.3", "patch", "1.2.4"),
    ("1.2.3-rc.1", "patch", "1.2.3"),
    ("2.0.0-rc.1", "major", "2.0.0"),
    ("1.3.0-beta", "minor", "1.3.0"),
    ("1.3.1-beta", "minor", "1.4.0"),
])
def test_bump(start, part, expected):
    assert str(parse(start).bump(part)) == expected


def test_bump_pre_counts_up():
    assert str(parse("1.2.3").bump("pre")) == "1.2.4-rc.1"
    assert str(parse("1.2.4-rc.1").bump("pre")) == "1.2.4-rc.2"
    assert str(parse("1.2.4-rc.9+b1").bump("pre")) == "1.2.4-rc.10"
    assert str(parse("1.2.4-beta").bump("pre")) == "1.2.4-beta.1"
    assert str(parse("0.1.0").bump("pre", label="dev")) == "0.1.1-dev.1"


def test_bump_rejects_unknown_parts():
    with pytest.raises(ValueError, match="unknown part 'build'"):
        parse("1.0.0").bump("build")
