"""The plan of a contract: annotations parsed once into plain data. Pure: no torch import.

A :class:`Plan` is what every consumer of a contract reads: the checker (``_check``), the
explainer (``_explain``), the hypothesis strategies and ``contracts.docs``. It is built from the
annotations (and the :class:`ContractOptions`) at decoration time and never changes afterwards.
Dtypes are kept as torch dtype *names* (``"float32"``); the checker turns them into
``torch.dtype`` objects when it compiles the plan.

Example:
    >>> plan = build_plan(pool, ContractOptions())
    >>> [s.name for s in plan.params], plan.return_kind
    (['x', 'mask'], 'single')
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from . import _spec
from ._constraints import Constraint, Finite, Mask, Range
from ._errors import AnnotationError
from ._spec import ELLIPSIS, EXPR, VARIADIC, Expr

__all__ = [
    "ContractOptions",
    "ContractWarning",
    "Plan",
    "Slot",
    "TensorSpec",
    "build_plan",
    "make_slot",
]

CHECKED = -3  # Slot.position of a value checked by contracts.check

FLOAT_NAMES = frozenset({"float16", "bfloat16", "float32", "float64"})
# the dtype names jaxtyping may list that torch has (others, like numpy's "bool_", are dropped)
TORCH_DTYPE_NAMES = FLOAT_NAMES | frozenset(
    {"bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"}
    | {"complex32", "complex64", "complex128"}
    | {"float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"}
)


class ContractWarning(UserWarning):
    """Part of a contract cannot be checked: an annotation that does not resolve, or a hint
    the checker cannot check. Issued once, at decoration time, naming function and argument."""

    __module__ = "contracts"


@dataclass(frozen=True)
class ContractOptions:
    """The options of :func:`contracts.contract`, declared once.

    Attributes:
        dims: pre-bind dims from ``self``: ``{"V": "self.vocab_size"}``.
        returns: annotations for the keys of a returned dict.
        allow_empty: accept zero-size axes (refused by default: they are usually a bug).
        generate: include this function in the generated property tests.
        sizes: ``{dim: (min, max)}`` for generated inputs (default ``(1, 8)``).
        strategies: ``{argument: lambda st: strategy}`` for non-tensor arguments of generated
            tests (``st`` is ``hypothesis.strategies``).
        outputs: names for the elements of a returned tuple (used by ``contracts.docs``).
        notes: ``{argument or output: text}`` for the Notes column of ``contracts.docs``.
    """

    dims: Mapping[str, str] | None = None
    returns: Mapping[str, Any] | None = None
    allow_empty: bool = False
    generate: bool = True
    sizes: Mapping[str, tuple[int, int]] | None = None
    strategies: Mapping[str, Callable] | None = None
    outputs: tuple[str, ...] = ()
    notes: Mapping[str, str] | None = None

    @classmethod
    def from_kwargs(cls, where: str, kwargs: Mapping[str, Any]) -> ContractOptions:
        """Build from keyword arguments; an unknown option is a TypeError listing the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise AnnotationError(
                f"{where}: unknown option {', '.join(map(repr, unknown))}; valid options are "
                f"{', '.join(names)}"
            )
        return cls(**kwargs)


@dataclass
class TensorSpec:
    """Everything a call needs to check one tensor (parsed once)."""

    dims: tuple[_spec.Dim, ...]
    dim_str: str
    dtypes: frozenset[str] | None  # torch dtype names ("float32"); None = any dtype
    category: str  # Float, Int, Bool, Complex, Shaped, ...
    lo: float | Expr | None = None
    hi: float | Expr | None = None
    finite: bool = False
    mask_axis: int | None = None
    mask_padding: bool = False  # True marks padded positions (key_padding_mask convention)
    constraints: tuple[Constraint, ...] = ()
    var_at: int = field(default=-1, init=False)  # index of the variadic entry, -1 when none
    n_before: int = field(default=0, init=False)  # entries before the variadic one
    n_after: int = field(default=0, init=False)  # entries after it

    def __post_init__(self) -> None:
        for i, d in enumerate(self.dims):
            if d.kind in (VARIADIC, ELLIPSIS):
                self.var_at = i
        if self.var_at >= 0:
            self.n_before = self.var_at
            self.n_after = len(self.dims) - self.var_at - 1

    @property
    def has_values(self) -> bool:
        """Whether ``full`` mode checks values of this tensor."""
        return (
            self.lo is not None or self.hi is not None or self.finite or self.mask_axis is not None
        )

    @property
    def is_bool(self) -> bool:
        return self.dtypes is not None and self.dtypes <= {"bool"}

    @property
    def is_complex(self) -> bool:
        return self.dtypes is not None and all(d.startswith("complex") for d in self.dtypes)

    def shape_words(self) -> str:
        return "[" + ", ".join(str(d) for d in self.dims) + "]" if self.dims else "[] (scalar)"


