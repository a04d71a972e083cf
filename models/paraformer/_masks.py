"""Mask utilities and a light shape assertion (seed 004, "Utility Functions")."""

from __future__ import annotations

from typing import Annotated

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from contracts import Mask, Range, check, contract

from ._config import BatchError

__all__ = ["apply_mask", "assert_shape", "create_causal_mask", "create_padding_mask"]


# generate=False: valid inputs need lengths <= max_len, a relation between a tensor's values
# and a plain int; tests/models/paraformer/test_masks.py draws them by hand instead.
@contract(generate=False)
def create_padding_mask(
    lengths: Annotated[Int[Tensor, " B"], Range(1, None)],
    max_len: Annotated[int, Range(1, None)],
) -> Annotated[Bool[Tensor, "B T"], Mask()]:
    """Padding mask, True at valid positions: ``mask[b, t] = t < lengths[b]``.

    Args:
        lengths: valid length of each row, each in ``[1, max_len]``.
        max_len: T, the padded length.

    Returns:
        ``[B, max_len]`` bool mask.

    Example:
        >>> create_padding_mask(torch.tensor([1, 3]), 3).tolist()
        [[True, False, False], [True, True, True]]
    """
    if lengths.numel() == 0:
        raise BatchError("create_padding_mask: lengths is empty (a batch of 0 sequences)")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1:
        raise BatchError(
            f"create_padding_mask: lengths holds {lo}; zero-length sequences are not allowed "
            "(drop them in the dataset or collate_fn)"
        )
    if hi > max_len:
        raise BatchError(
            f"create_padding_mask: lengths holds {hi} > max_len={max_len}: mask and sequence "
            "length disagree (build the mask from the padded tensor's own length)"
        )
    positions = torch.arange(max_len, device=lengths.device)  # (T,)
    return positions[None, :] < lengths[:, None]  # (B, T)


@contract(strategies={"size": lambda st: st.integers(1, 12)})
def create_causal_mask(
    size: Annotated[int, Range(1, None)],
) -> Annotated[Bool[Tensor, "T T"], Mask()]:
    """Lower-triangular causal mask *including the diagonal* (True = may attend).

    A mask built with ``torch.tril(..., diagonal=-1)`` leaves row 0 without any valid key, so
    softmax over it is NaN; the ``Mask()`` contract on the result rejects that.

    Example:
        >>> create_causal_mask(2).tolist()
        [[True, False], [True, True]]
    """
    return torch.ones(size, size, dtype=torch.bool).tril()  # (T, T), diagonal included


@contract
def apply_mask(
    tensor: Float[Tensor, "B T *rest"],
    mask: Annotated[Bool[Tensor, "B T"], Mask()],
) -> Float[Tensor, "B T *rest"]:
    """Zero ``tensor`` at padded positions (``mask`` False), keeping its shape.

    Example:
        >>> apply_mask(torch.ones(1, 2, 3), torch.tensor([[True, False]])).sum().item()
        3.0
    """
    m = mask.reshape(*mask.shape, *([1] * (tensor.dim() - 2)))  # (B, T, 1, ...)
    return tensor.masked_fill(~m, 0.0)


def assert_shape(
    tensor: Tensor, expected: str, name: str = "tensor", bindings: dict[str, int] | None = None
) -> None:
    """Raise :class:`contracts.ContractError` unless ``tensor`` has the shape ``expected``.

    ``expected`` is a pattern like ``"B,T,D"`` or ``"B T 80"``: names bind to sizes (shared
    through ``bindings`` across calls, which is updated in place), integers must match, ``_``
    matches anything. A thin spelling of :func:`contracts.check` (inside a contracted call
    without ``bindings``, the names share that call's bindings).

    Example:
        >>> dims = {}
        >>> assert_shape(torch.zeros(2, 5, 8), "B,T,D", "x", dims); dims
        {'B': 2, 'T': 5, 'D': 8}
    """
    pattern = " ".join(expected.replace(",", " ").split())
    check(tensor, Shaped[Tensor, pattern], name=name, bindings=bindings)
