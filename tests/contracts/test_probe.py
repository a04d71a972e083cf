"""Adversarial probes: functions, modules and inputs the contracts had not seen, each pinned
where it gave a wrong verdict, a raw traceback or misleading words. Every call is made three
times where it matters: the first walks the annotations, the later ones take the fast path,
and both must decide (and word) alike."""

from __future__ import annotations

import re
import types
import warnings
from collections.abc import Mapping
from typing import Annotated

import numpy as np
import pytest
import torch
import torch._dynamo
from hypothesis import HealthCheck, given, settings
from jaxtyping import Bool, Complex, Float, Int, Integer, UInt, UInt8
from torch import Tensor, nn

import contracts
from contracts import AnnotationError, ContractError, ContractWarning, Finite, Mask, Range, contract
from contracts.strategies import CannotGenerate, inputs_for

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(Sparse|sparse|nested tensors|quantized tensor creation).*:UserWarning"
)


def _message(fn, *args, **kwargs) -> str:
    """The ContractError of ``fn(*args, **kwargs)``, the same on the walk and the fast path."""
    texts = []
    for _ in range(3):
        with pytest.raises(ContractError) as e:
            fn(*args, **kwargs)
        texts.append(str(e.value))
    assert texts[0] == texts[1] == texts[2]
    return texts[0]


def _passes(fn, *args, **kwargs) -> None:
    for _ in range(3):
        fn(*args, **kwargs)


# --- dtype words list exactly what the annotation accepts -------------------------------------


@contract
def _signed(x: Int[Tensor, " B"]) -> None:
    pass


@contract
def _integer(x: Integer[Tensor, " B"]) -> None:
    pass


@contract
def _unsigned(x: UInt[Tensor, " B"]) -> None:
    pass


def test_int_refusing_uint8_does_not_list_uint8_as_expected():
    """Regression: ``Int`` (jaxtyping's signed integers) refused a uint8 tensor with "expected
    dtype integer (int8/16/32/64, uint8), got uint8"."""
    text = _message(_signed, torch.ones(2, dtype=torch.uint8))
    assert text.startswith(
        "_signed(): argument 'x': expected dtype signed integer (int8/16/32/64), got uint8"
    )
    assert "hint: Int is jaxtyping's signed integers; use x.long(), or annotate Integer" in text
    _passes(_integer, torch.ones(2, dtype=torch.uint8))
    assert _message(_integer, torch.ones(2)).startswith(
        "_integer(): argument 'x': expected dtype integer (uint8/16/32/64, int8/16/32/64), "
        "got float32"
    )
    assert "expected dtype unsigned integer (uint8/16/32/64), got int64" in _message(
        _unsigned, torch.ones(2, dtype=torch.int64)
    )


# --- positional-only parameters ---------------------------------------------------------------

_DEFAULT = torch.ones(2)


@contract
def _posonly(x: Float[Tensor, " B"] = _DEFAULT, /, **options) -> Float[Tensor, " B"]:
    return x


def test_a_positional_only_parameter_is_never_read_from_kwargs():
    """Regression: ``f(x=...)`` puts ``x`` in ``**options`` (``x`` is positional-only and keeps
    its default), but the checker read the keyword as the argument: a good call failed."""
    _passes(_posonly, x=torch.ones(2, 2))
    _passes(_posonly, x="not a tensor")
    assert "argument 'x', axis 0: expected size B" not in str(_posonly(torch.ones(3)))
    with pytest.raises(ContractError, match=r"^_posonly\(\): argument 'x': expected 1 axes"):
        _posonly(torch.ones(2, 2), x=torch.ones(2))


# --- dims= values must be sizes ----------------------------------------------------------------


