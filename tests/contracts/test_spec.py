"""The pure parser of shape strings and bound expressions (no tensors involved)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts._spec import (
    ANY,
    ELLIPSIS,
    EXPR,
    FIXED,
    NAME,
    VARIADIC,
    Dim,
    compile_expr,
    parse_shape,
)

PURE = ["_spec.py", "_plan.py", "_constraints.py", "_errors.py", "_registry.py", "_config.py"]


def test_kinds_of_every_token():
    dims = parse_shape("B 80 T-1 _ _pad *batch")
    assert [d.kind for d in dims] == [NAME, FIXED, EXPR, ANY, ANY, VARIADIC]
    assert dims[0].value == "B" and dims[1].value == 80 and dims[5].value == "batch"
    assert dims[2].value.source == "T-1" and dims[2].value.names == {"T"}
    assert parse_shape("... C") == (Dim(ELLIPSIS, None), Dim(NAME, "C"))
    assert parse_shape("") == ()


def test_broadcast_marker():
    (d,) = parse_shape("#B")
    assert d.kind == NAME and d.broadcast
    (f,) = parse_shape("#4")
    assert f.kind == FIXED and f.value == 4 and f.broadcast


def test_str_round_trips_the_tokens():
    assert [str(d) for d in parse_shape("B 80 T-1 *rest")] == ["B", "80", "T-1", "*rest"]


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ("*a *b", "at most one variadic"),
        ("... *b", "at most one variadic"),
        ("*", "'\\*' needs a name"),
        ("##B", "uses # twice"),
        ("#_", "both anonymous and broadcastable"),
        ("*4", "cannot be variadic"),
        ("?B", "PyTree path"),
        ("{1+1}", "braces must hold an argument name"),
        ("B T+", "malformed contract expression 'T\\+'"),
        ("lambda:1", "malformed contract expression"),
    ],
)
def test_malformed_shapes_name_the_token(shape, match):
    with pytest.raises(TypeError, match=match):
        parse_shape(shape)


def test_expressions_evaluate_with_bindings_and_self():
    class M:
        n_bins = 7

    assert compile_expr("V-1")({"V": 10}) == 9
    assert compile_expr("self.n_bins // 2 + T")({"T": 3}, M()) == 6
    assert compile_expr("max(T, 4) * 2")({"T": 3}) == 8
    e = compile_expr("self.n_bins")
    assert e.uses_self and e.names == frozenset()


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("__import__('os')", "only len\\(\\), min\\(\\) and max\\(\\) may be called"),
        ("x.y", "attributes may only be read from self"),
        ("'a'", "constant 'a' is not a number"),
        ("T if T else 1", "IfExp is not allowed"),
        ("T +", "malformed contract expression 'T \\+'"),
    ],
)
def test_unsafe_or_bad_expressions_are_refused(source, match):
    with pytest.raises(TypeError, match=match):
        compile_expr(source)


@given(st.lists(st.sampled_from(["B", "T", "80", "_", "T-1", "#C", "2*D"]), max_size=6))
def test_parse_keeps_one_dim_per_token(tokens):
    dims = parse_shape(" ".join(tokens))
    assert len(dims) == len(tokens)
    assert all(d.kind in (NAME, FIXED, ANY, EXPR) for d in dims)


@pytest.mark.parametrize("name", PURE)
def test_plan_side_is_torch_free(name):
    """The plan (parse + compile) must not import torch: strategies and docs read it alone."""
    src = (Path(__file__).resolve().parents[2] / "contracts" / name).read_text()
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add((node.module or "").split(".")[0])
    assert "torch" not in imported, f"contracts/{name} imports torch"
