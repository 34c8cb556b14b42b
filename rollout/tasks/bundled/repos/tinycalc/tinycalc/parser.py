"""Recursive-descent parser producing tuples:
("num", v), ("var", name), ("neg", e), ("bin", op, a, b), ("call", name, [args])."""

from tinycalc.lexer import tokenize

# Binding power of the binary operators; "^" is right-associative.
PRECEDENCE = {"+": 10, "-": 10, "*": 20, "/": 20, "//": 20, "%": 20, "^": 30}
RIGHT_ASSOC = {"^"}
UNARY_POWER = 25


class ParseError(ValueError):
    pass


class _Parser:
    def __init__(self, tokens):
        self.tokens = tokens
        self.pos = 0

    def peek(self):
        if self.pos < len(self.tokens):
            return self.tokens[self.pos]
        return ("eof", None)

    def advance(self):
        tok = self.peek()
        self.pos += 1
        return tok

    def expect(self, kind):
        tok = self.advance()
        if tok[0] != kind:
            raise ParseError(f"expected {kind}, got {tok[1]!r}")
        return tok

    def expression(self, min_power=0):
        left = self.prefix()
        while True:
            kind, value = self.peek()
            if kind != "op" or PRECEDENCE[value] < min_power:
                break
            self.advance()
            power = PRECEDENCE[value]
            next_min = power if value in RIGHT_ASSOC else power + 1
            right = self.expression(next_min)
            left = ("bin", value, left, right)
        return left

    def prefix(self):
        kind, value = self.advance()
        if kind == "num":
            return ("num", value)
        if kind == "op" and value == "-":
            return ("neg", self.expression(UNARY_POWER))
        if kind == "op" and value == "+":
            return self.expression(UNARY_POWER)
        if kind == "lparen":
            inner = self.expression()
            self.expect("rparen")
            return inner
        if kind == "name":
            if self.peek()[0] == "lparen":
                self.advance()
                args = []
                if self.peek()[0] != "rparen":
                    args.append(self.expression())
                    while self.peek()[0] == "comma":
                        self.advance()
                        args.append(self.expression())
                self.expect("rparen")
                return ("call", value, args)
            return ("var", value)
        raise ParseError(f"unexpected {value!r}")


def parse(src):
    parser = _Parser(tokenize(src))
    tree = parser.expression()
    if parser.peek()[0] != "eof":
        raise ParseError(f"unexpected trailing {parser.peek()[1]!r}")
    return tree