@dataclass
class Slot:
    """One checked argument or return element."""

    name: str  # "features", "return", "return[0]", "return['loss']"
    position: int  # positional index in the signature (-1 for returns / keyword-only)
    default: Any  # inspect.Parameter.empty when required
    optional: bool
    tensor: TensorSpec | None  # None for non-tensor hints
    pyhint: Any = None  # the non-tensor hint (checked with isinstance / beartype)
    pyrange: Range | None = None  # a Range on a Python number
    plain_tensor: bool = False  # annotated with torch.Tensor alone
    # list[X] / tuple[X, ...] / Sequence[X] / dict[K, X] / Mapping[K, X] of tensors: the
    # container class, and ``tensor`` is every element's (every value's) spec (their dims bind
    # with the call's, as jaxtyping means them)
    each: type | None = None
    each_optional: bool = False  # the elements may be None
    each_key: Any = None  # dict[K, X]: the key hint K (None for sequences)
    keyword: bool = True  # may be passed by keyword (False: positional-only)

    @property
    def is_mapping(self) -> bool:
        """Whether this slot is a dict/Mapping of tensors (elements named ``name['key']``)."""
        return self.each is not None and issubclass(self.each, Mapping)

    def element(self, i: Any) -> Slot:
        """The slot of element ``i`` of a sequence slot (``name[i]``) or of the value at key
        ``i`` of a mapping slot (``name['a']``), checked alone."""
        index = repr(i) if self.is_mapping else i
        return Slot(f"{self.name}[{index}]", self.position, self.default, False, self.tensor)


