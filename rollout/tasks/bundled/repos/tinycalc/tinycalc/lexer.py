"""Turn source text into (kind, value) tokens: num, name, op, lparen, rparen, comma."""

OPERATORS = ("//", "+", "-", "*", "/", "%", "^")


class LexError(ValueError):
    pass


def tokenize(src):
    tokens = []
    i = 0
    n = len(src)
    while i < n:
        ch = src[i]
        if ch.isspace():
            i += 1
        elif ch.isdigit() or (ch == "." and i + 1 < n and src[i + 1].isdigit()):
            start = i
            seen_dot = False
            while i < n and (src[i].isdigit() or (src[i] == "." and not seen_dot)):
                if src[i] == ".":
                    seen_dot = True
                i += 1
            text = src[start:i]
            tokens.append(("num", float(text) if seen_dot else int(text)))
        elif ch.isalpha() or ch == "_":
            start = i
            while i < n and (src[i].isalnum() or src[i] == "_"):
                i += 1
            tokens.append(("name", src[start:i]))
        elif ch == "(":
            tokens.append(("lparen", ch))
            i += 1
        elif ch == ")":
            tokens.append(("rparen", ch))
            i += 1
        elif ch == ",":
            tokens.append(("comma", ch))
            i += 1
        else:
            for op in OPERATORS:
                if src.startswith(op, i):
                    tokens.append(("op", op))
                    i += len(op)
                    break
            else:
                raise LexError(f"unexpected character {ch!r} at {i}")
    return tokens