class _Model(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.d_model = d_model

    @contract(dims={"D": "self.d_model"})
    def forward(self, x: Float[Tensor, "B D"]) -> Float[Tensor, "B D"]:
        return x


def test_a_dims_value_that_is_no_size_is_refused():
    """Regression: ``dims={"D": "self.d_model"}`` with ``d_model = None`` (not set yet) left D
    unbound: any width passed."""
    text = _message(_Model(None), torch.ones(2, 3))
    assert text.startswith(
        "_Model.forward(): self: expected dims['D'] = self.d_model, got TypeError: None "
        "(NoneType) is not a size"
    )
    assert "[3] (list) is not a size" in _message(_Model([3]), torch.ones(2, 3))
    assert "2.5 (float) is not a size" in _message(_Model(2.5), torch.ones(2, 3))
    for size in (3, 3.0, np.int64(3), torch.tensor(3)):  # sizes, however they are held
        _passes(_Model(size), torch.ones(2, 3))
        with pytest.raises(ContractError, match=r"axis 1: expected size D=3, got 4"):
            _Model(size)(torch.ones(2, 4))


# --- dicts of tensors, and tuple[X, ...] returns -----------------------------------------------


@contract
def _by_name(
    feats: dict[str, Annotated[Float[Tensor, "B T"], Range(0, 1)]], y: Float[Tensor, " B"]
) -> Float[Tensor, " B"]:
    return y


@contract
def _maybe(feats: Mapping[int, Float[Tensor, " B"] | None]) -> dict[str, Float[Tensor, " B"]]:
    return {str(k): v for k, v in feats.items() if v is not None}


def test_a_dict_of_tensors_checks_every_value_with_the_call_dims():
    """Regression: ``dict[str, Float[Tensor, "B T"]]`` went to beartype, which checks each
    value alone: values of different B passed, and so did a B that disagreed with ``y``."""
    good = {"a": torch.rand(2, 3), "b": torch.rand(2, 3)}
    _passes(_by_name, good, torch.ones(2))
    text = _message(_by_name, {"a": torch.rand(2, 3), "b": torch.rand(4, 3)}, torch.ones(2))
    assert text.startswith("_by_name(): argument \"feats['b']\", axis 0: expected size B=2, got 4")
    assert "B=2 from feats['a'].shape[0], but feats['b'].shape[0]=4" in text
    assert "feats['b']: tensor[4, 3]" in text  # the failing value, summarized
    assert _message(_by_name, good, torch.ones(3)).startswith(
        "_by_name(): argument 'y', axis 0: expected size B=2, got 3"
    )
    assert _message(_by_name, {"a": torch.rand(2, 3) + 1}, torch.ones(2)).startswith(
        "_by_name(): argument \"feats['a']\": expected values in [0, 1]"
    )
    assert _message(_by_name, {1: torch.rand(2, 3)}, torch.ones(2)).startswith(
        "_by_name(): argument 'feats': expected keys of type str, got key 1 (int)"
    )
    assert _message(_by_name, [torch.rand(2, 3)], torch.ones(2)).startswith(
        "_by_name(): argument 'feats': expected a dict of torch.Tensor [B, T] float"
    )
    _passes(_maybe, {0: None, 1: torch.ones(2)})
    assert _message(_maybe, {0: torch.ones(2), 1: torch.ones(3)}).startswith(
        "_maybe(): argument 'feats[1]', axis 0: expected size B=2, got 3"
    )
    with pytest.raises(ContractError, match=r"checked value \"dict\['y'\]\", axis 0: expected "):
        contracts.check({"x": torch.ones(2), "y": torch.ones(3)}, dict[str, Float[Tensor, " B"]])


@contract
def _ragged_return(x: Float[Tensor, " B"]) -> dict[str, Float[Tensor, " B"]]:
    return {"a": x, "b": x[:1]}


@contract
def _ragged_tuple(x: Float[Tensor, " B"]) -> tuple[Float[Tensor, " B"], ...]:
    return (x, x[:1])


def test_dict_and_variadic_tuple_returns_are_checked():
    """Regression: ``-> tuple[X, ...]`` was not checked at all (silently), and ``-> dict[str,
    X]`` checked each value alone."""
    assert _message(_ragged_return, torch.ones(2)).startswith(
        "_ragged_return(): return['b'], axis 0: expected size B=2, got 1"
    )
    assert _message(_ragged_tuple, torch.ones(2)).startswith(
        "_ragged_tuple(): return[1], axis 0: expected size B=2, got 1"
    )


def test_a_dict_argument_is_drawn_by_inputs_for():
    @settings(max_examples=15, deadline=None, database=None)
    @given(inputs_for(_by_name))
    def run(ai):
        args, kwargs = ai
        assert isinstance(kwargs["feats"], dict) and kwargs["feats"]
        _by_name(*args, **kwargs)

    run()


# --- a Range on a Python number may read dims of later arguments --------------------------------


@contract
def _steps(n: Annotated[int, Range(1, "T")], x: Float[Tensor, "B T"]) -> Float[Tensor, " B"]:
    return x[:, 0]


def test_a_python_range_reads_dims_bound_by_later_arguments():
    """Regression: the walk checked ``n`` before ``x`` bound T, so the explanation of a bad
    ``n`` said "dim T is not bound by any shape in this call" (and a plan that always walks
    refused every call)."""
    _passes(_steps, 3, torch.ones(2, 3))
    assert _message(_steps, 5, torch.ones(2, 3)).startswith(
        "_steps(): argument 'n': expected a value in [1, T=3], got 5"
    )
    with pytest.raises(ContractError, match=r"expected a value in \[1, T=3\], got 0"):
        contracts.check(0, Annotated[int, Range(1, "T")], bindings={"T": 3})


# --- expressions that cannot be evaluated are worded, never raised raw ---------------------------


class _NoN(nn.Module):
    @contract
    def forward(self, x: Float[Tensor, "B self.n"]) -> Float[Tensor, "B self.n"]:
        return x


@contract
def _fstring(x: Float[Tensor, "B {n}"], n) -> Float[Tensor, " B"]:
    return x[:, 0]


@contract
def _fstring_other(x: Float[Tensor, "B {m}"], n: int) -> Float[Tensor, " B"]:
    return x[:, 0]


def test_expressions_that_cannot_be_evaluated_are_worded():
    """Regression: a shape dim reading a missing ``self`` attribute raised a raw
    AttributeError; an f-string dim over an argument that is no size raised AnnotationError
    during the call, or garbled an AttributeError into "dim int' object has no attribute 'k is
    unbound"."""
    assert _message(_NoN(), torch.ones(2, 3)).startswith(
        "_NoN.forward(): argument 'x', axis 1: expected size self.n, got 3 (the size cannot "
        "be evaluated: AttributeError: '_NoN' object has no attribute 'n')"
    )
    assert _message(_fstring, torch.ones(2, 3), "import os").startswith(
        "_fstring(): argument 'x', axis 1: expected size {n}, got 3 (the size cannot be "
        "evaluated: it reads 'import os', which is neither a size nor an expression over dims)"
    )
    assert "(the size cannot be evaluated: {m} names no argument of the call)" in _message(
        _fstring_other, torch.ones(2, 3), 3
    )
    _passes(_fstring, torch.ones(2, 3), 3)
    with pytest.raises(ContractError, match=r"AttributeError: 'NoneType' object has no attr"):
        contracts.check(torch.ones(2, 3), Float[Tensor, "B self.n"])


def test_bindings_given_a_variadic_as_a_list():
    """Regression: ``bindings={"*x": [4]}`` refused a matching shape with "expected axes
    *x=[4], got [4]"."""
    contracts.check(torch.ones(4, 3), Float[Tensor, "*x T"], bindings={"*x": [4]})
    with pytest.raises(ContractError, match=r"expected axes \*x=\[5\], got \[4\]"):
        contracts.check(torch.ones(4, 3), Float[Tensor, "*x T"], bindings={"*x": [5]})


# --- tensors of other layouts -------------------------------------------------------------------


@contract
def _unit(x: Annotated[Float[Tensor, "B T"], Range(0, 1)]) -> Float[Tensor, "B T"]:
    return x


@contract
def _valid(m: Annotated[Bool[Tensor, "B T"], Mask()]) -> Bool[Tensor, "B T"]:
    return m


def test_sparse_quantized_and_nested_tensors_are_checked_not_crashed():
    """Regression: a sparse (COO or CSR) or quantized tensor raised torch's NotImplementedError
    from the value check, a nested one a RuntimeError from reading its shape."""
    dense = torch.tensor([[0.0, 1.5], [0.2, 0.0]])
    for x in (dense.to_sparse(), dense.to_sparse_csr()):
        text = _message(_unit, x)
        assert text.startswith(
            "_unit(): argument 'x': expected values in [0, 1], got 1 of 4 values outside it; "
            "finite min=0, max=1.5; first bad at index (0, 1)"
        )
    _passes(_unit, (dense / 2).to_sparse())
    _passes(_unit, torch.tensor([[0.5, 0.0]]).to_sparse())  # an unstored 0 is in [0, 1]
    with pytest.raises(ContractError, match=r"expected values in \[0, 1\]"):
        _unit(torch.tensor([[-0.5, 0.0]]).to_sparse())
    mask = torch.tensor([[True, False], [False, False]])
    assert _message(_valid, mask.to_sparse()).startswith(
        "_valid(): argument 'm', axis 1: expected at least one True (valid) position per row "
        "along axis 1, got 1 of 2 rows have none; first at row (1,)"
    )
    _passes(_valid, torch.eye(2, dtype=torch.bool).to_sparse())
    q = torch.quantize_per_tensor(torch.tensor([[0.0, 0.5], [0.2, 3.0]]), 0.1, 0, torch.quint8)
    assert contract(lambda x: x)  # (a bare lambda is fine)

    @contract
    def shaped(x: Annotated[Tensor, Range(0, 1)]) -> Tensor:
        return x

    assert "got 1 of 4 values outside it; finite min=0, max=3" in _message(shaped, q)
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    text = _message(_unit, nested)
    assert text.startswith(
        "_unit(): argument 'x': expected a tensor [B, T], got a nested tensor (its components "
        "differ in size: it has no one shape to check)"
    )


def test_a_complex_value_failure_counts_elements_not_parts():
    """Regression: one complex element with a NaN imaginary part read "1 of 4 values outside
    it ... first bad at index (1, 1)" (the real view's count and index)."""

    @contract
    def spectrum(x: Annotated[Complex[Tensor, " B"], Finite()]) -> None:
        pass

    text = _message(spectrum, torch.tensor([1 + 1j, complex(1, float("nan"))]))
    assert text.split("\n")[0].endswith(
        "spectrum(): argument 'x': expected finite values (no NaN/Inf), got 1 of 2 values "
        "outside it; non-finite: 1 NAN; first bad at index (1,)"
    )


# --- message details -------------------------------------------------------------------------


_WEIGHT = torch.ones(3)


@contract
def _scaled(x: Float[Tensor, "B T"], w: Float[Tensor, " T"] = _WEIGHT) -> Float[Tensor, "B T"]:
    return x * w


def test_an_argument_left_to_its_default_is_shown_as_such():
    """Regression: a failing default had no value line, so nothing said the caller never
    passed it."""
    text = _message(_scaled, torch.ones(2, 4))
    assert text.startswith("_scaled(): argument 'w', axis 0: expected size T=4, got 3")
    assert "\n  w (its default): tensor[3] f32" in text
    assert "(its default)" not in _message(_scaled, torch.ones(2, 4), torch.ones(3))


def test_a_python_hint_failure_summarizes_the_tensors_in_it():
    """Regression: a fixed-length tuple hint holding a tensor printed the tensor's whole repr
    (several lines) in the actual value and in the hint."""

    @contract
    def pair(p: tuple[Float[Tensor, " B"], int]) -> None:
        pass

    text = _message(pair, (torch.ones(2, 2, dtype=torch.int64), 3))
    assert "tensor([" not in text
    assert "got tuple (tensor[2, 2] i64 cpu" in text
    assert "hint: p[0] = tensor[2, 2] i64 cpu" in text


# --- inputs_for draws within what the dtype holds -------------------------------------------------


def test_inputs_for_draws_within_the_dtype():
    """Regression: ``Range(-5, 5)`` on a UInt8 tensor raised torch's "from is out of bounds for
    unsigned char" while drawing; a float16 ``Range(None, 70000)`` drew inf (refused)."""

    @contract(generate=False)
    def small(x: Annotated[UInt8[Tensor, " B"], Range(-5, 5)]) -> None:
        pass

    @contract(generate=False)
    def half(x: Annotated[Float[Tensor, " B"], Range(60000, 70000)]) -> None:
        pass

    @contract(generate=False)
    def huge(x: Annotated[Float[Tensor, " B"], Range(1e300, None)]) -> None:
        pass

    for fn in (small, half):

        @settings(max_examples=15, deadline=None, database=None)
        @given(inputs_for(fn))
        def run(ai):
            args, kwargs = ai
            fn(*args, **kwargs)  # noqa: B023 (run at once)

        run()

    @settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(inputs_for(huge))
    def never(ai):
        pass

    with pytest.raises(CannotGenerate, match=r"no float32 value lies in \[1e\+300, ∞\), the Ra"):
        never()


# --- attach -------------------------------------------------------------------------------------


def test_a_layer_on_a_subclass_or_instance_sees_the_base_contract_removed():
    """Regression: attaching to a subclass (or an instance) after the base (class) had a
    contract captured the base's checking wrapper; removing the base's contract left it
    checking through the subclass."""

    class Base(nn.Module):
        def forward(self, x):
            return x * 2

    class Sub(Base):
        pass

    on_base = contracts.attach(Base, "forward", x=Float[Tensor, "B 4"])
    on_sub = contracts.attach(Sub, "forward", returns=Float[Tensor, "B 4"])
    sub = Sub()
    with pytest.raises(ContractError, match=r"argument 'x', axis 1: expected size 4, got 5"):
        sub(torch.ones(2, 5))
    on_base.remove()
    with pytest.raises(ContractError, match=r"Sub\.forward\(\): return, axis 1"):
        sub(torch.ones(2, 5))  # only the subclass's contract is left
    on_sub.remove()
    assert "forward" not in Sub.__dict__
    on_class = contracts.attach(Base, "forward", x=Float[Tensor, "B 4"])
    base = Base()
    on_instance = contracts.attach(base, "forward", returns=Float[Tensor, "B 3"])
    with pytest.raises(ContractError, match=r"return, axis 1: expected size 3, got 4"):
        base(torch.ones(2, 4))
    on_class.remove()
    with pytest.raises(ContractError, match=r"return, axis 1: expected size 3, got 5"):
        base(torch.ones(2, 5))  # the instance's contract only: x of width 5 is fine now
    on_instance.remove()
    assert "forward" not in vars(base)
    base(torch.ones(2, 5))


def test_annotations_that_cannot_be_matched_to_arguments_are_warned_about():
    """Regression: attaching parameter annotations to a builtin (no readable signature)
    checked them only when passed by keyword, silently; numpy annotations were skipped
    silently too."""
    owner = types.SimpleNamespace(relu=torch.relu)
    with pytest.warns(ContractWarning, match=r"cannot be read \(a builtin\?\).*'input' is "):
        handle = contracts.attach(owner, "relu", input=Float[Tensor, " B"])
    handle.remove()
    with pytest.warns(ContractWarning, match=r"argument 'x': ndarray annotations are not check"):

        @contract
        def numpy_in(x: Float[np.ndarray, " B"]) -> None:
            pass


def test_no_new_warning_for_plain_contracts():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContractWarning)

        @contract
        def fine(x: Float[Tensor, " B"], d: dict[str, Float[Tensor, " B"]]) -> None:
            pass


