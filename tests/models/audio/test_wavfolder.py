import numpy as np
import pytest
import soundfile as sf

from models.audio import AudioError, WavFolderDataset, read_wav


def _write(path, data, sr=16000, subtype="FLOAT"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)


def _corpus(root, names=("a.wav", "b.wav")):
    rng = np.random.default_rng(0)
    for n in names:
        x = 0.1 * rng.standard_normal(1600).astype(np.float32)
        _write(root / "clean" / n, x)
        _write(root / "noisy" / n, x + 0.01)


def test_reads_pairs(tmp_path):
    _corpus(tmp_path)
    ds = WavFolderDataset(tmp_path)
    assert len(ds) == 2 and ds.names == ["a.wav", "b.wav"]
    clean, noisy = ds[1]
    assert clean.shape == noisy.shape == (1600,)
    assert abs((noisy - clean).mean().item() - 0.01) < 1e-4


def test_mismatched_folders_named(tmp_path):
    _corpus(tmp_path)
    _write(tmp_path / "clean" / "c.wav", np.zeros(1600, np.float32))
    with pytest.raises(AudioError, match=r"only in clean/: \['c.wav'\]"):
        WavFolderDataset(tmp_path)


def test_missing_folder(tmp_path):
    (tmp_path / "clean").mkdir()
    with pytest.raises(AudioError, match=r"noisy.*does not exist"):
        WavFolderDataset(tmp_path)


def test_stereo_named(tmp_path):
    _corpus(tmp_path)
    _write(tmp_path / "noisy" / "a.wav", np.zeros((1600, 2), np.float32))
    with pytest.raises(AudioError, match=r"noisy/a.wav' has 2 channels; expected mono"):
        WavFolderDataset(tmp_path)


def test_wrong_rate_named(tmp_path):
    _corpus(tmp_path)
    _write(tmp_path / "clean" / "b.wav", np.zeros(1600, np.float32), sr=8000)
    with pytest.raises(AudioError, match=r"clean/b.wav' has sample rate 8000 Hz; expected 16000"):
        WavFolderDataset(tmp_path)


def test_length_mismatch_named(tmp_path):
    _corpus(tmp_path)
    _write(tmp_path / "noisy" / "b.wav", np.zeros(1000, np.float32))
    with pytest.raises(AudioError, match=r"b.wav' has 1600 samples but .*b.wav' has 1000"):
        WavFolderDataset(tmp_path)


def test_nan_samples_named(tmp_path):
    _corpus(tmp_path)
    x = np.zeros(1600, np.float32)
    x[5] = np.nan
    _write(tmp_path / "noisy" / "a.wav", x)
    ds = WavFolderDataset(tmp_path)
    with pytest.raises(AudioError, match=r"noisy/a.wav' has 1 NaN/Inf samples"):
        ds[0]
    with pytest.raises(AudioError, match="does not exist"):
        read_wav(tmp_path / "nope.wav")
