"""Procedural bug injection in the spirit of SWE-smith's modifiers, on libcst trees.

Each modifier rewrites exactly one *site* (the n-th matching node of a module), so every
candidate bug is a small, reviewable diff and `candidates()` can enumerate all of them
deterministically. Whether a candidate is a useful bug is decided later by running the tests
(see `rollout.tasks.make_tasks`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

import libcst as cst

_BINARY_SWAP: dict[type, type] = {
    cst.Add: cst.Subtract, cst.Subtract: cst.Add, cst.Multiply: cst.FloorDivide,
    cst.Divide: cst.FloorDivide, cst.FloorDivide: cst.Divide, cst.Modulo: cst.FloorDivide,
    cst.Power: cst.Multiply,
}
_COMPARE_SWAP: dict[type, type] = {
    cst.LessThan: cst.LessThanEqual, cst.LessThanEqual: cst.LessThan,
    cst.GreaterThan: cst.GreaterThanEqual, cst.GreaterThanEqual: cst.GreaterThan,
    cst.Equal: cst.NotEqual, cst.NotEqual: cst.Equal, cst.In: cst.NotIn, cst.NotIn: cst.In,
    cst.Is: cst.IsNot, cst.IsNot: cst.Is,
}
_BOOL_SWAP: dict[type, type] = {cst.And: cst.Or, cst.Or: cst.And}
_ORDERING = (cst.LessThan, cst.LessThanEqual, cst.GreaterThan, cst.GreaterThanEqual)
_NON_COMMUTATIVE = (cst.Subtract, cst.Divide, cst.FloorDivide, cst.Modulo, cst.Power)


class _SiteTransformer(cst.CSTTransformer):
    """Counts the sites a subclass matches and rewrites only site number `target`."""

    def __init__(self, target: int = -1) -> None:
        super().__init__()
        self.target = target
        self.count = 0
        self.depth = 0  # function nesting: only code inside functions is mutated

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.depth += 1

    def leave_FunctionDef(self, original, updated):
        self.depth -= 1
        return self.rewrite_function(original, updated) if self.depth == 0 else updated

    def rewrite_function(self, original, updated):
        return updated

    def hit(self) -> bool:
        """Register a site; True if it is the one to rewrite."""
        if self.depth == 0:
            return False
        self.count += 1
        return self.count - 1 == self.target


class InvertIfElse(_SiteTransformer):
    """Swap the bodies of an `if ...: else:` (no elif)."""

    def leave_If(self, original, updated):
        if isinstance(updated.orelse, cst.Else) and self.hit():
            return updated.with_changes(body=updated.orelse.body,
                                        orelse=updated.orelse.with_changes(body=updated.body))
        return updated


class ChangeOperator(_SiteTransformer):
    """Replace a binary, comparison or boolean operator by a plausible wrong one."""

    def leave_BinaryOperation(self, original, updated):
        new = _BINARY_SWAP.get(type(updated.operator))
        if new and self.hit():
            return updated.with_changes(operator=new())
        return updated

    def leave_Comparison(self, original, updated):
        if len(updated.comparisons) == 1:
            target = updated.comparisons[0]
            new = _COMPARE_SWAP.get(type(target.operator))
            if new and self.hit():
                return updated.with_changes(comparisons=[target.with_changes(operator=new())])
        return updated

    def leave_BooleanOperation(self, original, updated):
        new = _BOOL_SWAP.get(type(updated.operator))
        if new and self.hit():
            return updated.with_changes(operator=new())
        return updated


class ChangeConstant(_SiteTransformer):
    """Off-by-one an integer literal."""

    def leave_Integer(self, original, updated):
        if self.hit():
            return updated.with_changes(value=str(int(updated.value, 0) + 1))
        return updated


class SwapOperands(_SiteTransformer):
    """Swap the operands of a non-commutative binary operation or a comparison."""

    def leave_BinaryOperation(self, original, updated):
        if isinstance(updated.operator, _NON_COMMUTATIVE) and self.hit():
            return updated.with_changes(left=updated.right, right=updated.left)
        return updated

    def leave_Comparison(self, original, updated):
        # Same operator, swapped sides: `a < b` becomes `b < a`.
        if len(updated.comparisons) == 1 and isinstance(
                updated.comparisons[0].operator, _ORDERING) and self.hit():
            comp = updated.comparisons[0]
            return updated.with_changes(left=comp.comparator,
                                        comparisons=[comp.with_changes(comparator=updated.left)])
        return updated


class RemoveAssign(_SiteTransformer):
    """Delete an assignment statement (plain, augmented or annotated)."""

    def leave_SimpleStatementLine(self, original, updated):
        if len(updated.body) == 1 and isinstance(
                updated.body[0], (cst.Assign, cst.AugAssign, cst.AnnAssign)) and self.hit():
            return cst.RemoveFromParent()
        return updated


class RemoveLoop(_SiteTransformer):
    """Delete a for/while loop."""

    def leave_For(self, original, updated):
        return cst.RemoveFromParent() if self.hit() else updated

    def leave_While(self, original, updated):
        return cst.RemoveFromParent() if self.hit() else updated


class RemoveConditional(_SiteTransformer):
    """Delete an `if` statement that has no else/elif branch."""

    def leave_If(self, original, updated):
        if updated.orelse is None and self.hit():
            return cst.RemoveFromParent()
        return updated


class RemoveWrapper(_SiteTransformer):
    """Replace a `with` or `try` statement by its body."""

    def leave_With(self, original, updated):
        return cst.FlattenSentinel(updated.body.body) if self.hit() else updated

    def leave_Try(self, original, updated):
        return cst.FlattenSentinel(updated.body.body) if self.hit() else updated


class ShuffleLines(_SiteTransformer):
    """Swap two adjacent statements of a top-level function body (skipping a docstring)."""

    def rewrite_function(self, original, updated):
        body = list(updated.body.body)
        start = 1 if body and _is_docstring(body[0]) else 0
        if len(body) - start < 2 or not self._hit_function():
            return updated
        i = random.Random(self.count).randrange(start, len(body) - 1)
        body[i], body[i + 1] = body[i + 1], body[i]
        return updated.with_changes(body=updated.body.with_changes(body=body))

    def _hit_function(self) -> bool:
        self.count += 1
        return self.count - 1 == self.target


def _is_docstring(stmt: cst.CSTNode) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and isinstance(stmt.body[0], cst.Expr)
            and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString)))


MODIFIERS: dict[str, Callable[[int], _SiteTransformer]] = {
    "func_pm_ctrl_invert_if": InvertIfElse,
    "func_pm_op_change": ChangeOperator,
    "func_pm_op_change_const": ChangeConstant,
    "func_pm_op_swap": SwapOperands,
    "func_pm_remove_assign": RemoveAssign,
    "func_pm_remove_loop": RemoveLoop,
    "func_pm_remove_cond": RemoveConditional,
    "func_pm_remove_wrapper": RemoveWrapper,
    "func_pm_ctrl_shuffle": ShuffleLines,
}


@dataclass(frozen=True)
class Candidate:
    """One possible bug: `path` rewritten to `source` by `strategy` at site `site`."""

    strategy: str
    path: str
    site: int
    source: str


def candidates(source: str, path: str, strategies: list[str] | None = None) -> Iterator[Candidate]:
    """Every single-site mutation of a module that changes its code, in a stable order."""
    module = cst.parse_module(source)
    for name in strategies or list(MODIFIERS):
        counter = MODIFIERS[name](-1)
        module.visit(counter)
        for site in range(counter.count):
            new = module.visit(MODIFIERS[name](site)).code
            if new != source:
                yield Candidate(name, path, site, new)
