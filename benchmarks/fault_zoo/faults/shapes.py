"""Shapes and masks (seed 004's tables, seeds 001 and 003)."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from contracts import Mask, Range

from .._cases import Annot, StepCase, fault
from ._common import paraformer_batch, tiny_whisper, whisper_batch

# ----------------------------------------------------------------------------- Paraformer


def _paraformer(**over):
    from models.paraformer import Paraformer, ParaformerConfig

    cfg = ParaformerConfig.tiny(max_tokens=4, **over)
    return Paraformer(cfg), cfg


def _paraformer_annot():
    from models.paraformer import Paraformer

    # what the seed's tables say, as jaxtyping annotations (the model carries its own contracts)
    return Annot(
        Paraformer,
        "forward",
        {
            "features": Float[Tensor, "B T_feat F"],
            "tokens": Int[Tensor, "B T_token"],
            "feat_mask": Bool[Tensor, "B T_feat"],
            "token_mask": Bool[Tensor, "B T_token"],
        },
        own=True,
    )


def _paraformer_step(model, features, tokens, feat_mask, token_mask):
    def step(i: int) -> Tensor:
        out = model(features, tokens, feat_mask, token_mask)
        out["loss"].backward()
        return out["loss"]

    return step


def _masks(feat_lens, token_lens, T, S):
    from models.paraformer import create_padding_mask

    return create_padding_mask(feat_lens, T), create_padding_mask(token_lens, S)


@fault(
    "shapes.paraformer_features_bft",
    "shapes",
    "torchdx",
    "Paraformer fed features [B, F, T] instead of [B, T, F]",
    {"argument": "features"},
    quick=True,
)
def _paraformer_bft(faulty: bool):
    model, cfg = _paraformer()
    feats, toks, fl, tl = paraformer_batch(cfg)
    fm, tm = _masks(fl, tl, feats.shape[1], toks.shape[1])
    if faulty:
        feats = feats.transpose(1, 2).contiguous()  # (B, F, T): the fault
        T = feats.shape[2]
        fm = F.pad(fm, (0, 0))[:, :T]
    return StepCase(model, _paraformer_step(model, feats, toks, fm, tm), [_paraformer_annot()])


@fault(
    "shapes.paraformer_mask_polarity",
    "shapes",
    "torchdx",
    "Paraformer feat_mask with flipped polarity (True = padded instead of True = valid)",
    {"argument": "feat_mask"},
    quick=True,
)
def _paraformer_polarity(faulty: bool):
    model, cfg = _paraformer()
    feats, toks, fl, tl = paraformer_batch(cfg)
    fm, tm = _masks(fl, tl, feats.shape[1], toks.shape[1])
    if faulty:
        fm = ~fm  # key_padding_mask convention where the model wants valid positions
    return StepCase(model, _paraformer_step(model, feats, toks, fm, tm), [_paraformer_annot()])


@fault(
    "shapes.paraformer_mask_length",
    "shapes",
    "torchdx",
    "Paraformer feat_mask one frame shorter than the features (built with the wrong max_len)",
    {"argument": "feat_mask", "axis": 1},
)
def _paraformer_mask_len(faulty: bool):
    model, cfg = _paraformer()
    feats, toks, fl, tl = paraformer_batch(cfg)
    T = feats.shape[1]
    from models.paraformer import create_padding_mask

    fm = create_padding_mask(fl.clamp(max=T - 1), T - 1) if faulty else create_padding_mask(fl, T)
    tm = create_padding_mask(tl, toks.shape[1])
    return StepCase(model, _paraformer_step(model, feats, toks, fm, tm), [_paraformer_annot()])


@fault(
    "shapes.paraformer_vocab_off_by_one",
    "shapes",
    "torchdx",
    "Paraformer built with a vocabulary one smaller than the tokenizer's",
    {"argument": "tokens"},
)
def _paraformer_vocab(faulty: bool):
    from models.paraformer import Paraformer, ParaformerConfig

    cfg = ParaformerConfig.tiny(max_tokens=4)
    feats, toks, fl, tl = paraformer_batch(cfg)
    toks[0, 0] = cfg.vocab_size - 1  # the tokenizer's last id occurs in the batch
    model_cfg = ParaformerConfig.tiny(max_tokens=4, alphabet=cfg.alphabet[:-1]) if faulty else cfg
    model = Paraformer(model_cfg)
    fm, tm = _masks(fl, tl, feats.shape[1], toks.shape[1])
    return StepCase(model, _paraformer_step(model, feats, toks, fm, tm), [_paraformer_annot()])


# ----------------------------------------------------------------------------- plain torch
class MaskedPool(nn.Module):
    """Mean over the valid frames ``t < lengths`` of ``x [B, T, D]``, then a classifier."""

    def __init__(self, d: int = 8, n: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.head = nn.Linear(d, n)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        T = x.shape[1]
        valid = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
        h = torch.tanh(self.proj(x)) * valid[..., None]
        return self.head(h.sum(1) / lengths[:, None].float())  # (B, n)


@fault(
    "shapes.lengths_exceed_T",
    "shapes",
    "torch",
    "lengths larger than the padded length T (a length counted in samples, frames expected)",
    {"argument": "lengths"},
    quick=True,
)
def _lengths_gt_T(faulty: bool):
    model = MaskedPool()
    x = torch.randn(3, 10, 8)
    lengths = torch.tensor([10, 7, 4])
    if faulty:
        lengths = lengths * 2  # silently normalises by the wrong count
    y = torch.randint(0, 4, (3,))

    def step(i: int) -> Tensor:
        loss = F.cross_entropy(model(x, lengths), y)
        loss.backward()
        return loss

    ann = Annot(
        MaskedPool,
        "forward",
        {"x": Float[Tensor, "B T D"], "lengths": Annotated[Int[Tensor, " B"], Range(1, "T")]},
    )
    return StepCase(model, step, [ann])


class StereoConv(nn.Module):
    """A conv front end for 2-channel audio ``[B, 2, L]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 8, 5, stride=2)
        self.head = nn.Linear(8, 1)

    def forward(self, wav: Tensor) -> Tensor:
        h = F.relu(self.conv(wav))  # (B, 8, L')
        return self.head(h.mean(-1)).squeeze(-1)  # (B,)


