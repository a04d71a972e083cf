"""Speech quality metrics: SI-SDR (own), PESQ (``pesq``) and ESTOI (``pystoi``)."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from models._fields import is_int

from ._compat import contract
from ._errors import AudioError

__all__ = ["estoi_score", "pesq_score", "si_sdr"]


@contract(generate=False)
def si_sdr(est: Float[Tensor, "*B L"], ref: Float[Tensor, "*B L"]) -> Float[Tensor, "*B"]:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019).

    Both signals are made zero-mean; with ``a = <est, ref> / ||ref||^2`` the target is ``a ref``
    and ``SI-SDR = 10 log10(||a ref||^2 / ||est - a ref||^2)``.

    Args:
        est: estimate ``[..., L]``.
        ref: reference ``[..., L]``.

    Returns:
        SI-SDR in dB, one value per leading index (a scalar for 1-D input); computed in float32
        at least (float16 energies overflow).

    Example:
        >>> si_sdr(clean + 0.1 * torch.randn_like(clean), clean)
    """
    # float16/bfloat16: the energies (sums of L squares) overflow or round to a useless ratio,
    # so low-precision signals are scored in float32 (and the score is float32)
    dtype = torch.promote_types(torch.promote_types(est.dtype, ref.dtype), torch.float32)
    est, ref = est.to(dtype), ref.to(dtype)
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    eps = torch.finfo(est.dtype).eps
    a = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = a * ref
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / ((est - target).pow(2).sum(-1) + eps))


def _np1d(x: Tensor | np.ndarray, name: str, fn: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, float)
    if arr.ndim != 1:
        raise AudioError(f"{fn}: argument {name!r} has shape {arr.shape}; expected 1-D [L]")
    if not np.isfinite(arr).all():
        raise AudioError(f"{fn}: argument {name!r} has NaN/Inf samples")
    return arr


def _pair(est: Tensor | np.ndarray, ref: Tensor | np.ndarray, fn: str) -> tuple[np.ndarray, ...]:
    """Both signals as 1-D float64 arrays of the same length (a metric of misaligned signals
    compares different moments of the utterance)."""
    e, r = _np1d(est, "est", fn), _np1d(ref, "ref", fn)
    if e.shape != r.shape:
        raise AudioError(
            f"{fn}: arguments 'est' and 'ref' have {e.shape[0]} and {r.shape[0]} samples; "
            "expected the same length (trim or pad the estimate to the reference)"
        )
    return e, r


def pesq_score(est: Tensor | np.ndarray, ref: Tensor | np.ndarray, sr: int = 16000) -> float:
    """Wide-band PESQ (ITU-T P.862.2) at 16 kHz, narrow-band at 8 kHz, via ``pesq``.

    Example:
        >>> pesq_score(enhanced, clean, 16000)
    """
    from pesq import pesq

    if sr not in (8000, 16000):
        raise AudioError(f"pesq_score: argument 'sr' is {sr}; PESQ supports 8000 or 16000 Hz")
    e, r = _pair(est, ref, "pesq_score")
    try:
        return float(pesq(sr, r, e, "wb" if sr == 16000 else "nb"))
    except Exception as err:  # pesq raises its own errors (e.g. no utterance detected)
        raise AudioError(f"pesq_score: PESQ failed: {err}") from err


def estoi_score(est: Tensor | np.ndarray, ref: Tensor | np.ndarray, sr: int = 16000) -> float:
    """Extended short-time objective intelligibility (Jensen & Taal, 2016) via ``pystoi``.

    Example:
        >>> estoi_score(enhanced, clean, 16000)
    """
    from pystoi import stoi

    if not is_int(sr) or sr < 1:
        raise AudioError(f"estoi_score: argument 'sr' is {sr!r}; expected a sample rate in Hz")
    e, r = _pair(est, ref, "estoi_score")
    return float(stoi(r, e, sr, extended=True))
