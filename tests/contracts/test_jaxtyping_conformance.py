"""Conformance with jaxtyping: each documented shape form and dtype class, run through both
jaxtyping + beartype and @contract on the same inputs; they must agree on accept / refuse."""

from __future__ import annotations

import jaxtyping
import pytest
import torch
from beartype import beartype
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxtyping import Float, Shaped, jaxtyped
from torch import Tensor

from contracts import ContractError, contract

pytestmark = pytest.mark.contracts

# (id, [shape of each argument]) -- every form of jaxtyping's array-annotation documentation
FORMS = [
    ("named", ["B T", "B T"]),
    ("fixed", ["3 T", "T"]),
    ("anonymous", ["_ T", "B T"]),
    ("anonymous-named", ["_foo T", "B T"]),
    ("ellipsis", ["... C", "C"]),
    ("anonymous-variadic", ["*_ C", "C"]),
    ("variadic", ["*batch C", "*batch C"]),
    ("broadcast-named", ["#B T", "B T"]),
    ("broadcast-named-both", ["#B", "#B"]),
    ("broadcast-fixed", ["#3 T", "T"]),
    ("broadcast-variadic", ["*#batch", "*#batch"]),
    ("broadcast-variadic-mixed", ["*#batch C", "*batch C"]),
    ("documentation-name", ["rows=3 cols", "cols"]),
    ("symbolic", ["T", "T-1"]),
    ("symbolic-product", ["B T", "B*T"]),
    ("scalar", ["", "B"]),
]

sizes = st.integers(1, 3)
shapes = st.lists(sizes, min_size=0, max_size=4).map(tuple)


def _pair(specs: list[str], dtype_cls=Shaped):
    names = [f"a{i}" for i in range(len(specs))]
    env: dict = {}
    exec(f"def f({', '.join(names)}):\n    return None\n", env)
    f = env["f"]
    f.__annotations__ = {n: dtype_cls[Tensor, s] for n, s in zip(names, specs)}
    jt = jaxtyped(typechecker=beartype)(f)
    env2: dict = {}
    exec(f"def f({', '.join(names)}):\n    return None\n", env2)
    g = env2["f"]
    g.__annotations__ = dict(f.__annotations__)
    return jt, contract(g)


def _accepts(fn, *args) -> bool:
    try:
        fn(*args)
    except (ContractError, jaxtyping.TypeCheckError) as e:
        assert isinstance(e, (ContractError, jaxtyping.TypeCheckError))
        return False
    return True


@pytest.mark.parametrize(("form", "specs"), FORMS, ids=[f for f, _ in FORMS])
def test_shape_forms_agree_with_jaxtyping(form, specs):
    jt, ct = _pair(specs)

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(st.tuples(*[shapes for _ in specs]))
    def agree(arg_shapes):
        args = [torch.zeros(s) for s in arg_shapes]
        assert _accepts(jt, *args) == _accepts(ct, *args), (form, arg_shapes)

    agree()


def test_fstring_dims_read_the_arguments():
    def f(size: int, x: Float[Tensor, "{size} C"]) -> None:
        return None

    jt, ct = jaxtyped(typechecker=beartype)(f), contract(f)
    for size, shape in [(2, (2, 3)), (2, (3, 3)), (4, (4, 1))]:
        x = torch.zeros(shape)
        assert _accepts(jt, size, x) == _accepts(ct, size, x), (size, shape)
    with pytest.raises(ContractError, match=r"argument 'x', axis 0: expected size \{size\}=2"):
        ct(2, torch.zeros(3, 3))


def test_fstring_dims_read_self():
    class M:
        n = 2

        def f(self, x: Float[Tensor, "{self.n}+3"]) -> None:
            return None

    jt = jaxtyped(typechecker=beartype)(M.f)
    ct = contract(M.f)
    for k in (4, 5, 6):
        x = torch.zeros(k)
        assert _accepts(jt, M(), x) == _accepts(ct, M(), x), k


DTYPE_CLASSES = [
    "Shaped", "Bool", "Num", "Inexact", "Float", "BFloat16", "Float16", "Float32", "Float64",
    "Complex", "Complex64", "Complex128", "Integer", "UInt", "UInt8", "Int", "Int8", "Int16",
    "Int32", "Int64", "Real",
]  # fmt: skip
TORCH_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
    torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
]  # fmt: skip


@pytest.mark.parametrize("cls_name", DTYPE_CLASSES)
def test_dtype_classes_agree_with_jaxtyping(cls_name):
    jt, ct = _pair(["B"], getattr(jaxtyping, cls_name))
    for dt in TORCH_DTYPES:
        x = torch.zeros(2, dtype=dt)
        assert _accepts(jt, x) == _accepts(ct, x), (cls_name, dt)