@fault(
    "shapes.conv_channel_mismatch",
    "shapes",
    "torch",
    "mono audio [B, 1, L] fed to a front end built for 2 channels",
    {"argument": "wav", "axis": 1},
)
def _channels(faulty: bool):
    model = StereoConv()
    wav = torch.randn(3, 1 if faulty else 2, 64)

    def step(i: int) -> Tensor:
        loss = model(wav).square().mean()
        loss.backward()
        return loss

    return StepCase(model, step, [Annot(StereoConv, "forward", {"wav": Float[Tensor, "B 2 L"]})])


class Fuse(nn.Module):
    """Concatenate features with an upsampled condition: both ``[B, C, T]``."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.mix = nn.Conv1d(2 * c, c, 3, padding=1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.mix(torch.cat([x, cond], dim=1))


class Upsampled(nn.Module):
    """A half-resolution condition upsampled to the feature rate, then fused (seed 001)."""

    def __init__(self, faulty: bool) -> None:
        super().__init__()
        self.faulty = faulty
        self.fuse = Fuse()

    def forward(self, x: Tensor, cond_lowres: Tensor) -> Tensor:
        if self.faulty:  # scale_factor rounds: 2 * floor(T / 2) = T - 1 for odd T
            cond = F.interpolate(cond_lowres, scale_factor=2.0, mode="linear")
        else:
            cond = F.interpolate(cond_lowres, size=x.shape[-1], mode="linear")
        return self.fuse(x, cond)


@fault(
    "shapes.interpolate_rounding",
    "shapes",
    "torch",
    "condition upsampled with scale_factor=2 is one frame short for odd T (seed 001)",
    {"argument": "cond", "axis": 2},
)
def _interp(faulty: bool):
    model = Upsampled(faulty)
    x = torch.randn(2, 4, 11)  # odd T
    cond = torch.randn(2, 4, 11 // 2)

    def step(i: int) -> Tensor:
        loss = model(x, cond).square().mean()
        loss.backward()
        return loss

    ann = Annot(Fuse, "forward", {"x": Float[Tensor, "B C T"], "cond": Float[Tensor, "B C T"]})
    return StepCase(model, step, [ann])


class SeqModel(nn.Module):
    """Self-attention over ``x [B, T, D]`` with an ``nn.MultiheadAttention``."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        a, _ = self.attn(x, x, x, need_weights=False)
        return self.head(a.mean(1))  # (B, 3)


@fault(
    "shapes.mha_batch_first",
    "shapes",
    "torch",
    "batch-first [B, T, D] fed to nn.MultiheadAttention built with batch_first=False",
    {"argument": "query"},
    note="B and T are both free dims of the annotation, so [T, B, D] binds them swapped and "
    "passes; a contract sees it only when another argument pins B or T in the same call",
)
def _mha_batch_first(faulty: bool):
    model = SeqModel(batch_first=not faulty)
    x = torch.randn(4, 6, 8)
    y = torch.randint(0, 3, (4,))

    def step(i: int) -> Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    # what a user can write: the sequence layout of the module they call (dims are free)
    ann = Annot(
        nn.MultiheadAttention,
        "forward",
        {"query": Float[Tensor, "B T D"], "key": Float[Tensor, "B S D"],
         "value": Float[Tensor, "B S D"]},
    )  # fmt: skip
    return StepCase(model, step, [ann])