# --- torch.compile: Python arguments ------------------------------------------------------------


@contract
def _count(y: Float[Tensor, "B T"], n: Annotated[int, Range(1, "T")]) -> Float[Tensor, " B"]:
    return y[:, 0] * n


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_python_arguments_are_checked_under_compile(dynamic):
    """Regression: under torch.compile the class and Range of a Python-number argument were
    not checked at all (``n=7`` for ``Range(1, "T")`` passed)."""
    torch._dynamo.reset()
    f = torch.compile(_count, backend="eager", fullgraph=True, dynamic=dynamic)
    f(torch.ones(2, 3), 2)
    f(torch.ones(3, 4), 3)
    for bad, words in ((5, "expected a value in [1, T]"), (2.0, "expected int")):
        with pytest.raises(Exception) as e:
            f(torch.ones(2, 3), bad)
        assert f"_count(): argument 'n': {words}" in str(e.value)
    torch._dynamo.reset()
    g = torch.compile(_count, backend="eager", fullgraph=False, dynamic=dynamic)
    with pytest.raises(
        ContractError, match=re.escape("argument 'n': expected a value in [1, T=3]")
    ):
        g(torch.ones(2, 3), 5)


def test_annotation_error_is_never_raised_by_a_call():
    """What a call can get wrong is a ContractError; AnnotationError is for the contract."""
    with pytest.raises(ContractError):
        _fstring(torch.ones(2, 3), "(")
    with pytest.raises(AnnotationError):
        contracts.check(torch.ones(2), "Float[Tensor, 'B']")


