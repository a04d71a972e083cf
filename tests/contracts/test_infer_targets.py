"""Inference targets for the tests of ``contracts.infer`` (tiny configs of every reference model,
a ``torch.nn.TransformerEncoder`` and a third-party model).

Each ``*_target()`` is a ``--target`` factory; each ``*_batch(...)`` makes one sample input, so a
test can make a fresh batch with new batch size and lengths. Sizes are picked so that unrelated
dims never co-vary by chance (batch sizes 2, 3, 5; lengths that move independently).
"""

from __future__ import annotations

from typing import Any

import torch

import contracts

# (B, T, S) per sample batch: no two columns move together
SIZES = [(2, 20, 3), (3, 14, 5), (5, 25, 4)]
FRESH = (4, 33, 7)  # a batch size and lengths never seen while inferring


def _gen(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(sum(k * 1009**i for i, k in enumerate(key)))


def _lengths(n: int, full: int, g: torch.Generator) -> torch.Tensor:
    lens = torch.randint(1, full + 1, (n,), generator=g)
    lens[0] = full  # the longest row fills the padded length
    return lens


# --- models.paraformer ------------------------------------------------------------------------


def paraformer_model() -> Any:
    from models.paraformer import Paraformer, ParaformerConfig

    torch.manual_seed(0)
    return Paraformer(ParaformerConfig.tiny(n_feats=6, d_model=12)).eval()


def paraformer_batch(model: Any, B: int, T: int, S: int) -> dict[str, torch.Tensor]:
    g = _gen(B, T, S)
    feats = torch.randn(B, T, model.cfg.n_feats, generator=g).clamp(-2, 2)  # (B, T, F)
    feat_mask = torch.arange(T)[None] < _lengths(B, T, g)[:, None]  # (B, T)
    token_mask = torch.arange(S)[None] < _lengths(B, S, g)[:, None]  # (B, S)
    tokens = torch.randint(0, model.vocab_size, (B, S), generator=g)  # (B, S)
    return dict(features=feats, tokens=tokens, feat_mask=feat_mask, token_mask=token_mask)


def paraformer_target() -> contracts.InferTarget:
    m = paraformer_model()
    return contracts.InferTarget(m, [paraformer_batch(m, *s) for s in SIZES])


# --- models.sgmse -----------------------------------------------------------------------------


def sgmse_model() -> Any:
    from models.sgmse import ScoreModel, ScoreModelConfig

    torch.manual_seed(0)
    return ScoreModel(
        ScoreModelConfig.tiny(enc_channels=6, emb_dim=10, temb_dim=12, fourier_dim=14)
    ).eval()


def sgmse_batch(model: Any, B: int, T: int, S: int) -> dict[str, torch.Tensor]:
    g = _gen(B, T, S)
    F = model.cfg.n_freqs
    x = torch.randn(B, F, T, 2, generator=g)
    y = torch.randn(B, F, T, 2, generator=g)
    t = model.cfg.t_eps + (1 - model.cfg.t_eps) * torch.rand(B, generator=g)  # (B,)
    noise_ref = 0.1 * torch.randn(B, 64 + 16 * S, generator=g)  # (B, L)
    return dict(x_t=torch.view_as_complex(x), y=torch.view_as_complex(y), t=t, noise_ref=noise_ref)


def sgmse_target() -> contracts.InferTarget:
    m = sgmse_model()
    return contracts.InferTarget(m, [sgmse_batch(m, *s) for s in SIZES])


# --- models.diffusion_buffer ------------------------------------------------------------------


def diffusion_buffer_model() -> Any:
    from models.diffusion_buffer import CausalUNet, DiffusionBufferConfig

    torch.manual_seed(0)
    return CausalUNet(DiffusionBufferConfig.tiny()).eval()


def diffusion_buffer_batch(model: Any, B: int, T: int, S: int) -> tuple[torch.Tensor, ...]:
    g = _gen(B, T, S)
    F = model.cfg.n_freqs
    x = torch.view_as_complex(torch.randn(B, F, T, 2, generator=g))  # (B, F, T)
    y = torch.view_as_complex(torch.randn(B, F, T, 2, generator=g))  # (B, F, T)
    t = torch.rand(B, T, generator=g)  # (B, T) per-frame time
    return (x, y, t)


def diffusion_buffer_target() -> contracts.InferTarget:
    m = diffusion_buffer_model()
    return contracts.InferTarget(m, [diffusion_buffer_batch(m, *s) for s in SIZES])


# --- models.audiosr ---------------------------------------------------------------------------


def audiosr_model() -> Any:
    from models.audiosr import AudioSR, AudioSRConfig

    torch.manual_seed(0)
    return AudioSR(AudioSRConfig.tiny(global_dim=12, base_channels=20)).eval()


def audiosr_batch(model: Any, B: int, T: int, S: int) -> tuple[torch.Tensor]:
    g = _gen(B, T, S)
    L = model.cfg.hop * (T + 7)
    return (0.5 * torch.rand(B, L, generator=g) - 0.25,)  # (B, L) in [-1, 1]


def audiosr_target() -> contracts.InferTarget:
    m = audiosr_model()
    return contracts.InferTarget(m, [audiosr_batch(m, *s) for s in SIZES])


# --- torch.nn.TransformerEncoder --------------------------------------------------------------


def transformer_model() -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(
        d_model=16, nhead=2, dim_feedforward=24, dropout=0.0, batch_first=True
    )
    return torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


def transformer_batch(model: Any, B: int, T: int, S: int) -> dict[str, torch.Tensor]:
    g = _gen(B, T, S)
    src = torch.randn(B, T, 16, generator=g)  # (B, T, D)
    pad = torch.arange(T)[None] >= _lengths(B, T, g)[:, None]  # (B, T) True = padding
    return dict(src=src, src_key_padding_mask=pad)


def transformer_target() -> contracts.InferTarget:
    m = transformer_model()
    return contracts.InferTarget(m, [transformer_batch(m, *s) for s in SIZES])


# --- a third-party model: a tiny Wav2Vec2 from transformers -------------------------------------


def wav2vec2_model() -> torch.nn.Module:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    return Wav2Vec2Model(cfg).eval()


def wav2vec2_batch(model: Any, B: int, T: int, S: int) -> dict[str, torch.Tensor]:
    g = _gen(B, T, S)
    L = 10 * T + 17  # (B, L) raw audio
    return dict(input_values=torch.randn(B, L, generator=g))


def wav2vec2_target() -> contracts.InferTarget:
    m = wav2vec2_model()
    return contracts.InferTarget(m, [wav2vec2_batch(m, *s) for s in SIZES])


# --- the factories themselves -----------------------------------------------------------------


def test_sample_sizes_never_co_vary() -> None:
    """No two size columns move together, so unrelated dims can't be merged by chance."""
    columns = list(zip(*SIZES, strict=True))
    assert len(set(columns)) == len(columns)
    assert all(len(set(c)) == len(c) for c in columns)
    assert all(f not in c for f, c in zip(FRESH, columns, strict=True))


def test_factories_return_targets() -> None:
    for make in (paraformer_target, transformer_target):
        t = make()
        assert isinstance(t, contracts.InferTarget) and len(t.batches) == len(SIZES)


# --- a second third-party model: a tiny Whisper (encoder-decoder, token ids) -------------------


def whisper_model() -> torch.nn.Module:
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=40,
        num_mel_bins=12,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=24,
        decoder_ffn_dim=24,
        d_model=16,
        max_source_positions=10,  # the encoder takes exactly 2 * 10 frames
        max_target_positions=48,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return WhisperModel(cfg).eval()


def whisper_batch(model: Any, B: int, T: int, S: int) -> dict[str, torch.Tensor]:
    g = _gen(B, T, S)
    cfg = model.config
    frames = 2 * cfg.max_source_positions
    return dict(
        input_features=torch.randn(B, cfg.num_mel_bins, frames, generator=g),  # (B, M, 20)
        decoder_input_ids=torch.randint(0, cfg.vocab_size, (B, S), generator=g),  # (B, S)
    )


def whisper_target() -> contracts.InferTarget:
    m = whisper_model()
    return contracts.InferTarget(m, [whisper_batch(m, *s) for s in SIZES])
