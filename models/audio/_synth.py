"""Synthetic noisy speech that needs no download.

Speech-like signals: a voiced harmonic source with a pitch contour, shaped by three moving
formants, cut into syllables by envelopes, with unvoiced bursts (fricatives, plosives) between
them. A fixed pool of speakers is split into training and held-out speakers. Noises come in
labelled types; ``OOD_NOISE_TYPES`` never appear in the training split (like the ESC-50 split of
seed 002). Every mixture carries a *noise reference*: another excerpt of the same noise source
at the same gain, which is what a noise-conditioned enhancer is given.

Everything is deterministic given ``(split, seed, index)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.signal import butter, lfilter, sosfilt
from torch import Tensor

from models._fields import is_int

from ._errors import AudioError

__all__ = [
    "HELDOUT_SPEAKERS",
    "NOISE_TYPES",
    "OOD_NOISE_TYPES",
    "TRAIN_SPEAKERS",
    "Mixture",
    "make_mixtures",
    "synth_noise",
    "synth_speech",
]

NOISE_TYPES: tuple[str, ...] = ("white", "pink", "brown", "babble", "hum", "clicks")
OOD_NOISE_TYPES: tuple[str, ...] = ("siren",)
SPLITS = ("train", "heldout", "ood")
_SPLIT_CODE = {"train": 0, "heldout": 1, "ood": 2}

N_SPEAKERS = 48
TRAIN_SPEAKERS: tuple[int, ...] = tuple(range(36))  # speakers of the training split
HELDOUT_SPEAKERS: tuple[int, ...] = tuple(range(36, N_SPEAKERS))  # held-out and OOD splits

# (F1, F2, F3) in Hz of a few vowels (adult male averages; scaled per speaker)
_VOWELS = np.array(
    [
        [730, 1090, 2440],  # a
        [530, 1840, 2480],  # e
        [270, 2290, 3010],  # i
        [570, 840, 2410],  # o
        [300, 870, 2240],  # u
        [660, 1720, 2410],  # ae
        [490, 1350, 1690],  # er
    ],
    dtype=np.float64,
)


@dataclass
class Mixture:
    """One synthetic (or real) noisy utterance.

    Attributes:
        clean: clean speech ``[L]``.
        noisy: ``clean + noise`` ``[L]``.
        noise_ref: another excerpt of the same noise source at the same gain ``[L]``.
        noise_type: label of the noise (one of ``NOISE_TYPES`` or ``OOD_NOISE_TYPES``).
        snr_db: the signal-to-noise ratio the noise was mixed at.
        speaker: index of the synthetic speaker (``-1`` for real data).
    """

    clean: Tensor
    noisy: Tensor
    noise_ref: Tensor
    noise_type: str
    snr_db: float
    speaker: int = field(default=-1)


@dataclass(frozen=True)
class _Speaker:
    f0: float  # mean pitch, Hz
    formant_scale: float  # vocal tract length factor
    rate: float  # syllables per second
    tilt: float  # spectral tilt exponent of the harmonics
    breath: float  # aspiration noise level


def _speaker(idx: int) -> _Speaker:
    rng = np.random.default_rng([7919, idx])
    female = idx % 2 == 1
    return _Speaker(
        f0=float(rng.uniform(165, 240) if female else rng.uniform(85, 140)),
        formant_scale=float(rng.uniform(1.08, 1.22) if female else rng.uniform(0.9, 1.05)),
        rate=float(rng.uniform(3.0, 5.5)),
        tilt=float(rng.uniform(0.9, 1.4)),
        breath=float(rng.uniform(0.01, 0.05)),
    )


def _bandpass(x: np.ndarray, lo: float, hi: float, sr: int) -> np.ndarray:
    hi = min(hi, 0.45 * sr)
    sos = butter(2, [lo, hi], btype="bandpass", fs=sr, output="sos")
    return sosfilt(sos, x)


def synth_speech(rng: np.random.Generator, n: int, speaker: int, sr: int = 16000) -> np.ndarray:
    """A speech-like signal of ``n`` samples from a synthetic speaker (RMS 1).

    Args:
        rng: the random generator (consumed).
        n: number of samples.
        speaker: speaker index in ``[0, 48)``.
        sr: sample rate in Hz.

    Example:
        >>> x = synth_speech(np.random.default_rng(0), 16000, speaker=3)
    """
    if n < 1:
        raise AudioError(f"synth_speech: argument 'n' is {n}; expected n >= 1 samples")
    if not 0 <= speaker < N_SPEAKERS:
        raise AudioError(
            f"synth_speech: argument 'speaker' is {speaker}; expected a speaker in "
            f"[0, {N_SPEAKERS})"
        )
    spk = _speaker(speaker)
    t = np.arange(n) / sr
    # --- syllables: (start, vowel end, end) in samples, each maybe led by an unvoiced onset
    env = np.zeros(n)
    unvoiced = np.zeros(n)
    centers, formants = [], []
    pos = int(rng.uniform(0.0, 0.15) * sr)
    while pos < n:
        dur = int(sr / spk.rate * rng.uniform(0.7, 1.3))
        if rng.random() < 0.12:  # a pause
            pos += int(dur * rng.uniform(0.5, 1.0))
            continue
        onset = 0
        kind = rng.random()
        if kind < 0.45:  # unvoiced onset: fricative (long) or plosive burst (short)
            fric = kind < 0.3
            onset = int(sr * (rng.uniform(0.04, 0.1) if fric else rng.uniform(0.008, 0.02)))
            seg = min(onset, n - pos)
            if seg > 0:
                lo, hi = (rng.uniform(2500, 4500), 7500) if fric else (rng.uniform(300, 1500), 6000)
                burst = _bandpass(rng.standard_normal(seg), lo, hi, sr)
                shape = np.hanning(seg) if fric else np.exp(-np.arange(seg) / (0.3 * seg))
                unvoiced[pos : pos + seg] += burst * shape * rng.uniform(0.15, 0.5)
        v0, v1 = pos + onset, min(pos + dur, n)
        if v1 > v0:
            m = v1 - v0
            a = max(1, int(0.15 * m))
            shape = np.ones(m)
            shape[:a] = np.linspace(0, 1, a)
            shape[-a:] = np.minimum(shape[-a:], np.linspace(1, 0, a))
            env[v0:v1] = np.maximum(env[v0:v1], shape * rng.uniform(0.6, 1.0))
            centers.append((v0 + v1) / 2)
            formants.append(_VOWELS[rng.integers(len(_VOWELS))] * spk.formant_scale)
        pos += dur
    if not centers:  # at least one vowel target for the formant tracks
        centers.append(n / 2)
        formants.append(_VOWELS[0] * spk.formant_scale)
    fm = np.stack(formants)  # (S, 3)
    tracks = np.stack([np.interp(np.arange(n), centers, fm[:, k]) for k in range(3)])  # (3, n)
    # --- pitch contour: declination + slow wobble + per-utterance accent
    f0 = spk.f0 * (
        1.0
        + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi))
        - 0.1 * t / max(t[-1], 1e-9)
        + rng.uniform(-0.05, 0.05)
    )
    phase = 2 * np.pi * np.cumsum(f0) / sr  # (n,)
    n_harm = int(min(5000.0, 0.45 * sr) / f0.min())
    k = np.arange(1, n_harm + 1)[:, None]  # (K, 1)
    # harmonic amplitudes change slowly: evaluate them every `hop` samples, then interpolate
    hop = 64
    grid = np.arange(0, n + hop, hop).clip(max=n - 1)  # (G,)
    freqs = k * f0[grid][None, :]  # (K, G)
    # formant envelope at every harmonic: sum of three resonances
    amp = np.zeros_like(freqs)
    for i, bw in enumerate((80.0, 110.0, 150.0)):
        amp += (1.0 / (i + 1)) / (1.0 + ((freqs - tracks[i][grid][None, :]) / bw) ** 2)
    amp *= k ** (-spk.tilt) * (freqs < 0.45 * sr)
    amp = np.repeat(amp, hop, axis=1)[:, :n]  # (K, n) piecewise constant
    voiced = np.einsum("kn,kn->n", amp, np.sin(k * phase[None, :]))
    voiced += spk.breath * _bandpass(rng.standard_normal(n), 500, 5000, sr)
    voiced /= np.sqrt(np.mean(voiced**2)) + 1e-9
    x = voiced * env + unvoiced
    return x / (np.sqrt(np.mean(x**2)) + 1e-9)


@functools.lru_cache(maxsize=2)
def _babble_bank(sr: int) -> np.ndarray:
    """Long utterances of 12 fixed talkers that babble noise draws excerpts from."""
    rng = np.random.default_rng(104729)
    return np.stack([synth_speech(rng, 6 * sr, s, sr) for s in range(0, N_SPEAKERS, 4)])


def _colored(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1 / f ** exponent."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    return np.fft.irfft(spec / f ** (exponent / 2), n)


def synth_noise(rng: np.random.Generator, n: int, noise_type: str, sr: int = 16000) -> np.ndarray:
    """A stretch of ``n`` samples from one noise *source* (RMS 1).

    All randomness of the source (hum pitch, click rate, babble talkers, siren speed) is drawn
    from ``rng``, so two excerpts of one call share the source.

    Example:
        >>> x = synth_noise(np.random.default_rng(0), 16000, "hum")
    """
    t = np.arange(n) / sr
    if noise_type == "white":
        x = rng.standard_normal(n)
    elif noise_type == "pink":
        x = _colored(rng, n, 1.0)
    elif noise_type == "brown":
        x = _colored(rng, n, 2.0)
        x = lfilter(*butter(1, 20, btype="highpass", fs=sr), x)
    elif noise_type == "babble":
        bank = _babble_bank(sr)  # (talkers, samples)
        talkers = rng.choice(len(bank), size=int(rng.integers(4, 8)), replace=False)
        x = np.zeros(n)
        for j in talkers:  # a random excerpt of each talker, looped when n is long
            start = int(rng.integers(bank.shape[1]))
            idx = (start + np.arange(n)) % bank.shape[1]
            x += bank[j, idx] * rng.uniform(0.5, 1.0)
    elif noise_type == "hum":
        base = rng.choice([50.0, 60.0]) * rng.uniform(0.98, 1.02)
        n_h = int(rng.integers(4, 12))
        amps = rng.uniform(0.2, 1.0, n_h) / np.arange(1, n_h + 1) ** rng.uniform(0.3, 1.0)
        phases = rng.uniform(0, 2 * np.pi, n_h)
        x = sum(
            a * np.sin(2 * np.pi * base * (h + 1) * t + p)
            for h, a, p in zip(range(n_h), amps, phases, strict=True)
        )
        x = x + 0.02 * rng.standard_normal(n)
    elif noise_type == "clicks":
        rate = rng.uniform(4, 25)  # clicks per second
        ring = rng.uniform(800, 4000)  # resonance of each click
        n_clicks = rng.poisson(rate * n / sr)
        x = 0.01 * rng.standard_normal(n)
        L = int(0.006 * sr)
        decay = np.exp(-np.arange(L) / (0.0015 * sr)) * np.sin(2 * np.pi * ring * np.arange(L) / sr)
        for pos in rng.integers(0, max(1, n - L), n_clicks):
            x[pos : pos + L] += decay * rng.uniform(0.3, 1.0) * rng.choice([-1, 1])
    elif noise_type == "siren":
        lo, hi = rng.uniform(500, 800), rng.uniform(1100, 1600)
        speed = rng.uniform(0.3, 2.0)  # sweeps per second
        f = lo + (hi - lo) * 0.5 * (1 + np.sin(2 * np.pi * speed * t + rng.uniform(0, 2 * np.pi)))
        ph = 2 * np.pi * np.cumsum(f) / sr
        x = np.sin(ph) + 0.3 * np.sin(2 * ph) + 0.1 * np.sin(3 * ph) + 0.02 * rng.standard_normal(n)
    else:
        raise AudioError(
            f"synth_noise: unknown noise_type {noise_type!r}; "
            f"valid: {', '.join(NOISE_TYPES + OOD_NOISE_TYPES)}"
        )
    x = np.asarray(x, dtype=np.float64)
    return x / (np.sqrt(np.mean(x**2)) + 1e-9)


def make_mixtures(
    split: str,
    n: int,
    seed: int,
    seconds: float = 1.0,
    snr_db: tuple[float, float] = (-5.0, 10.0),
    sample_rate: int = 16000,
) -> list[Mixture]:
    """Deterministic synthetic noisy-speech mixtures.

    Splits: ``"train"`` (training speakers, ``NOISE_TYPES``), ``"heldout"`` (held-out speakers,
    ``NOISE_TYPES``, a random stream disjoint from training) and ``"ood"`` (held-out speakers,
    ``OOD_NOISE_TYPES``). Noise types cycle with the index, so any ``n`` that is a multiple of
    the number of types is balanced.

    Args:
        split: ``"train"``, ``"heldout"`` or ``"ood"``.
        n: number of mixtures.
        seed: seed of the stream; the same ``(split, seed)`` gives the same mixtures.
        seconds: clip length.
        snr_db: SNR range ``(lo, hi)`` in dB, drawn uniformly.
        sample_rate: Hz.

    Returns:
        ``n`` :class:`Mixture` objects with float32 tensors of ``round(seconds * sample_rate)``
        samples.

    Example:
        >>> mix = make_mixtures("heldout", 6, seed=0)
        >>> [m.noise_type for m in mix]
        ['white', 'pink', 'brown', 'babble', 'hum', 'clicks']
    """
    if split not in _SPLIT_CODE:
        raise AudioError(
            f"make_mixtures: argument 'split' is {split!r}; valid: {', '.join(SPLITS)}"
        )
    if n < 0:
        raise AudioError(f"make_mixtures: argument 'n' is {n}; expected n >= 0")
    if not is_int(sample_rate) or sample_rate < 1:
        raise AudioError(
            f"make_mixtures: argument 'sample_rate' is {sample_rate!r}; expected an int >= 1 (Hz)"
        )
    if len(snr_db) != 2 or not all(np.isfinite(v) for v in snr_db):
        raise AudioError(
            f"make_mixtures: argument 'snr_db' is {snr_db}; expected (lo, hi), finite dB"
        )
    length = round(seconds * sample_rate)
    if length < 512:
        raise AudioError(
            f"make_mixtures: argument 'seconds' is {seconds} ({length} samples); "
            "expected at least 512 samples (one STFT frame)"
        )
    lo, hi = snr_db
    if lo > hi:
        raise AudioError(f"make_mixtures: argument 'snr_db' is {snr_db}; expected lo <= hi")
    types = OOD_NOISE_TYPES if split == "ood" else NOISE_TYPES
    speakers = TRAIN_SPEAKERS if split == "train" else HELDOUT_SPEAKERS
    out = []
    for i in range(n):
        rng = np.random.default_rng([_SPLIT_CODE[split], seed, i])
        spk = int(speakers[rng.integers(len(speakers))])
        noise_type = types[i % len(types)]
        snr = float(rng.uniform(lo, hi))
        clean = synth_speech(rng, length, spk, sample_rate) * rng.uniform(0.03, 0.1)
        gap = int(rng.integers(length // 4, length))
        source = synth_noise(rng, 2 * length + gap, noise_type, sample_rate)
        noise, ref = source[:length], source[length + gap :]
        gain = np.sqrt(np.mean(clean**2)) / (np.sqrt(np.mean(noise**2)) * 10 ** (snr / 20) + 1e-12)
        noisy = clean + gain * noise
        peak = np.abs(noisy).max()
        scale = 0.95 / peak if peak > 0.95 else 1.0
        out.append(
            Mixture(
                clean=torch.from_numpy(clean * scale).float(),
                noisy=torch.from_numpy(noisy * scale).float(),
                noise_ref=torch.from_numpy(ref * gain * scale).float(),
                noise_type=noise_type,
                snr_db=snr,
                speaker=spk,
            )
        )
    return out
