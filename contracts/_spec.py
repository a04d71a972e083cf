"""Pure parsing of shape strings and bound expressions: no tensors, no torch.

A shape string is what jaxtyping puts after the array type: ``"B T F"``, ``"B 80 T"``,
``"*batch C"``, ``"B T-1"``, ``""`` (a scalar). It is parsed once, at decoration time, into a
tuple of :class:`Dim` entries; checking a shape against it is then a loop over plain tuples.

Expressions (in shape strings and in ``Range`` bounds) are a small, safe subset of Python: names
(dims), integers/floats, ``self.attr.attr``, ``+ - * // / %``, unary minus, ``len(...)``,
``min(...)``, ``max(...)``. They compile once into a Python function of ``(bindings, self)``.

Example:
    >>> parse_shape("B T *rest 80")
    (Dim('name', 'B'), Dim('name', 'T'), Dim('variadic', 'rest'), Dim('fixed', 80))
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._errors import AnnotationError

__all__ = ["Dim", "Expr", "ExprError", "compile_expr", "parse_shape"]

# Dim kinds
FIXED = "fixed"  # a literal size: 80
NAME = "name"  # a named size, bound on first sight: B
EXPR = "expr"  # an expression of other dims: T-1
ANY = "any"  # one axis of any size: _
VARIADIC = "variadic"  # zero or more axes, bound as a tuple: *batch
ELLIPSIS = "ellipsis"  # zero or more axes, unbound: ...


@dataclass(frozen=True)
class Expr:
    """A compiled expression over dims and ``self``.

    Attributes:
        source: the expression as written (``"V-1"``).
        names: the dim names it reads (``{"V"}``); ``self`` is not among them.
        uses_self: whether it reads attributes of ``self``.
        fn: ``fn(bindings, self) -> number``.
    """

    source: str
    names: frozenset[str]
    uses_self: bool
    fn: Callable[[dict[str, Any], Any], Any] = field(compare=False, repr=False)
    uses_args: bool = False  # an f-string dim ("{size}"): reads the call's arguments

    def __call__(self, bindings: dict[str, Any], self_obj: Any = None) -> Any:
        return self.fn(bindings, self_obj)


@dataclass(frozen=True)
class Dim:
    kind: str
    value: Any  # int for FIXED, str for NAME/VARIADIC, Expr for EXPR, None otherwise
    broadcast: bool = False  # jaxtyping's "#name": size 1 also matches

    def __repr__(self) -> str:
        return f"Dim({self.kind!r}, {self.value!r})"

    def __str__(self) -> str:
        if self.kind == FIXED:
            return str(self.value)
        if self.kind == NAME:
            return self.value
        if self.kind == EXPR:
            return self.value.source
        if self.kind == VARIADIC:
            return "*" + self.value
        if self.kind == ELLIPSIS:
            return "..."
        return "_"


_ALLOWED_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Div, ast.Mod)
_ALLOWED_CALLS = {"len": len, "min": min, "max": max}


class _Compiler(ast.NodeTransformer):
    """Checks the expression's nodes and rewrites dim names to ``b["name"]``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: set[str] = set()
        self.uses_self = False

    def _fail(self, what: str) -> None:
        raise AnnotationError(
            f"malformed contract expression {self.source!r}: {what}; allowed are dim names, "
            "numbers, self.attr, + - * / // %, unary -, len(), min(), max()"
        )

    def generic_visit(self, node: ast.AST) -> ast.AST:
        allowed = (
            ast.Expression,
            ast.BinOp,
            ast.UnaryOp,
            ast.USub,
            ast.UAdd,
            ast.Constant,
            ast.Name,
            ast.Attribute,
            ast.Call,
            ast.Load,
            *_ALLOWED_BINOPS,
        )
        if not isinstance(node, allowed):
            self._fail(f"{type(node).__name__} is not allowed")
        return super().generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if not isinstance(node.value, (int, float)) or isinstance(node.value, bool):
            self._fail(f"constant {node.value!r} is not a number")
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if not (isinstance(node.func, ast.Name) and node.func.id in _ALLOWED_CALLS):
            self._fail("only len(), min() and max() may be called")
        if node.keywords:
            self._fail("keyword arguments are not allowed")
        node.args = [self.visit(a) for a in node.args]
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        if not (isinstance(root, ast.Name) and root.id == "self"):
            self._fail("attributes may only be read from self (self.vocab_size)")
        self.uses_self = True
        return node  # `self` stays a plain name, bound as a function argument

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _ALLOWED_CALLS:
            return node
        if node.id == "self":
            self.uses_self = True
            return node
        self.names.add(node.id)
        return ast.copy_location(
            ast.Subscript(
                value=ast.Name(id="b", ctx=ast.Load()),
                slice=ast.Constant(value=node.id),
                ctx=ast.Load(),
            ),
            node,
        )