@contract
def _forgot(x: Float[Tensor, " B"]) -> Float[Tensor, " B"]:
    x * 2  # (the missing return is the point)


def test_a_none_hint_names_what_is_not_optional():
    """Regression: a function returning None (a missing return) was told "this argument is
    not Optional", as was a None given to contracts.check."""
    assert _message(_forgot, torch.ones(2)).endswith(
        "hint: the function returned None: a missing return statement? (annotate the return "
        "`X | None` if None is meaningful)"
    )
    with pytest.raises(ContractError, match=r"hint: h is not Optional; annotate it `X \| None`"):
        contracts.check(None, Float[Tensor, " B"], name="h")


def test_contract_on_a_class_is_refused():
    """Regression: ``@contract`` on a class turned it into a function (isinstance and
    subclassing broke) and checked nothing (the class's hints are not its constructor's)."""
    with pytest.raises(AnnotationError, match=r"decorates functions and methods, not classes"):

        @contract
        class Holder:
            def __init__(self, x: Float[Tensor, " B"]) -> None:
                self.x = x


@contract
def _deep_mask(m: Annotated[Bool[Tensor, "*b T"], Mask(axis=2)]) -> None:
    pass


@contract
def _any_mask(m: Annotated[Bool[Tensor, "..."], Mask()]) -> None:
    pass


