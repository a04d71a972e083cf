"""torchdx contracts: runtime tensor contracts on jaxtyping annotations.

Shapes and dtypes come from jaxtyping (``Float[Tensor, "B T F"]``), value constraints from
``typing.Annotated`` metadata (``Range``, ``Finite``, ``Mask``, ``Probability``). Checks are
parsed once at decoration and run in a few microseconds; a violation raises
:class:`ContractError` naming the function, argument, axis, expected vs actual, where each dim
binding came from, and a hint.

Example:
    >>> from typing import Annotated
    >>> import torch
    >>> from torch import Tensor
    >>> from jaxtyping import Float, Bool
    >>> from contracts import contract, Mask
    >>> @contract
    ... def pool(x: Float[Tensor, "B T F"], mask: Annotated[Bool[Tensor, "B T"], Mask()]
    ...          ) -> Float[Tensor, "B F"]:
    ...     m = mask.unsqueeze(-1).float()
    ...     return (x * m).sum(1) / m.sum(1)
    >>> pool(torch.zeros(4, 100, 80), torch.ones(2, 100, dtype=torch.bool))
    Traceback (most recent call last):
    contracts.ContractError: pool(): argument 'mask', axis 0: expected size B=4, got 2 ...
"""

from ._attach import Attachment as Attachment
from ._attach import attach as attach
from ._config import MODES as MODES
from ._config import ModeError as ModeError
from ._config import get_mode as get_mode
from ._config import mode as mode
from ._config import set_mode as set_mode
from ._constraints import Constraint as Constraint
from ._constraints import Finite as Finite
from ._constraints import Mask as Mask
from ._constraints import Probability as Probability
from ._constraints import Range as Range
from ._decorator import contract as contract
from ._errors import AnnotationError as AnnotationError
from ._errors import ContractError as ContractError
from ._errors import TorchdxError as TorchdxError
from ._infer_record import InferTarget as InferTarget
from ._inline import check as check
from ._inputs import DeviceError as DeviceError
from ._inputs import DtypeError as DtypeError
from ._inputs import InputError as InputError
from ._plan import ContractWarning as ContractWarning
from ._registry import example as example
from ._summary import SummaryError as SummaryError
from ._summary import summarize as summarize

__all__ = [
    "MODES",
    "AnnotationError",
    "Attachment",
    "Constraint",
    "ContractError",
    "ContractWarning",
    "DeviceError",
    "DtypeError",
    "Finite",
    "InferTarget",
    "InputError",
    "Mask",
    "ModeError",
    "Probability",
    "Range",
    "SummaryError",
    "TorchdxError",
    "attach",
    "check",
    "contract",
    "example",
    "get_mode",
    "mode",
    "set_mode",
    "summarize",
]
