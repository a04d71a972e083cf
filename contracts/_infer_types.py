"""What contract inference proposes: one annotation per argument, one contract per class.

Example:
    >>> SlotProposal("x", "in", True, ["B", "T"], "Float32", "float32", "Finite()").annotation()
    'Annotated[Float32[Tensor, "B T"], Finite()]'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["JT_DTYPE", "JT_KIND", "ContractProposal", "Inference", "SlotProposal"]

JT_DTYPE = {
    torch.float32: "Float32",
    torch.float64: "Float64",
    torch.float16: "Float16",
    torch.bfloat16: "BFloat16",
    torch.int64: "Int64",
    torch.int32: "Int32",
    torch.int16: "Int16",
    torch.int8: "Int8",
    torch.uint8: "UInt8",
    torch.bool: "Bool",
    torch.complex64: "Complex64",
    torch.complex128: "Complex128",
}
JT_KIND = {"float": "Float", "int": "Int", "bool": "Bool", "complex": "Complex"}


@dataclass
class SlotProposal:
    """The proposed annotation of one argument or return element."""

    name: str  # "features", "return", "return[0]", "return['logits']"
    role: str  # "in" or "out"
    tensor: bool
    dims: list[str] = field(default_factory=list)  # "B", "T", "6", "*b0"
    dtype_cls: str = ""  # jaxtyping class: "Float32", "Int", ...
    dtype_words: str = ""  # "float32"
    constraint: str = ""  # Python source: "Finite()", "Mask()", "Range(0, 'V-1')"
    constraint_words: str = "any"
    optional: bool = False
    observed: str = ""  # "[-1.98, 2.01]"
    attachable: bool = True
    note: str = ""
    pytype: str = ""  # non-tensor: "int", "bool", "NoneType", ...
    key: Any = None  # tuple index / dict key for return elements

    def annotation(self) -> str:
        """Python source of the annotation (``Annotated[Float32[Tensor, "B T"], Finite()]``)."""
        if not self.tensor:
            return "object"
        shape = " ".join(self.dims)
        if len(self.dims) == 1 and self.dims[0].isidentifier():
            shape = " " + shape  # jaxtyping's convention: not a forward reference
        ann = f'{self.dtype_cls}[Tensor, "{shape}"]'
        if self.constraint:
            ann = f"Annotated[{ann}, {self.constraint}]"
        if self.optional:
            ann = f"{ann} | None"
        return ann

    def shape_words(self) -> str:
        if not self.tensor:
            return "scalar" if self.pytype in ("int", "float", "bool", "complex") else "-"
        return "[" + ", ".join(self.dims) + "]" if self.dims else "[] (scalar)"


@dataclass
class ContractProposal:
    """The proposed contract of one class's ``forward``."""

    cls: type
    paths: list[str]
    inputs: list[SlotProposal]
    outputs: list[SlotProposal]
    return_kind: str  # "single", "tuple", "dict", "none"
    bound: dict[str, str]  # dim name -> "self.cfg.d_model"
    notes: list[str] = field(default_factory=list)
    attachable: bool = True  # False: shown in Markdown only

    @property
    def module(self) -> str:
        return self.cls.__module__

    @property
    def qualname(self) -> str:
        return self.cls.__qualname__


@dataclass
class Inference:
    """What inference found: contracts, the dims (with sizes per batch), and warnings."""

    contracts: list[ContractProposal]
    dims: dict[str, list[int | None]]  # varying dim -> size per batch
    dim_where: dict[str, str]  # varying dim -> first position it was seen at
    warnings: list[str]
    n_batches: int
    hooked: int
    seconds: float = 0.0
    literals: list[str] = field(default_factory=list)  # "Cls.forward arg axis i = 12", all
