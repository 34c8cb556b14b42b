"""Numeric answer checking for math tasks: what a model writes vs the reference answer.

`parse_number` reads the forms models and datasets use: `42`, `-3.5`, `1,234,567`, `$12.50`,
`3/4`, `-\\frac{3}{4}`, `\\dfrac34`, `2 1/2` (a mixed number), `1.5e3`, `45%` (as 45),
`\\boxed{...}`, trailing units or words (`12 apples`, `12 cm.`). `final_answer` picks the
answer out of free text: the last `\\boxed{}`, else the text after the last `answer is` /
`Answer:` / `####`, else the last number in it. `same_number` compares exactly for
fractions and integers, with a relative tolerance of 1e-6 for decimals.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_FRAC_TEX = re.compile(r"^([-+]?)\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}$")
_FRAC_TEX_SHORT = re.compile(r"^([-+]?)\\[dt]?frac\s*(\d)(\d)$")
_MIXED = re.compile(rf"^({_NUM})\s+(\d+)\s*/\s*(\d+)$")
_RATIO = re.compile(rf"^({_NUM})\s*/\s*({_NUM})$")
_LEADING = re.compile(rf"^({_NUM})")
_ANY_NUM = re.compile(_NUM)
_CUES = re.compile(r"(?:answer\s*(?:is|:)|####)", re.IGNORECASE)


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def _clean(text: str) -> str:
    t = text.strip()
    inner = _boxed(t)
    if inner is not None:
        t = inner.strip()
    t = t.strip("$ ").replace("\\$", "").replace("\\!", "").replace("\\,", "")
    t = re.sub(r"\\(?:text|mathrm|mbox)\s*\{[^{}]*\}", "", t)
    t = t.replace("\\left", "").replace("\\right", "").replace("\\%", "%")
    return t.strip().rstrip(".").strip()


def _to_fraction(num: str) -> Fraction:
    return Fraction(num.replace(",", ""))


def parse_number(text: str) -> Fraction | None:
    """The number `text` states (see the module doc), or None if it states none."""
    t = _clean(text)
    if not t:
        return None
    t = t.lstrip("$").strip()
    for pattern in (_FRAC_TEX, _FRAC_TEX_SHORT):
        m = pattern.match(t)
        if m:
            sign, num, den = m.groups()
            n, d = parse_number(num), parse_number(den)
            if n is None or d is None or d == 0:
                return None
            return -(n / d) if sign == "-" else n / d
    m = _MIXED.match(t)
    if m:
        whole, num, den = _to_fraction(m.group(1)), int(m.group(2)), int(m.group(3))
        if den == 0:
            return None
        part = Fraction(num, den)
        return whole - part if whole < 0 or m.group(1).startswith("-") else whole + part
    m = _RATIO.match(t)
    if m:
        den = _to_fraction(m.group(2))
        return None if den == 0 else _to_fraction(m.group(1)) / den
    m = _LEADING.match(t.replace(" ", "") if re.fullmatch(r"[\d ,.]+", t) else t)
    if m:
        try:
            return _to_fraction(m.group(1))
        except (ValueError, ZeroDivisionError):
            return None
    return None


def final_answer(text: str) -> str | None:
    """The answer a free-text reply gives (see the module doc), or None."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    cues = list(_CUES.finditer(text))
    if cues:
        after = text[cues[-1].end():].strip()
        m = _ANY_NUM.search(after)
        if m:
            return after[m.start():].split("\n", 1)[0]
    nums = _ANY_NUM.findall(text)
    return nums[-1] if nums else None


def same_number(given: str | None, reference: str, rel_tol: float = 1e-6) -> bool:
    if given is None:
        return False
    a, b = parse_number(given), parse_number(reference)
    if a is None or b is None:
        return False
    if a == b:
        return True
    scale = max(abs(a), abs(b), Fraction(1))
    return abs(a - b) <= Fraction(rel_tol) * scale
