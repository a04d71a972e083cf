"""Module attributes for contract inference: which ints a module holds, and what to call them.

A fixed size is bound to an attribute that holds it (``self.d_model``, ``self.cfg.n_mels``): the
module's own ints and the ints (fields and properties) of config-like objects it holds, not its
submodules. Dim-like names win when several attributes hold the value.

Example:
    >>> attr_dim_name("self.cfg.d_model"), attr_dim_name("self.vocab_size")
    ('D', 'V')
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["INDEX_ATTRS", "PRIORITY", "attr_dim_name", "attr_rank", "index_hi", "int_attrs"]

# attribute names -> dim names (first match wins)
_ATTR_NAMES = [
    ("vocab", "V"),
    ("num_embeddings", "V"),
    ("n_tokens", "V"),
    ("classes", "V"),
    ("mel", "M"),
    ("in_channels", "C_in"),
    ("out_channels", "C_out"),
    ("in_features", "F_in"),
    ("out_features", "F_out"),
    ("channel", "C"),
    ("freq", "F"),
    ("feat", "F"),
    ("head", "H"),
    ("d_model", "D"),
    ("hidden", "D"),
    ("embed_dim", "D"),
    ("embedding_dim", "D"),
    ("emb", "E"),
]
# preferred attributes when several hold the same value (earlier is better)
PRIORITY = [
    "vocab",
    "num_embeddings",
    "d_model",
    "hidden_size",
    "embed_dim",
    "embedding_dim",
    "n_mels",
    "n_feats",
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "num_channels",
    "num_features",
    "channels",
    "freq",
    "dim",
    "feat",
    "mel",
    "size",
]
# attributes that bound integer index tensors (vocabulary, number of steps, lengths)
INDEX_ATTRS = [
    "vocab",
    "num_embeddings",
    "n_tokens",
    "classes",
    "timestep",
    "n_steps",
    "num_steps",
    "max_len",
    "max_position",
    "n_positions",
    "num_positions",
]


def _config_like(v: Any) -> bool:
    if isinstance(v, (nn.Module, torch.Tensor, type, str, bytes, int, float, bool)):
        return False
    if isinstance(v, (list, tuple, dict, set, frozenset)) or callable(v):
        return False
    return hasattr(v, "__dict__") or hasattr(v, "__dataclass_fields__")


def int_attrs(mod: nn.Module, cache: dict[int, dict[str, int]]) -> dict[str, int]:
    """``{"self.d_model": 8, "self.cfg.n_feats": 6, ...}``: int attributes, one level into
    config-like objects (dataclasses, plain objects; not submodules)."""
    key = id(mod)
    if key in cache:
        return cache[key]
    out: dict[str, int] = {}
    for k, v in vars(mod).items():
        if k.startswith("_"):
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            out[f"self.{k}"] = v
        elif _config_like(v):
            prev = logging.root.manager.disable
            logging.disable(logging.ERROR)  # deprecated properties that log when read
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _config_ints(v, f"self.{k}", out)
            finally:
                logging.disable(prev)
    cache[key] = out
    return out


def _config_ints(v: Any, prefix: str, out: dict[str, int]) -> None:
    for name in dir(v):
        if name.startswith("_"):
            continue
        try:
            w = getattr(v, name)
        except Exception:
            continue
        if isinstance(w, int) and not isinstance(w, bool):
            out[f"{prefix}.{name}"] = w


# words of attributes that hold a number which is not a size (a mask span, a token id, a count
# of layers or steps): ranked after every other attribute of the same value
NOT_SIZES = ("mask", "prob", "drop", "layer", "seed", "_id", "step", "epoch", "eps", "bucket")


def attr_rank(path: str) -> tuple:
    """Sort key: dim-like names first, then attributes of the module itself, then shorter."""
    leaf = path.rsplit(".", 1)[-1].lower()
    penalty = any(w in leaf for w in NOT_SIZES)
    pri = next((i for i, w in enumerate(PRIORITY) if w in leaf), len(PRIORITY))
    return (penalty, pri, path.count("."), len(path), path)


def attr_dim_name(path: str) -> str:
    """``self.cfg.d_model`` -> ``D``; ``self.vocab_size`` -> ``V``; ``self.global_dim`` -> ``G``."""
    leaf = path.rsplit(".", 1)[-1].lower()
    for word, name in _ATTR_NAMES:
        if word in leaf:
            return name
    stripped = re.sub(r"^(n_|num_|d_|max_)", "", leaf)
    return stripped[0].upper() if stripped[:1].isalpha() else "X"


def index_hi(path: str, value: int) -> int:
    return value if path.rsplit(".", 1)[-1].lower().startswith("max_") else value - 1