def test_a_mask_axis_the_tensor_lacks_is_refused():
    """Regression: ``Mask(axis=2)`` on ``"*b T"`` given a 2-D mask passed (the fast check
    tested the columns instead), and a 0-d mask for ``"..."`` raised ZeroDivisionError."""
    assert _message(_deep_mask, torch.ones(2, 3, dtype=torch.bool)).startswith(
        "_deep_mask(): argument 'm': expected a mask with an axis 2 to check (at least 3 axes) "
        "[*b, T], got 2 axes [2, 3]"
    )
    _passes(_deep_mask, torch.ones(2, 3, 4, dtype=torch.bool))
    assert "got 0 axes []" in _message(_any_mask, torch.tensor(False))

    @settings(max_examples=15, deadline=None, database=None)
    @given(inputs_for(_deep_mask))
    def drawn(ai):
        _deep_mask(*ai[0], **ai[1])

    drawn()


@contract
def _maybe_pair(
    x: Float[Tensor, " B"], give: bool
) -> tuple[Float[Tensor, " B"], Float[Tensor, " B"]] | None:
    return (x, x[:1]) if give else None


def test_an_optional_tuple_return_may_be_none():
    """Regression: ``-> tuple[X, Y] | None`` refused a None return ("expected a tuple of 2,
    got NoneType")."""
    _passes(_maybe_pair, torch.ones(2), False)
    assert _message(_maybe_pair, torch.ones(2), True).startswith(
        "_maybe_pair(): return[1], axis 0: expected size B=2, got 1"
    )
    torch._dynamo.reset()
    torch.compile(_maybe_pair, backend="eager", fullgraph=True)(torch.ones(2), False)


