"""Splitting text into words and joining them in different cases."""

SMALL_WORDS = {"a", "an", "and", "as", "at", "but", "by", "for", "in", "of", "on", "or", "the", "to"}


def words(text):
    """Split on non-alphanumerics and on lower-to-upper camelCase boundaries."""
    out = []
    current = ""
    prev = ""
    for ch in text:
        if not ch.isalnum():
            if current:
                out.append(current)
            current = ""
        elif ch.isupper() and prev.islower():
            if current:
                out.append(current)
            current = ch
        else:
            current += ch
        prev = ch
    if current:
        out.append(current)
    return out


def snake_case(text):
    return "_".join(w.lower() for w in words(text))


def kebab_case(text):
    return "-".join(w.lower() for w in words(text))


def camel_case(text):
    parts = words(text)
    if not parts:
        return ""
    first = parts[0].lower()
    rest = [w[:1].upper() + w[1:].lower() for w in parts[1:]]
    return first + "".join(rest)


def title_case(text):
    """Capitalize words, keeping small words lower-case unless first or last."""
    parts = text.split()
    result = []
    for i, word in enumerate(parts):
        lower = word.lower()
        if 0 < i < len(parts) - 1 and lower in SMALL_WORDS:
            result.append(lower)
        else:
            result.append(lower[:1].upper() + lower[1:])
    return " ".join(result)


def slugify(text, sep="-", max_length=None):
    """Lower-case ASCII slug; runs of other characters become one separator."""
    chars = []
    pending = False
    for ch in text.lower():
        if ch.isascii() and ch.isalnum():
            if pending and chars:
                chars.append(sep)
            chars.append(ch)
            pending = False
        else:
            pending = True
    slug = "".join(chars)
    if max_length is not None and len(slug) > max_length:
        slug = slug[:max_length].rstrip(sep)
    return slug