@dataclass
class Plan:
    """The parsed contract of one function."""

    qualname: str
    module: str
    fn: Callable
    params: list[Slot]
    returns: list[Slot]
    return_kind: str  # "none", "single", "tuple", "dict"
    return_keys: tuple[Any, ...] = ()  # per return slot: None, the tuple index or the dict key
    return_optional: bool = False  # a tuple return annotated ``tuple[...] | None``
    self_dims: tuple[tuple[str, Expr], ...] = ()
    has_self: bool = False
    options: ContractOptions = field(default_factory=ContractOptions)

    # the options as read by strategies and docs
    @property
    def allow_empty(self) -> bool:
        return self.options.allow_empty

    @property
    def generate(self) -> bool:
        return self.options.generate

    @property
    def sizes(self) -> dict[str, tuple[int, int]]:
        return dict(self.options.sizes or {})

    @property
    def strategies(self) -> dict[str, Callable]:
        return dict(self.options.strategies or {})

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.options.outputs)

    @property
    def notes(self) -> dict[str, str]:
        return dict(self.options.notes or {})

    @property
    def owner_qualname(self) -> str | None:
        parts = self.qualname.split(".")
        return ".".join(parts[:-1]) if self.has_self and len(parts) > 1 else None

    @property
    def uses_args(self) -> bool:
        """Whether a dim is an f-string over the call's arguments (``"{size}"``)."""
        return any(
            d.kind == EXPR and d.value.uses_args
            for s in self.params + self.returns
            if s.tensor is not None
            for d in s.tensor.dims
        )

    def bind_arguments(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The call's arguments by name, defaults applied (for f-string dims)."""
        try:
            bound = inspect.signature(self.fn).bind_partial(*args, **kwargs)
        except (TypeError, ValueError):
            return dict(kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def slot(self, name: str) -> Slot | None:
        """The argument or return slot called ``name``."""
        for s in self.params + self.returns:
            if s.name == name:
                return s
        return None


# --------------------------------------------------------------------------------------------
# building a plan


def _torch_types() -> tuple[Any, Any]:
    """``(torch.Tensor, torch.nn.Parameter)`` if torch is imported (a hint can only name them
    then), else sentinels that match nothing."""
    torch = sys.modules.get("torch")
    if torch is None:
        return object(), object()
    return torch.Tensor, torch.nn.Parameter


def _is_jaxtyping(hint: Any) -> bool:
    return isinstance(hint, type) and hasattr(hint, "dim_str") and hasattr(hint, "dtypes")


def unwrap(hint: Any) -> tuple[Any, tuple, bool]:
    """Strip Annotated and Optional: -> (inner hint, metadata, optional)."""
    meta: tuple = ()
    optional = False
    for _ in range(4):
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            meta = meta + tuple(hint.__metadata__)
            hint = hint.__origin__
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) < len(typing.get_args(hint)) and len(args) == 1:
                optional = True
                hint = args[0]
                continue
        break
    return hint, meta, optional


def _dtype_names(jt_dtypes: Any) -> frozenset[str] | None:
    """jaxtyping's dtype names (None = any dtype)."""
    if isinstance(jt_dtypes, str) or not isinstance(jt_dtypes, (tuple, list)):
        return None
    return frozenset(str(n) for n in jt_dtypes) & TORCH_DTYPE_NAMES


def tensor_spec(where: str, hint: Any, meta: tuple) -> TensorSpec:
    """The spec of a jaxtyping annotation plus its ``Annotated`` constraints."""
    dims = _spec.parse_shape(hint.dim_str)
    category = getattr(getattr(hint, "dtype", None), "__name__", "Shaped")
    spec = TensorSpec(
        dims=dims, dim_str=hint.dim_str, dtypes=_dtype_names(hint.dtypes), category=category
    )
    _apply_constraints(where, spec, meta)
    return spec


def _apply_constraints(where: str, spec: TensorSpec, meta: tuple) -> None:
    cons = [m for m in meta if isinstance(m, Constraint)]
    for c in cons:
        if isinstance(c, Range):
            if spec.is_bool:
                raise AnnotationError(f"{where}: Range on a Bool tensor makes no sense; use Mask()")
            if spec.is_complex:
                raise AnnotationError(
                    f"{where}: Range on a Complex tensor is undefined; use Finite()"
                )
            if spec.lo is not None or spec.hi is not None:
                raise AnnotationError(f"{where}: more than one Range given")
            spec.lo, spec.hi, spec.finite = c.lo, c.hi, True
        elif isinstance(c, Finite):
            if spec.is_bool:
                raise AnnotationError(f"{where}: Finite on a Bool tensor makes no sense")
            spec.finite = True
        elif isinstance(c, Mask):
            if not spec.is_bool:
                raise AnnotationError(
                    f"{where}: Mask() needs a Bool[Tensor, ...] annotation, not {spec.category}"
                )
            if len(spec.dims) == 0:
                raise AnnotationError(f"{where}: Mask() needs at least one axis")
            rank = len(spec.dims)
            if spec.var_at < 0 and not -rank <= c.axis < rank:
                raise AnnotationError(
                    f"{where}: Mask(axis={c.axis}) on a {rank}-axis annotation "
                    f"{' '.join(str(d) for d in spec.dims)!r}; the axis must be in "
                    f"[{-rank}, {rank - 1}]"
                )
            spec.mask_axis = c.axis
            spec.mask_padding = c.padding
    spec.constraints = tuple(cons)


def make_slot(where: str, name: str, position: int, default: Any, hint: Any) -> Slot | None:
    inner, meta, optional = unwrap(hint)
    for m in meta:
        if not isinstance(m, Constraint):
            _warn(
                f"{where}: Annotated metadata {m!r} is not a contracts constraint (Range, "
                "Finite, Mask, Probability); it is left unchecked"
            )
    if default is None:
        optional = True
    tensor_t, param_t = _torch_types()
    if _is_jaxtyping(inner):
        if getattr(inner, "array_type", tensor_t) not in (tensor_t, param_t):
            _warn_other_array(where, inner)
            return None  # a numpy/jax annotation: not ours to check
        return Slot(name, position, default, optional, tensor_spec(where, inner, meta))
    each = _sequence_of_tensors(inner)
    if each is not None:
        container, element, key = each
        e_inner, e_meta, e_optional = unwrap(element)
        if getattr(e_inner, "array_type", tensor_t) not in (tensor_t, param_t):
            _warn_other_array(where, e_inner)
            return None
        spec = tensor_spec(where, e_inner, meta + e_meta)  # a constraint on the list: on each
        slot = Slot(name, position, default, optional, spec, each=container, each_key=key)
        slot.each_optional = e_optional
        if key is not None:
            _warn_if_uncheckable(where, key)
        return slot
    if inner is tensor_t:
        spec_meta = [m for m in meta if isinstance(m, Constraint)]
        slot = Slot(name, position, default, optional, None, plain_tensor=True)
        if spec_meta:
            spec = TensorSpec(
                dims=(_spec.Dim(ELLIPSIS, None),), dim_str="...", dtypes=None, category="Shaped"
            )
            _apply_constraints(where, spec, tuple(spec_meta))
            slot.tensor, slot.plain_tensor = spec, False
        return slot
    if inner is typing.Any or inner is inspect.Parameter.empty:
        return None
    ranges = [m for m in meta if isinstance(m, Range)]
    if any(isinstance(m, Mask) for m in meta) and not ranges:
        raise AnnotationError(f"{where}: Mask() applies to Bool tensors only")
    _warn_if_uncheckable(where, inner)
    return Slot(
        name, position, default, optional, None, pyhint=inner, pyrange=ranges[0] if ranges else None
    )


_SEQUENCES = {list: list, tuple: tuple, Sequence: Sequence, dict: dict, Mapping: Mapping}


def _sequence_of_tensors(hint: Any) -> tuple[type, Any, Any] | None:
    """``(container, element hint, key hint)`` of ``list[X]``, ``tuple[X, ...]``,
    ``Sequence[X]`` (key hint None), ``dict[K, X]`` or ``Mapping[K, X]`` whose element ``X``
    (past ``Annotated``/``Optional``) is a jaxtyping annotation; else None."""
    container = _SEQUENCES.get(typing.get_origin(hint))
    if container is None:
        return None
    args = typing.get_args(hint)
    key = None
    if container is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            return None  # a fixed-length tuple: beartype checks it
        element = args[0]
    elif container in (dict, Mapping):
        if len(args) != 2:
            return None
        key, element = args
        key = None if key is typing.Any else key
    elif len(args) != 1:
        return None
    else:
        element = args[0]
    return (container, element, key) if _is_jaxtyping(unwrap(element)[0]) else None


def _warn_other_array(where: str, hint: Any) -> None:
    array = getattr(hint, "array_type", None)
    name = getattr(array, "__qualname__", repr(array))
    _warn(
        f"{where}: {name} annotations are not checked (contracts check torch tensors); "
        "it is left unchecked"
    )


def _warn_if_uncheckable(where: str, hint: Any) -> None:
    """A non-tensor hint is checked by isinstance (plain classes) or beartype (the rest);
    warn now when neither can check it, rather than skip it silently at every call."""
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return
    try:
        from beartype.door import is_bearable

        is_bearable(None, hint)
    except Exception as e:
        _warn(
            f"{where}: the hint {hint!r} cannot be checked ({type(e).__name__}: {e}); it is left unchecked"
        )


def _warn(message: str) -> None:
    """A ContractWarning attributed to the user's line (the first frame outside contracts), so
    ``filterwarnings("error::contracts.ContractWarning:models")`` can target a package."""
    frame, level = sys._getframe(1), 2  # level 1 is this function's own frame
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "contracts":
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ContractWarning, stacklevel=level)


