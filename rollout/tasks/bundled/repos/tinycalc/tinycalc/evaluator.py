"""Evaluate parsed expressions with variables and a few built-in functions."""

from tinycalc.parser import parse


class CalcError(ValueError):
    pass


def _clamp(x, lo, hi):
    if lo > hi:
        raise CalcError("clamp: lo must not exceed hi")
    return min(max(x, lo), hi)


FUNCTIONS = {
    "abs": (1, abs),
    "min": (None, min),
    "max": (None, max),
    "clamp": (3, _clamp),
}


def _binary(op, a, b):
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op in ("/", "//", "%") and b == 0:
        raise CalcError("division by zero")
    if op == "/":
        return a / b
    if op == "//":
        return a // b
    if op == "%":
        return a % b
    if op == "^":
        return a ** b
    raise CalcError(f"unknown operator {op}")


def _eval(node, env):
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "var":
        if node[1] not in env:
            raise CalcError(f"undefined variable {node[1]!r}")
        return env[node[1]]
    if kind == "neg":
        return -_eval(node[1], env)
    if kind == "bin":
        return _binary(node[1], _eval(node[2], env), _eval(node[3], env))
    if kind == "call":
        name, args = node[1], node[2]
        if name not in FUNCTIONS:
            raise CalcError(f"unknown function {name!r}")
        arity, fn = FUNCTIONS[name]
        if arity is not None and len(args) != arity:
            raise CalcError(f"{name} takes {arity} arguments, got {len(args)}")
        if arity is None and not args:
            raise CalcError(f"{name} needs at least one argument")
        values = [_eval(a, env) for a in args]
        return fn(*values)
    raise CalcError(f"bad node {kind}")


def evaluate(src, variables=None):
    """Evaluate `src`; `variables` maps names to numbers."""
    return _eval(parse(src), dict(variables or {}))
