"""Real data in: a folder of clean/noisy WAV pairs in the VoiceBank-DEMAND layout."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ._errors import AudioError

__all__ = ["WavFolderDataset", "read_wav"]

_EXTS = (".wav", ".flac")


def read_wav(path: str | Path, sample_rate: int = 16000) -> Tensor:
    """Read a mono audio file as a float32 tensor ``[L]``, checking channels, rate and values.

    Raises:
        AudioError: naming the file when it is missing, stereo, at another sample rate, or has
            NaN/Inf samples.

    Example:
        >>> wave = read_wav("clean/p232_001.wav")
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"read_wav: file {str(path)!r} does not exist")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (L, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"read_wav: {str(path)!r} is not a readable audio file ({err})") from err
    if data.shape[1] != 1:
        raise AudioError(
            f"read_wav: {str(path)!r} has {data.shape[1]} channels; expected mono "
            "(mix down with e.g. `sox in.wav -c 1 out.wav`)"
        )
    if sr != sample_rate:
        raise AudioError(
            f"read_wav: {str(path)!r} has sample rate {sr} Hz; expected {sample_rate} Hz "
            "(resample it first)"
        )
    wave = torch.from_numpy(data[:, 0].copy())
    if not torch.isfinite(wave).all():
        bad = int((~torch.isfinite(wave)).sum())
        raise AudioError(f"read_wav: {str(path)!r} has {bad} NaN/Inf samples")
    return wave


class WavFolderDataset(torch.utils.data.Dataset):
    """Pairs ``root/clean/NAME.wav`` with ``root/noisy/NAME.wav`` (VoiceBank-DEMAND layout).

    Items are ``(clean, noisy)`` float32 tensors ``[L]`` of equal length. The folders are
    checked when the dataset is made (same names, mono, sample rate); samples are checked for
    NaN/Inf when read.

    Args:
        root: folder holding ``clean/`` and ``noisy/``.
        sample_rate: required sample rate in Hz.

    Example:
        >>> ds = WavFolderDataset("data/voicebank/test")
        >>> clean, noisy = ds[0]
    """

    def __init__(self, root: str | Path, sample_rate: int = 16000) -> None:
        import soundfile as sf

        self.root = Path(root)
        self.sample_rate = sample_rate
        folders = {}
        for sub in ("clean", "noisy"):
            d = self.root / sub
            if not d.is_dir():
                raise AudioError(
                    f"WavFolderDataset: folder {str(d)!r} does not exist; expected "
                    f"{str(self.root)!r} to hold clean/ and noisy/ with matching file names"
                )
            folders[sub] = {p.name: p for p in d.iterdir() if p.suffix.lower() in _EXTS}
        clean, noisy = set(folders["clean"]), set(folders["noisy"])
        if clean != noisy:
            only_c, only_n = sorted(clean - noisy), sorted(noisy - clean)
            raise AudioError(
                "WavFolderDataset: clean/ and noisy/ do not match in "
                f"{str(self.root)!r}: only in clean/: {only_c[:5]}"
                f"{' ...' if len(only_c) > 5 else ''}; only in noisy/: {only_n[:5]}"
                f"{' ...' if len(only_n) > 5 else ''}"
            )
        if not clean:
            raise AudioError(f"WavFolderDataset: no .wav files in {str(self.root / 'clean')!r}")
        self.names = sorted(clean)
        self.pairs = [(folders["clean"][n], folders["noisy"][n]) for n in self.names]
        for pair in self.pairs:
            try:
                infos = [sf.info(str(p)) for p in pair]
            except (sf.LibsndfileError, RuntimeError, TypeError) as err:
                raise AudioError(
                    f"WavFolderDataset: {str(pair[0])!r} or {str(pair[1])!r} is not a readable "
                    f"audio file ({err})"
                ) from err
            for p, info in zip(pair, infos, strict=True):
                if info.channels != 1:
                    raise AudioError(
                        f"WavFolderDataset: {str(p)!r} has {info.channels} channels; expected mono"
                    )
                if info.samplerate != sample_rate:
                    raise AudioError(
                        f"WavFolderDataset: {str(p)!r} has sample rate {info.samplerate} Hz; "
                        f"expected {sample_rate} Hz"
                    )
            if infos[0].frames != infos[1].frames:
                raise AudioError(
                    f"WavFolderDataset: {str(pair[0])!r} has {infos[0].frames} samples but "
                    f"{str(pair[1])!r} has {infos[1].frames}; clean and noisy must align"
                )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        c, n = self.pairs[i]
        return read_wav(c, self.sample_rate), read_wav(n, self.sample_rate)
