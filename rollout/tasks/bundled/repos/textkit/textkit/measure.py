"""Measuring, trimming and transforming text."""


def word_count(text):
    return len(text.split())


def char_histogram(text, ignore_case=True):
    """Count alphabetic characters."""
    counts = {}
    for ch in text:
        if not ch.isalpha():
            continue
        if ignore_case:
            ch = ch.lower()
        counts[ch] = counts.get(ch, 0) + 1
    return counts


def is_palindrome(text):
    cleaned = [ch.lower() for ch in text if ch.isalnum()]
    i, j = 0, len(cleaned) - 1
    while i < j:
        if cleaned[i] != cleaned[j]:
            return False
        i += 1
        j -= 1
    return True


def truncate(text, width, ellipsis="..."):
    """Shorten to at most `width` characters, ending with `ellipsis` when cut."""
    if width < 0:
        raise ValueError("width must be non-negative")
    if len(text) <= width:
        return text
    if width <= len(ellipsis):
        return ellipsis[:width]
    return text[: width - len(ellipsis)] + ellipsis


def wrap(text, width):
    """Greedy word wrap; a word longer than `width` gets its own line."""
    if width < 1:
        raise ValueError("width must be positive")
    lines = []
    line = ""
    for word in text.split():
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line = line + " " + word
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def center(text, width, fill=" "):
    """Center text; an odd leftover space goes to the right."""
    if len(fill) != 1:
        raise ValueError("fill must be one character")
    total = width - len(text)
    if total <= 0:
        return text
    left = total // 2
    right = total - left
    return fill * left + text + fill * right


def caesar(text, shift):
    """Rotate ASCII letters by `shift`, preserving case; other characters unchanged."""
    out = []
    for ch in text:
        if "a" <= ch <= "z":
            out.append(chr((ord(ch) - ord("a") + shift) % 26 + ord("a")))
        elif "A" <= ch <= "Z":
            out.append(chr((ord(ch) - ord("A") + shift) % 26 + ord("A")))
        else:
            out.append(ch)
    return "".join(out)


def common_prefix(strings):
    if not strings:
        return ""
    prefix = strings[0]
    for s in strings[1:]:
        n = 0
        limit = min(len(prefix), len(s))
        while n < limit and prefix[n] == s[n]:
            n += 1
        prefix = prefix[:n]
        if not prefix:
            break
    return prefix
