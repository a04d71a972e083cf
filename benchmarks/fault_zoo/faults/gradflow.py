"""Gradient flow (seed 002): detached encoders, closed gates, unused and frozen parameters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._cases import GradCase, fault
from ._common import tiny_whisper, whisper_batch


class CondModel(nn.Module):
    """``y = body(x) + gate * cond(c)``-style conditioned regressor with a cond encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.cond_encoder = nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Linear(16, 8))
        self.body = nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 1)
        self.detach_cond = False

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        e = self.cond_encoder(c)
        if self.detach_cond:  # the fault: a .detach() left from an experiment
            e = e.detach()
        return self.head(self.body(x) * (1 + e)).squeeze(-1)


def _data():
    return torch.randn(8, 8), torch.randn(8, 4), torch.randn(8)


def _mse_step(model, *inputs, y):
    def step():
        loss = F.mse_loss(model(*inputs), y)
        loss.backward()
        return loss

    return step


@fault(
    "gradflow.detached_cond_encoder",
    "gradflow",
    "torch",
    "condition encoder output detached: the encoder never learns",
    {"params": ["cond_encoder"]},
    quick=True,
)
def _detached(faulty: bool):
    model = CondModel()
    model.detach_cond = faulty
    x, c, y = _data()
    return GradCase(model, _mse_step(model, x, c, y=y))


class GatedBranch(nn.Module):
    """A zero-initialised gate on a branch whose last layer is zero-initialised too."""

    def __init__(self, zero: bool) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Linear(16, 8))
        self.gate = nn.Parameter(torch.zeros(1) if zero else torch.full((1,), 0.1))
        if zero:
            nn.init.zeros_(self.proj[2].weight)
            nn.init.zeros_(self.proj[2].bias)

    def forward(self, c: Tensor) -> Tensor:
        return self.gate * self.proj(c)


class GatedModel(nn.Module):
    def __init__(self, zero: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 8))
        self.cond = GatedBranch(zero)
        self.head = nn.Linear(8, 1)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.head(self.body(x) + self.cond(c)).squeeze(-1)


@fault(
    "gradflow.zero_gate_never_opens",
    "gradflow",
    "torch",
    "zero-initialised gate times a zero-initialised branch: neither ever gets a gradient",
    {"params": ["cond"]},
)
def _gate(faulty: bool):
    model = GatedModel(zero=faulty)
    x, c, y = _data()
    return GradCase(model, _mse_step(model, x, c, y=y))


class WithAux(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.SiLU())
        self.head = nn.Linear(16, 1)
        self.aux_head = nn.Linear(16, 1)  # meant for an auxiliary loss
        self.use_aux = True

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        out = self.head(h).squeeze(-1)
        if self.use_aux:
            out = out + 0.1 * self.aux_head(h).squeeze(-1)
        return out


@fault(
    "gradflow.unused_parameters",
    "gradflow",
    "torch",
    "an auxiliary head created but never used in the loss",
    {"params": ["aux_head"]},
)
def _unused(faulty: bool):
    model = WithAux()
    model.use_aux = not faulty
    x, _, y = _data()
    return GradCase(model, _mse_step(model, x, y=y))


class EncDec(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.SiLU())
        self.decoder = nn.Conv1d(8, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


@fault(
    "gradflow.frozen_encoder",
    "gradflow",
    "torch",
    "encoder frozen by requires_grad_(False) left over from a fine-tuning recipe",
    {"params": ["encoder"]},
    note="GradFlow watches only parameters with requires_grad=True; a module frozen by mistake "
    "is not in its report at all (no check lists frozen parameters)",
)
def _frozen(faulty: bool):
    model = EncDec()
    if faulty:
        model.encoder.requires_grad_(False)
    x = torch.randn(4, 2, 16)
    return GradCase(model, _mse_step(model, x, y=x))


@fault(
    "gradflow.sgmse_detached_noise_encoder",
    "gradflow",
    "torchdx",
    "SGMSE+ noise encoder output detached before conditioning (seed 002)",
    {"params": ["noise_encoder"]},
    quick=True,
)
def _sgmse_detached(faulty: bool):
    from models.sgmse import ScoreModel, ScoreModelConfig

    model = ScoreModel(ScoreModelConfig.tiny())  # CFG dropout p_uncond = 0.2 as configured
    nn.init.normal_(model.unet.conv_out.weight, std=0.05)  # a model past its first steps
    if faulty:  # what `emb = self.noise_encoder(ref).detach()` does
        model.noise_encoder.register_forward_hook(lambda m, i, o: o.detach())
    g = torch.Generator().manual_seed(0)
    F_ = model.cfg.n_freqs
    B = 8
    x0 = torch.complex(torch.randn(B, F_, 6, generator=g), torch.randn(B, F_, 6, generator=g))
    y = x0 + 0.3 * torch.complex(
        torch.randn(B, F_, 6, generator=g), torch.randn(B, F_, 6, generator=g)
    )
    ref = torch.randn(B, 96, generator=g)

    def step():
        loss = model.loss(x0 * 0.3, y * 0.3, ref)
        loss.backward()
        return loss

    return GradCase(model, step)


@fault(
    "gradflow.paraformer_frozen_predictor",
    "gradflow",
    "torchdx",
    "Paraformer CIF predictor frozen by mistake (requires_grad_(False))",
    {"params": ["predictor"]},
    note="GradFlow watches only parameters with requires_grad=True; a module frozen by mistake "
    "is not in its report at all (no check lists frozen parameters)",
)
def _paraformer_frozen(faulty: bool):
    from models.paraformer import Paraformer, ParaformerConfig, create_padding_mask

    from ._common import paraformer_batch

    cfg = ParaformerConfig.tiny(max_tokens=4)
    model = Paraformer(cfg)
    if faulty:
        model.predictor.requires_grad_(False)
    feats, toks, fl, tl = paraformer_batch(cfg)
    fm, tm = create_padding_mask(fl, feats.shape[1]), create_padding_mask(tl, toks.shape[1])

    def step():
        loss = model(feats, toks, fm, tm)["loss"]
        loss.backward()
        return loss

    return GradCase(model, step)


@fault(
    "gradflow.whisper_detached_encoder",
    "gradflow",
    "transformers",
    "Whisper encoder states detached before the decoder (encoder_outputs reused from no_grad)",
    {"params": ["model.encoder"]},
)
def _whisper_detached(faulty: bool):
    model, cfg = tiny_whisper()
    feats, labels = whisper_batch(cfg)

    def step():
        enc = model.model.encoder(feats)
        h = enc.last_hidden_state
        loss = model(encoder_outputs=(h.detach() if faulty else h,), labels=labels).loss
        loss.backward()
        return loss

    return GradCase(model, step)