class MaskedTransformer(nn.Module):
    """``nn.TransformerEncoder`` over ``x [B, T, D]`` with a key padding mask (True = padded)."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        h = self.enc(x, src_key_padding_mask=padding_mask)  # (B, T, D)
        valid = (~padding_mask)[..., None].float()
        return self.head((h * valid).sum(1) / valid.sum(1))


def _masked_transformer_case(model: nn.Module, x: Tensor, pm: Tensor) -> StepCase:
    """A classification step through ``MaskedTransformer`` with the key padding mask ``pm``,
    annotated as the user would: ``x`` [B, T, D], ``padding_mask`` a key padding mask [B, T]."""
    y = torch.randint(0, 3, (x.shape[0],))

    def step(i: int) -> Tensor:
        loss = F.cross_entropy(model(x, pm), y)
        loss.backward()
        return loss

    ann = Annot(
        MaskedTransformer,
        "forward",
        {
            "x": Float[Tensor, "B T D"],
            "padding_mask": Annotated[Bool[Tensor, "B T"], Mask(padding=True)],
        },
    )
    return StepCase(model, step, [ann])


@fault(
    "shapes.padding_mask_length",
    "shapes",
    "torch",
    "nn.TransformerEncoder key padding mask built for the unpadded max length (T - 2)",
    {"argument": "padding_mask", "axis": 1},
)
def _padding_mask_len(faulty: bool):
    model = MaskedTransformer()
    x = torch.randn(3, 9, 8)
    lengths = torch.tensor([7, 5, 3])
    T = int(lengths.max()) if faulty else x.shape[1]  # the fault: mask from max(lengths)
    pm = torch.arange(T)[None, :] >= lengths[:, None]  # (B, T) True = padded
    return _masked_transformer_case(model, x, pm)


@fault(
    "shapes.transformer_padding_mask_polarity",
    "shapes",
    "torch",
    "nn.TransformerEncoder given a valid mask (True = valid) as src_key_padding_mask",
    {"argument": "padding_mask"},
    note="the key padding mask is annotated as such (contracts.Mask(padding=True): True = "
    "padded, at least one False per row); jaxtyping can state the shape only, and the fully "
    "masked rows give zeros, not NaN, so no NaN tool sees it",
)
def _padding_polarity(faulty: bool):
    model = MaskedTransformer()
    x = torch.randn(3, 9, 8)
    lengths = torch.tensor([9, 5, 3])
    valid = torch.arange(9)[None, :] < lengths[:, None]  # (B, T) True = valid
    pm = valid if faulty else ~valid  # the fault: the valid mask where padding is expected
    return _masked_transformer_case(model, x, pm)


# ----------------------------------------------------------------------------- SGMSE / buffer
def _sgmse(**over):
    from models.sgmse import ScoreModel, ScoreModelConfig

    cfg = ScoreModelConfig.tiny(**over)
    model = ScoreModel(cfg)
    nn.init.normal_(model.unet.conv_out.weight, std=0.05)  # a model past its first steps
    return model, cfg


def _spectra(cfg, b: int, frames: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    re = torch.randn(b, cfg.n_freqs, frames, generator=g)
    im = torch.randn(b, cfg.n_freqs, frames, generator=g)
    return torch.complex(re, im) * 0.3


def _sgmse_annot():
    from jaxtyping import Complex

    from models.sgmse import ScoreModel

    return Annot(
        ScoreModel,
        "forward",
        {"x_t": Complex[Tensor, "B F T"], "y": Complex[Tensor, "B F T"],
         "t": Float[Tensor, " B"], "noise_ref": Float[Tensor, "B L"] | None},
        own=True,
    )  # fmt: skip


@fault(
    "shapes.sgmse_noise_ref_channel",
    "shapes",
    "torchdx",
    "SGMSE+ noise reference passed as [B, 1, L] (channel axis kept) instead of [B, L]",
    {"argument": "noise_ref"},
)
def _sgmse_noise_ref(faulty: bool):
    model, cfg = _sgmse()
    x0, y = _spectra(cfg, 3, 6), _spectra(cfg, 3, 6, seed=1)
    ref = torch.randn(3, 1, 96) if faulty else torch.randn(3, 96)

    def step(i: int) -> Tensor:
        t = torch.full((3,), 0.5)
        loss = model(x0, y, t, ref).abs().square().mean()
        loss.backward()
        return loss

    return StepCase(model, step, [_sgmse_annot()])


@fault(
    "shapes.sgmse_frames_mismatch",
    "shapes",
    "torchdx",
    "SGMSE+ state and observation spectra with different frame counts (STFT of unequal clips)",
    {"argument": "y", "axis": 2},
)
def _sgmse_frames(faulty: bool):
    model, cfg = _sgmse()
    x0 = _spectra(cfg, 2, 8)
    y = _spectra(cfg, 2, 9 if faulty else 8, seed=1)  # the noisy clip was one hop longer

    def step(i: int) -> Tensor:
        t = torch.full((2,), 0.5)
        loss = model(x0, y, t).abs().square().mean()
        loss.backward()
        return loss

    return StepCase(model, step, [_sgmse_annot()])


@fault(
    "shapes.buffer_exceeds_frames",
    "shapes",
    "torchdx",
    "diffusion buffer larger than the clip's STFT frames (seed 003)",
    {"names": ["buffer_size"]},
    quick=True,
)
def _buffer(faulty: bool):
    from models.diffusion_buffer import DiffusionBuffer, DiffusionBufferConfig

    cfg = DiffusionBufferConfig.tiny(buffer_size=80 if faulty else 4)
    model = DiffusionBuffer(cfg)
    mix, target = torch.randn(2, 1, 2048) * 0.1, torch.randn(2, 1, 2048) * 0.1

    def step(i: int) -> Tensor:
        loss = model(mix, target)
        loss.backward()
        return loss

    ann = Annot(
        DiffusionBuffer,
        "forward",
        {"mix": Float[Tensor, "B C L"], "target": Float[Tensor, "B C L"]},
        own=True,
    )
    return StepCase(model, step, [ann])


# ----------------------------------------------------------------------------- Whisper
def _whisper_step(model, feats, labels):
    def step(i: int) -> Tensor:
        loss = model(input_features=feats, labels=labels).loss
        loss.backward()
        return loss

    return step


@fault(
    "shapes.whisper_features_transposed",
    "shapes",
    "transformers",
    "Whisper input_features [B, T, n_mels] instead of [B, n_mels, T]",
    {"argument": "input_features", "axis": 1},
    quick=True,
)
def _whisper_bft(faulty: bool):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model, cfg = tiny_whisper()
    feats, labels = whisper_batch(cfg)
    if faulty:
        feats = feats.transpose(1, 2).contiguous()
    ann = Annot(WhisperEncoder, "forward", {"input_features": Float[Tensor, "B 8 T"]})
    return StepCase(model, _whisper_step(model, feats, labels), [ann])


@fault(
    "shapes.whisper_vocab_off_by_one",
    "shapes",
    "transformers",
    "Whisper labels from a tokenizer with one more token than the model's vocabulary",
    {"argument": "labels"},
)
def _whisper_vocab(faulty: bool):
    from transformers import WhisperForConditionalGeneration

    model, cfg = tiny_whisper()
    feats, labels = whisper_batch(cfg)
    labels[1, 2] = cfg.vocab_size if faulty else cfg.vocab_size - 1  # the tokenizer's last id
    ann = Annot(
        WhisperForConditionalGeneration,
        "forward",
        {"labels": Annotated[Int[Tensor, "B S"], Range(0, 39)]},
    )
    return StepCase(model, _whisper_step(model, feats, labels), [ann])


# ----------------------------------------------------------------------------- AudioSR
def _audiosr():
    from models.audiosr import AudioSR, AudioSRConfig

    return AudioSR(AudioSRConfig.tiny(use_global_encoder=True))


@fault(
    "shapes.audiosr_wave_int16_scale",
    "shapes",
    "torchdx",
    "AudioSR trained on int16-scale samples (x32768) instead of waveforms in [-1, 1]",
    {"argument": "wave"},
)
def _audiosr_scale(faulty: bool):
    from models.audiosr import AudioSR

    model = _audiosr()
    wave = torch.rand(2, 1024) * 1.6 - 0.8
    if faulty:
        wave = (wave * 32767).round()  # read with dtype=int16 and cast, never scaled

    def step(i: int) -> Tensor:
        loss = model(wave)
        loss.backward()
        return loss

    return StepCase(
        model, step, [Annot(AudioSR, "forward", {"wave": Float[Tensor, "B L"]}, own=True)]
    )


@fault(
    "shapes.audiosr_global_mel_transposed",
    "shapes",
    "torchdx",
    "AudioSR global context from a whole-file mel in [B, T, M] layout (seed 000's pipeline)",
    {"argument": "lo_mel"},
)
def _audiosr_mel(faulty: bool):
    from models.audiosr import AudioSR

    model = _audiosr()
    mel = torch.randn(2, model.cfg.n_mels, 40)  # the whole file's low-resolution mel [B, M, T]
    if faulty:
        mel = mel.transpose(1, 2).contiguous()  # a torchaudio-style [B, T, M] front end

    def step(i: int) -> Tensor:
        g = model.global_context(mel)
        loss = g.square().mean()
        loss.backward()
        return loss

    ann = Annot(AudioSR, "global_context", {"lo_mel": Float[Tensor, "B M T"]}, own=True)
    return StepCase(model, step, [ann])