def compile_expr(source: str) -> Expr:
    """Compile a bound or dim expression once.

    Args:
        source: e.g. ``"V-1"``, ``"T"``, ``"self.cfg.n_bins // 2"``.

    Returns:
        An :class:`Expr`; call it with ``(bindings, self)``.

    Raises:
        TypeError: the expression is not in the allowed subset.

    Example:
        >>> compile_expr("V-1")({"V": 10})
        9
    """
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise AnnotationError(f"malformed contract expression {source!r}: {e.msg}") from None
    comp = _Compiler(source)
    tree = comp.visit(tree)
    lam = ast.Expression(
        body=ast.Lambda(
            args=ast.arguments(
                posonlyargs=[],
                args=[ast.arg(arg="b"), ast.arg(arg="self")],
                kwonlyargs=[],
                kw_defaults=[],
                defaults=[],
            ),
            body=tree.body,
        )
    )
    ast.fix_missing_locations(lam)
    fn = eval(compile(lam, f"<contract expr {source!r}>", "eval"), dict(_ALLOWED_CALLS))
    return Expr(source.strip(), frozenset(comp.names), comp.uses_self, fn)


ARGS = "{args}"  # bindings key of the call's arguments, for f-string dims


class ExprError(Exception):
    """An f-string dim cannot be evaluated in this call; the message says why (a checker
    turns it into a ContractError: it is the call that is wrong, not the annotation)."""


def compile_fstring(source: str) -> Expr:
    """Compile a jaxtyping f-string dim (``"{size}"``, ``"{self.n}+3"``) once.

    At call time the braces are filled from the call's arguments (``str.format``: names and
    attribute access), then the result is read as a size or as an expression over dims.
    """
    import string

    fields = [f for _, f, _, _ in string.Formatter().parse(source) if f is not None]
    if not fields or any(not f.split(".")[0].isidentifier() for f in fields):
        raise AnnotationError(
            f"malformed contract expression {source!r}: braces must hold an argument name or "
            'attribute ("{size}", "{self.n}")'
        )
    cache: dict[str, Expr] = {}

    def fn(b: dict[str, Any], self_obj: Any) -> Any:
        args = dict(b.get(ARGS, ()))
        if self_obj is not None:
            args.setdefault("self", self_obj)
        try:
            text = source.format(**args)
        except KeyError as e:
            raise ExprError(f"{{{e.args[0]}}} names no argument of the call") from None
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise ExprError(f"{type(e).__name__}: {e}") from None
        if text.isdigit():
            return int(text)
        expr = cache.get(text)
        if expr is None:
            try:
                expr = compile_expr(text)
            except AnnotationError:
                raise ExprError(
                    f"it reads {text!r}, which is neither a size nor an expression over dims"
                ) from None
            if len(cache) < 256:
                cache[text] = expr
        return expr(b, self_obj)

    uses_self = any(f.split(".")[0] == "self" for f in fields)
    return Expr(source, frozenset(), uses_self, fn, uses_args=True)


def _is_identifier(tok: str) -> bool:
    return tok.isidentifier()


def _token(dim_str: str, tok: str) -> Dim:
    """One token, with jaxtyping's modifiers in any order: ``#`` broadcastable, ``*`` several
    axes, ``_`` anonymous, and ``doc=`` a documentation name (``rows=4`` is ``4``)."""
    if tok == "...":
        return Dim(ELLIPSIS, None)
    elem, broadcast, variadic, anonymous = tok, False, False, False

    def bad(why: str) -> TypeError:
        return TypeError(f"malformed shape {dim_str!r}: {tok!r} {why}")

    while elem:
        c = elem[0]
        if c == "#":
            if broadcast:
                raise bad("uses # twice")
            broadcast, elem = True, elem[1:]
        elif c == "*":
            if variadic:
                raise bad("uses * twice")
            variadic, elem = True, elem[1:]
        elif c == "_":
            if anonymous:
                raise bad("uses _ twice")
            anonymous, elem = True, elem[1:]
        elif c == "?":
            raise bad("depends on a PyTree path (?), which tensors do not have")
        elif elem.count("=") == 1 and "{" not in elem:
            elem = elem.split("=")[1]
        else:
            break
    if not elem or elem.isidentifier():
        if anonymous:
            if broadcast:
                raise bad("is both anonymous and broadcastable")
            return Dim(ELLIPSIS, None) if variadic else Dim(ANY, None)
        if not elem:
            raise bad("needs a name")
        return Dim(VARIADIC if variadic else NAME, elem, broadcast)
    if elem.isdigit():
        if variadic or anonymous:
            raise bad("is a fixed size, which cannot be variadic or anonymous")
        return Dim(FIXED, int(elem), broadcast)
    if variadic or anonymous:
        raise bad("is an expression, which cannot be variadic or anonymous")
    expr = compile_fstring(elem) if "{" in elem else compile_expr(elem)
    return Dim(EXPR, expr, broadcast)


def parse_shape(dim_str: str) -> tuple[Dim, ...]:
    """Parse a jaxtyping shape string into dims.

    Raises:
        TypeError: more than one variadic entry, or a token that is neither a number, a name,
            ``_``, ``_name``, ``...``, ``*name``, ``*_``, ``#name``, ``*#name``, ``doc=size``,
            an expression (``T-1``) nor an f-string (``{size}``, ``{self.n}+3``).
    """
    dims = [_token(dim_str, tok) for tok in dim_str.split()]
    n_var = sum(d.kind in (VARIADIC, ELLIPSIS) for d in dims)
    if n_var > 1:
        raise AnnotationError(
            f"malformed shape {dim_str!r}: at most one variadic entry (*name or ...) is allowed"
        )
    return tuple(dims)
