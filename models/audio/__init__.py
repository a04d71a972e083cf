"""Speech audio core shared by the diffusion reference models.

- :class:`STFTConfig`, :func:`stft`, :func:`istft`: the compressed complex STFT of SGMSE+ and its
  exact inverse.
- :func:`make_mixtures`, :class:`Mixture`, :data:`NOISE_TYPES`, :data:`OOD_NOISE_TYPES`:
  synthetic noisy speech with labelled noise types, a fixed held-out split and an
  out-of-distribution noise type.
- :class:`WavFolderDataset`, :func:`read_wav`: real data in (VoiceBank-DEMAND layout).
- :func:`si_sdr`, :func:`pesq_score`, :func:`estoi_score`: metrics.

Example:
    >>> from models.audio import make_mixtures, stft, istft
    >>> mix = make_mixtures("heldout", 6, seed=0)
    >>> spec = stft(mix[0].noisy[None])  # (1, 256, 126) complex
"""

from ._errors import AudioError as AudioError
from ._metrics import estoi_score as estoi_score
from ._metrics import pesq_score as pesq_score
from ._metrics import si_sdr as si_sdr
from ._stft import STFTConfig as STFTConfig
from ._stft import istft as istft
from ._stft import stft as stft
from ._synth import HELDOUT_SPEAKERS as HELDOUT_SPEAKERS
from ._synth import NOISE_TYPES as NOISE_TYPES
from ._synth import OOD_NOISE_TYPES as OOD_NOISE_TYPES
from ._synth import TRAIN_SPEAKERS as TRAIN_SPEAKERS
from ._synth import Mixture as Mixture
from ._synth import make_mixtures as make_mixtures
from ._synth import synth_noise as synth_noise
from ._synth import synth_speech as synth_speech
from ._wavfolder import WavFolderDataset as WavFolderDataset
from ._wavfolder import read_wav as read_wav

__all__ = [
    "HELDOUT_SPEAKERS",
    "NOISE_TYPES",
    "OOD_NOISE_TYPES",
    "TRAIN_SPEAKERS",
    "AudioError",
    "Mixture",
    "STFTConfig",
    "WavFolderDataset",
    "estoi_score",
    "istft",
    "make_mixtures",
    "pesq_score",
    "read_wav",
    "si_sdr",
    "stft",
    "synth_noise",
    "synth_speech",
]
