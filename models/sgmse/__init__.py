"""Noise-conditioned SGMSE+ (score-based speech enhancement) with classifier-free guidance.

- :class:`ScoreModelConfig`, :class:`ScoreModel`: NCSN++-lite U-Net on the compressed complex
  STFT, Gaussian-Fourier time embedding, noise-reference encoder (``model.noise_encoder``), learned
  ``model.null_embedding``, OUVE SDE (``model.sde``), DSM loss (``model.loss``).
- :func:`enhance`: predictor-corrector sampler with CFG guidance scale.
- :func:`load_pretrained`, :func:`load_checkpoint`, :func:`save_checkpoint`: checkpoints with raw
  and EMA weights (EMA swapped in; ``model.weights_used`` says which).
- CLIs: ``python -m models.sgmse.train`` and ``python -m models.sgmse.enhance``.

Example:
    >>> from models.sgmse import load_pretrained, enhance
    >>> from models.audio import make_mixtures
    >>> mix = make_mixtures("heldout", 1, seed=0)[0]
    >>> model = load_pretrained("cond")
    >>> est = enhance(model, mix.noisy, mix.noise_ref, N=30)
"""

from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import load_pretrained as load_pretrained
from ._checkpoint import save_checkpoint as save_checkpoint
from ._config import ScoreModelConfig as ScoreModelConfig
from ._errors import CheckpointError as CheckpointError
from ._errors import ScoreModelError as ScoreModelError
from ._model import EMA as EMA
from ._model import ScoreModel as ScoreModel
from ._net import NoiseEncoder as NoiseEncoder
from ._sampling import enhance as enhance
from ._sampling import enhance_batch as enhance_batch
from ._sde import OUVESDE as OUVESDE

__all__ = [
    "EMA",
    "OUVESDE",
    "CheckpointError",
    "NoiseEncoder",
    "ScoreModel",
    "ScoreModelConfig",
    "ScoreModelError",
    "enhance",
    "enhance_batch",
    "load_checkpoint",
    "load_pretrained",
    "save_checkpoint",
]
