"""State outside the model's tensors that a replay must not change: a GradScaler, objects with
``state_dict``/``load_state_dict`` (optimizers, schedulers, user objects), and the plain Python
attributes of the model's modules.

The scaler and the stateful objects are saved before every step (their pre-step state is what a
replay starts from) and, on a failing step, again after it (what the user's step left, put back
when localization is done). Module attributes are compared only on the failure path: a replay
that leaves a different value than the step did is named in ``report.notes``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ModuleAttrs", "ObjectStates", "check_stateful"]

_MAX_NOTED = 5


# (read, write) method names of the objects ``stateful`` accepts, tried in order: optimizers,
# schedulers and user objects; torch.Generator and numpy's RandomState; random.Random and the
# ``random`` module itself
_PROTOCOLS = (
    ("state_dict", "load_state_dict"),
    ("get_state", "set_state"),
    ("getstate", "setstate"),
)


def _protocol(obj: Any) -> tuple[str, str] | None:
    for get, put in _PROTOCOLS:
        if callable(getattr(obj, get, None)) and callable(getattr(obj, put, None)):
            return get, put
    return None


def check_stateful(stateful: Sequence[Any], error: type[Exception]) -> list[Any]:
    """``stateful`` as a list; each item must have ``state_dict``/``load_state_dict`` (an
    optimizer, a scheduler), ``get_state``/``set_state`` (a ``torch.Generator``) or
    ``getstate``/``setstate`` (``random.Random``, the ``random`` module)."""
    if isinstance(stateful, (str, bytes)) or not isinstance(stateful, Sequence):
        raise error(
            f"NanWatch(stateful=...): expected a list or tuple of objects, got "
            f"{type(stateful).__name__}; hint: stateful=[optimizer, scheduler]"
        )
    for i, obj in enumerate(stateful):
        if _protocol(obj) is None:
            raise error(
                f"NanWatch(stateful=[...]): item {i} ({type(obj).__name__}) has no "
                "state_dict()/load_state_dict() (nor get_state()/set_state(), "
                "getstate()/setstate()); only such objects can be restored around replays"
            )
    return list(stateful)


def _clone(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict) and not value:
        return copy.copy(value)  # keeps a defaultdict's factory; nothing inside to copy
    return copy.deepcopy(value)


class ObjectStates:
    """A snapshot of a GradScaler's attributes and of every stateful object's ``state_dict``."""

    def __init__(self, scaler: Any, stateful: list[Any]) -> None:
        self.scaler = scaler
        # GradScaler keeps its state in attributes (scale, growth tracker, per-optimizer stage
        # and found-inf); its state_dict() leaves the per-optimizer part out, so copy them all
        self.scaler_vars = (
            {k: _clone(v) for k, v in vars(scaler).items()} if scaler is not None else None
        )
        self.states = []
        for obj in stateful:
            get, put = _protocol(obj) or _PROTOCOLS[0]
            self.states.append((getattr(obj, put), _clone(getattr(obj, get)())))

    def restore(self) -> None:
        """Put the snapshot back (the snapshot itself stays intact for a later restore)."""
        if self.scaler is not None and self.scaler_vars is not None:
            for k, v in self.scaler_vars.items():
                setattr(self.scaler, k, _clone(v))
        for put, state in self.states:
            put(_clone(state))  # load_state_dict may keep references


_MAX_COPY = 1000  # containers larger than this are compared by identity, not copied


def _snapshot(value: Any) -> Any:
    """A copy of a small attribute value (so in-place changes show); big or uncopyable values,
    and values whose copy does not compare equal to them (objects compared by identity, such
    as a ``torch.compile`` wrapper's ``dynamo_ctx``, or containers holding such objects), are
    kept by reference (identity comparison only): a copy of those would always look changed,
    and restoring it would swap the user's object for a copy."""
    if isinstance(value, (int, float, bool, str, bytes, type(None), torch.dtype, torch.device)):
        return value
    try:
        if hasattr(value, "__len__") and len(value) > _MAX_COPY:
            return value
        dup = copy.deepcopy(value)
    except Exception:  # not copyable
        return value
    return dup if _same(dup, value) else value


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if type(a) is float and type(b) is float and math.isnan(a) and math.isnan(b):
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # arrays and other values without a truth value
        return False


class ModuleAttrs:
    """The public non-tensor, non-module attributes of every module of ``model`` (copies)."""

    def __init__(self, model: nn.Module) -> None:
        self.values: dict[tuple[str, str], tuple[nn.Module, Any]] = {}
        for name, mod in model.named_modules():
            for key, value in vars(mod).items():
                if key.startswith("_") or key == "training":
                    continue
                if isinstance(value, (Tensor, nn.Module)):
                    continue
                self.values[(name, key)] = (mod, _snapshot(value))
        self.model = model

    def restore_and_describe(self) -> list[str]:
        """Put back every attribute that changed since the snapshot; say which did."""
        changed: list[str] = []
        now = ModuleAttrs(self.model).values
        for (name, key), (mod, value) in self.values.items():
            cur = now.pop((name, key), (None, _MISSING))[1]
            if not _same(cur, value):
                changed.append(f"{_path(name, key)} ({_short(value)} -> {_short(cur)})")
                setattr(mod, key, value)
        for (name, key), (mod, value) in now.items():  # attributes the replays added
            changed.append(f"{_path(name, key)} (absent -> {_short(value)})")
            delattr(mod, key)
        if not changed:
            return []
        more = f" and {len(changed) - _MAX_NOTED} more" if len(changed) > _MAX_NOTED else ""
        return [
            "module attributes changed between the step and its replays: "
            + "; ".join(changed[:_MAX_NOTED])
            + more
            + ". step_fn (or a forward) keeps Python state between calls, so the replay may not "
            "match the step; each was restored to the value the step left"
        ]


class _Missing:
    def __repr__(self) -> str:
        return "absent"


_MISSING = _Missing()


def _path(name: str, key: str) -> str:
    return f"{name}.{key}" if name else key


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."
