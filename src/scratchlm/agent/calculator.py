"""A safe arithmetic evaluator for the agent's calculator: the expression is parsed with `ast` and walked over a
whitelist (numbers, + - * / // % **, unary signs, parentheses); names, attributes, calls, strings, comparisons and
everything else are refused before anything is computed, and nothing is ever passed to `eval`. Bounds keep a
hostile expression cheap: its length, its nesting, exponents (no `**` towers, a result of bounded size)."""

from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 200  # an arithmetic question is short; a long one is an attack or a mistake
MAX_DEPTH = 32  # nested operations
MAX_EXPONENT = 1024  # |b| in a ** b
MAX_INT_BITS = 4096  # any integer the evaluator makes (about 1233 digits)

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(ValueError):
    """The expression is not plain arithmetic, too big, or has no value (division by zero, ...)."""


def _number(x: int | float) -> int | float:
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise CalcError(f"a number in the calculation has more than {MAX_INT_BITS} bits")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalcError("the result is not a finite number")
    return x


def _has_pow(node: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(node))


def _pow(base: int | float, exp: int | float) -> int | float:
    if abs(exp) > MAX_EXPONENT:
        raise CalcError(f"the exponent {exp} is too large (at most {MAX_EXPONENT} in size)")
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and base.bit_length() * exp > MAX_INT_BITS:
        raise CalcError(f"{base} ** {exp} would have more than {MAX_INT_BITS} bits")
    if base == 0 and exp < 0:
        raise CalcError("zero cannot be raised to a negative power")
    try:
        out = base ** exp
    except OverflowError as e:
        raise CalcError("the result is too large") from e
    if isinstance(out, complex):
        raise CalcError("a negative number to a fractional power has no real value")
    return out


def _eval(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise CalcError(f"the expression is nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # bool and complex are not numbers here
        return _number(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _number(_UNARY[type(node.op)](_eval(node.operand, depth + 1)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        if isinstance(node.op, ast.Pow) and (_has_pow(node.left) or _has_pow(node.right)):
            raise CalcError("a tower of ** is not allowed (one power at a time)")
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _number(_pow(left, right))
        try:
            return _number(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError as e:
            raise CalcError("division by zero") from e
        except OverflowError as e:
            raise CalcError("the result is too large") from e
    what = type(node).__name__
    if isinstance(node, ast.Constant):
        what = f"the {type(node.value).__name__} {node.value!r}"
    elif isinstance(node, ast.Name):
        what = f"the name {node.id!r}"
    elif isinstance(node, ast.Call):
        what = "a function call"
    elif isinstance(node, ast.Attribute):
        what = "an attribute"
    raise CalcError(f"only numbers and + - * / // % ** ( ) are allowed, not {what}")


def calculate(expression: str) -> str:
    """The value of an arithmetic expression as text (integers exactly, floats to 12 significant digits)."""
    if not isinstance(expression, str):
        raise CalcError(f"the expression must be text, got {type(expression).__name__}")
    expr = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if not expr:
        raise CalcError("the expression is empty")
    if len(expr) > MAX_CHARS:
        raise CalcError(f"the expression has {len(expr)} characters; at most {MAX_CHARS}")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise CalcError(f"not an arithmetic expression: {getattr(e, 'msg', e)}") from None
    value = _eval(tree, 0)
    if isinstance(value, float):
        return "0" if value == 0 else format(value, ".12g")
    return str(value)