def _return_slots(
    where: str, hint: Any, returns: Mapping[str, Any] | None
) -> tuple[str, list[tuple[Any, Slot]]]:
    if returns is not None:
        if not isinstance(returns, Mapping):
            raise AnnotationError(f"{where}: returns= must map dict keys to annotations")
        slots = []
        for k, h in returns.items():
            s = make_slot(
                f"{where} return[{k!r}]", f"return[{k!r}]", -1, inspect.Parameter.empty, h
            )
            if s is not None:
                s.position = -2  # marks "dict key"
                s.pyhint = s.pyhint if s.tensor is None else None
                slots.append((k, s))
        return "dict", slots
    if hint is inspect.Parameter.empty or hint is None or hint is type(None):
        return "none", []
    inner, _meta, _opt = unwrap(hint)
    if typing.get_origin(inner) is tuple and not (
        len(typing.get_args(inner)) == 2 and typing.get_args(inner)[1] is Ellipsis
    ):  # (tuple[X, ...] is one value, every element checked: below)
        args = typing.get_args(inner)
        slots = []
        for i, a in enumerate(args):
            s = make_slot(f"{where} return[{i}]", f"return[{i}]", -1, inspect.Parameter.empty, a)
            slots.append((i, s))
        return "tuple", slots
    s = make_slot(f"{where} return", "return", -1, inspect.Parameter.empty, hint)
    return ("single", [(None, s)]) if s is not None else ("none", [])