@contract
def _batched(x: Float[Tensor, "*b C"], y: Float[Tensor, "*b C"]) -> Float[Tensor, " *b"]:
    return x.sum(-1)


def test_a_variadic_mismatch_names_the_axes_it_spans():
    """Regression: the provenance line read "y.shape[0]=[2, 5]" for the axes y.shape[0:2]."""
    text = _message(_batched, torch.ones(2, 3, 4), torch.ones(2, 5, 4))
    assert text.startswith("_batched(): argument 'y', axis 0: expected axes *b=[2, 3], got [2, 5]")
    assert "*b=[2, 3] from x.shape[0:2], but y.shape[0:2]=[2, 5]" in text


@pytest.mark.slow
def test_a_variadic_mismatch_under_dynamic_compile_is_the_eager_error():
    """Regression: with ``dynamic=True`` (fullgraph=False) a ``*b`` mismatch reached the caller
    as a bare RuntimeError worded "axis -2: expected size *b": the compiled check formatted its
    message key from a size Dynamo held as a symbol, broke the graph there and ran the rest of
    the compiled check eagerly."""
    torch._dynamo.reset()
    g = torch.compile(_batched, backend="eager", dynamic=True)
    g(torch.ones(2, 3, 4), torch.ones(2, 3, 4))
    with pytest.raises(ContractError, match=r"argument 'y', axis 0: expected axes \*b=\[2, 3\]"):
        g(torch.ones(2, 3, 4), torch.ones(2, 5, 4))
    torch._dynamo.reset()
    f = torch.compile(_batched, backend="eager", fullgraph=True, dynamic=True)
    with pytest.raises(Exception, match=r"_batched\(\): argument 'y', axis 0: expected axes \*b"):
        f(torch.ones(2, 3, 4), torch.ones(2, 5, 4))
