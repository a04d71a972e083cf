"""Small, faithful reference models of the systems torchdx is built for, each under contracts.

Subpackages: ``models.audio`` (STFT front end, synthetic noisy speech, metrics),
``models.paraformer`` (non-autoregressive ASR with a CIF predictor), ``models.sgmse``
(noise-conditioned score model with classifier-free guidance), ``models.diffusion_buffer``
(online BBED diffusion buffer) and ``models.audiosr`` (latent-diffusion U-Net with a global
encoder). Import the subpackage you need; this package imports nothing heavy.

Every model package has the same layout: ``_config.py`` (a config dataclass with ``to_dict`` /
``from_dict``, and the package's errors, rooted at ``contracts.TorchdxError``), the model, a
``train`` module (``train(...)`` + ``main(argv)`` behind ``python -m models.NAME.train``, with
``--tensorboard DIR`` for a training monitor), and ``save_checkpoint`` / ``load_checkpoint`` in
the one format of :mod:`models._checkpoint` (config, weights, step, metrics, torch version).
The AudioSR and diffusion-buffer loops are one loop (:mod:`models._training`). Models never
import ``diagnostics`` in library code; a training function takes a monitor from its caller.

Inputs that do not match a model's parameters raise :class:`models.DtypeError` /
:class:`models.DeviceError` (both :class:`models.InputError`, a ``contracts.ContractError``):
the contract wrapper of a module method words a failure torch raises for such an input (see
``contracts._inputs``); the classes are loaded from :mod:`models._guards` on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__: list[str] = ["DeviceError", "DtypeError", "InputError"]


def __getattr__(name: str) -> Any:
    """The error classes, imported lazily (importing ``models`` stays light)."""
    if name in __all__:
        return getattr(importlib.import_module("models._guards"), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