def _resolve_hints(fn: Callable, where: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        # forward references that cannot resolve yet: resolve what we can, one by one
        out = {}
        glb = getattr(fn, "__globals__", {})
        for k, v in getattr(fn, "__annotations__", {}).items():
            if isinstance(v, str):
                try:
                    v = eval(v, glb)
                except NameError as e:
                    what = "the return value" if k == "return" else f"argument {k!r}"
                    _warn(
                        f"{where}: the annotation of {what} ({v!r}) cannot be resolved ({e}); "
                        f"{what} is left unchecked"
                    )
                    continue
                except Exception as e:
                    raise AnnotationError(
                        f"{where}: malformed annotation of {k!r} ({v}): {type(e).__name__}: {e}"
                    ) from None
            out[k] = v
        return out


def build_plan(
    fn: Callable,
    options: ContractOptions,
    *,
    hints: Mapping[str, Any] | None = None,
    return_hint: Any = inspect.Parameter.empty,
    qualname: str | None = None,
) -> Plan:
    """Parse ``fn``'s annotations (or the given ``hints``) into a :class:`Plan`.

    Raises:
        AnnotationError: a malformed annotation, constraint or option (the message names
            which), or a return annotation on a generator or coroutine function (what it
            yields or awaits is not what the call returns).
    """
    qual = qualname or getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    where = f"@contract on {qual}()"
    lazy = (
        "a generator"
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        else "a coroutine"
        if inspect.iscoroutinefunction(fn)
        else None
    )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if hints is None:
        hints = _resolve_hints(fn, where)
        if return_hint is inspect.Parameter.empty:
            return_hint = hints.get("return", inspect.Parameter.empty)
    if lazy is not None:
        if return_hint is not inspect.Parameter.empty and return_hint is not None:
            raise AnnotationError(
                f"{where}: {qual}() is {lazy} function, so a call returns {lazy} object, not "
                "the annotated value: the return cannot be checked. Drop the return "
                "annotation (the arguments are still checked), or put contracts.check on each "
                "value inside"
            )
        _warn(
            f"{where}: {qual}() is {lazy} function: its arguments are checked at the call, but "
            "what it yields or awaits is not, and a contracts.check inside it binds fresh dims "
            "(it runs after the call returned)"
        )
    params: list[Slot] = []
    has_self = False
    if sig is not None:
        names = list(sig.parameters)
        has_self = bool(names) and names[0] in ("self", "cls")
        for i, (name, p) in enumerate(sig.parameters.items()):
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name in hints:
                star = "*" if p.kind is p.VAR_POSITIONAL else "**"
                _warn(
                    f"{where}: the annotation of {star}{name} is not checked (contracts check "
                    f"named parameters); check the values with contracts.check inside {qual}()"
                )
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name not in hints:
                continue
            pos = i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else -1
            slot = make_slot(f"{where} argument {name!r}", name, pos, p.default, hints[name])
            if slot is not None:
                slot.keyword = p.kind is not p.POSITIONAL_ONLY  # never read from **kwargs
                params.append(slot)
        unknown = set(hints) - set(sig.parameters) - {"return"}
        if unknown:
            raise AnnotationError(f"{where}: no parameter named {', '.join(sorted(unknown))}")
    else:
        named = sorted(k for k in hints if k != "return")
        if named:
            _warn(
                f"{where}: the signature of {qual}() cannot be read (a builtin?), so an "
                f"argument passed by position cannot be matched to its annotation: "
                f"{', '.join(map(repr, named))} {'is' if len(named) == 1 else 'are'} checked "
                "only when passed by keyword"
            )
        for name, h in hints.items():
            if name == "return":
                continue
            slot = make_slot(f"{where} argument {name!r}", name, -1, inspect.Parameter.empty, h)
            if slot is not None:
                params.append(slot)
    kind, rslots = _return_slots(where, return_hint, options.returns)
    self_dims = []
    for k, src in (options.dims or {}).items():
        if not str(k).isidentifier():
            raise AnnotationError(f"{where}: dims= key {k!r} is not a dim name")
        if isinstance(src, int) and not isinstance(src, bool):
            src = str(src)
        if not isinstance(src, str):
            raise AnnotationError(
                f"{where}: dims={{{k!r}: {src!r}}}: a bound dim is a string expression like "
                f"'self.vocab_size', not {type(src).__name__}"
            )
        try:
            e = _spec.compile_expr(src)
        except TypeError as err:
            raise AnnotationError(f"{where}: dims={{{k!r}: {src!r}}}: {err}") from None
        if not has_self and e.uses_self:
            raise AnnotationError(
                f"{where}: dims={{{k!r}: {src!r}}} reads self, but there is no self"
            )
        self_dims.append((k, e))
    for k, v in (options.sizes or {}).items():
        if not (isinstance(v, tuple) and len(v) == 2 and 0 <= v[0] <= v[1]):
            raise AnnotationError(f"{where}: sizes[{k!r}] must be a (min, max) tuple, got {v!r}")
    return Plan(
        qualname=qual,
        module=getattr(fn, "__module__", "") or "",
        fn=fn,
        params=params,
        returns=[s for _, s in rslots],
        return_kind=kind,
        return_keys=tuple(k for k, _ in rslots),
        return_optional=kind == "tuple" and unwrap(return_hint)[2],
        self_dims=tuple(self_dims),
        has_self=has_self,
        options=options,
    )
