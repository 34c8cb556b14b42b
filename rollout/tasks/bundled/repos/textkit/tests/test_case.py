from textkit import camel_case, kebab_case, slugify, snake_case, title_case, words


def test_words_splits_on_punctuation():
    assert words("hello, world!") == ["hello", "world"]


def test_words_splits_camel_case():
    assert words("parseHTTPResponse") == ["parse", "HTTPResponse"]


def test_words_empty():
    assert words("") == []


def test_words_keeps_digits():
    assert words("v2 release 10") == ["v2", "release", "10"]


def test_snake_case_from_spaces():
    assert snake_case("Hello World") == "hello_world"


def test_snake_case_from_camel():
    assert snake_case("someValueHere") == "some_value_here"


def test_kebab_case():
    assert kebab_case("Some Value_here") == "some-value-here"


def test_camel_case():
    assert camel_case("hello big world") == "helloBigWorld"


def test_camel_case_lowers_rest():
    assert camel_case("HELLO WORLD") == "helloWorld"


def test_camel_case_empty():
    assert camel_case("  ") == ""


def test_title_case_basic():
    assert title_case("the lord of the rings") == "The Lord of the Rings"


def test_title_case_last_small_word_capitalized():
    assert title_case("what it is for") == "What It Is For"


def test_title_case_single_word():
    assert title_case("of") == "Of"


def test_slugify_basic():
    assert slugify("Hello, World!") == "hello-world"


def test_slugify_collapses_runs():
    assert slugify("a  --  b") == "a-b"


def test_slugify_strips_edges():
    assert slugify("  --Hello--  ") == "hello"


def test_slugify_custom_separator():
    assert slugify("one two three", sep="_") == "one_two_three"


def test_slugify_drops_non_ascii():
    assert slugify("caf\u00e9 cr\u00e8me") == "caf-cr-me"


def test_slugify_max_length_does_not_end_with_separator():
    assert slugify("hello world again", max_length=6) == "hello"


def test_slugify_max_length_exact():
    assert slugify("abc def", max_length=7) == "abc-def"
