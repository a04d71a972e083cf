"""Non-finite values: division by sigma = 0, log(0), sqrt at 0, masked rows, fp16, lr, padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._cases import StepCase, fault
from ._common import paraformer_batch, tiny_whisper, whisper_batch


class ScoreHead(nn.Module):
    """Score from the predicted unit noise: ``-eps_hat / sigma``."""

    def forward(self, eps_hat: Tensor, sigma: Tensor) -> Tensor:
        return -eps_hat / sigma[:, None]


class TinyScore(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(9, 32), nn.SiLU(), nn.Linear(32, 8))
        self.head = ScoreHead()

    def forward(self, x: Tensor, t: Tensor, sigma: Tensor) -> Tensor:
        return self.head(self.net(torch.cat([x, t[:, None]], dim=-1)), sigma)


@fault(
    "nonfinite.sigma_zero",
    "nonfinite",
    "torch",
    "score target -z/sigma with t_eps = 0: sigma(0) = 0 divides by zero (seed 003)",
    {"module": "head", "phase": "forward", "items": [0]},
    quick=True,
)
def _sigma_zero(faulty: bool):
    model = TinyScore()
    t_eps = 0.0 if faulty else 0.03
    t = torch.linspace(t_eps, 1.0, 4)  # a sorted diffusion-time grid
    x0 = torch.randn(4, 8)

    def step(i: int) -> Tensor:
        sigma = 0.5 * t  # VE-like schedule with sigma_min = 0
        z = torch.randn_like(x0)
        score = model(x0 + sigma[:, None] * z, t, sigma)
        loss = (sigma[:, None] * score + z).square().mean()
        loss.backward()
        return loss

    return StepCase(model, step, context={"t": t})


class Probs(nn.Module):
    """Class probabilities by ReLU normalisation (exact zeros are possible)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 4)
        with torch.no_grad():
            self.lin.bias[3] = -100.0  # class 3 is never predicted by the fresh model

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.lin(x))
        return h / (h.sum(-1, keepdim=True) + 1e-6)


@fault(
    "nonfinite.log_zero_loss",
    "nonfinite",
    "torch",
    "negative log-likelihood takes log(0) of a probability that is exactly zero",
    {"module": None, "phase": "forward"},
    quick=True,
)
def _log0(faulty: bool):
    model = Probs()
    x = torch.randn(6, 8)
    y = torch.tensor([0, 1, 2, 3, 0, 1])

    def step(i: int) -> Tensor:
        p = model(x).gather(1, y[:, None]).squeeze(1)
        logp = torch.log(p) if faulty else torch.log(p.clamp_min(1e-8))
        loss = -logp.mean()
        loss.backward()
        return loss

    return StepCase(model, step)


class Energy(nn.Module):
    """Frame energy ``sqrt(sum x^2)``; the healthy twin adds an epsilon under the root."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, h: Tensor) -> Tensor:
        return (h.square().sum(-1) + self.eps).sqrt()  # (B, T)


class EnergyNet(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.frontend = nn.Linear(8, 8, bias=False)
        self.energy = Energy(eps)
        self.head = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.energy(self.frontend(x))).squeeze(-1)


@fault(
    "nonfinite.sqrt_backward_zero",
    "nonfinite",
    "torch",
    "sqrt of a frame energy that is exactly 0 (a silent frame): infinite slope in backward",
    {"module": "energy", "phase": "backward"},
)
def _sqrt0(faulty: bool):
    model = EnergyNet(0.0 if faulty else 1e-8)
    x = torch.randn(3, 6, 8)
    x[1, 4:] = 0.0  # silent frames in item 1

    def step(i: int) -> Tensor:
        loss = model(x).square().mean()
        loss.backward()
        return loss

    return StepCase(model, step)


class AttnPool(nn.Module):
    """``nn.MultiheadAttention`` self-attention with a key padding mask, masked mean pooling."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, 3)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        h = self.inp(x)
        a, _ = self.attn(h, h, h, key_padding_mask=padding_mask)  # need_weights: default True
        valid = (~padding_mask)[..., None].float()
        return self.head((a * valid).sum(1) / valid.sum(1).clamp_min(1.0))


@fault(
    "nonfinite.fully_masked_attention_row",
    "nonfinite",
    "torch",
    "an empty utterance (length 0): nn.MultiheadAttention softmax over a fully masked row",
    {"module": "attn", "phase": "forward", "items": [1]},
    quick=True,
)
def _masked_row(faulty: bool):
    model = AttnPool()
    x = torch.randn(3, 6, 8)
    lengths = torch.tensor([6, 0 if faulty else 2, 4])
    pm = torch.arange(6)[None, :] >= lengths[:, None]  # (B, T) True = padded
    y = torch.tensor([0, 1, 2])

    def step(i: int) -> Tensor:
        loss = F.cross_entropy(model(x, pm), y)
        loss.backward()
        return loss

    return StepCase(model, step, context={"padding_mask": pm})


class RawAttn(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, _ = self.attn(x, x, x)
        return self.head(a).squeeze(-1)


@fault(
    "nonfinite.fp16_autocast_overflow",
    "nonfinite",
    "torch",
    "un-normalised features (x1000) under fp16 autocast: attention scores overflow float16",
    {"module": "attn", "phase": "forward"},
)
def _fp16(faulty: bool):
    model = RawAttn()
    x = torch.randn(2, 5, 16) * (1000.0 if faulty else 1.0)
    y = torch.randn(2, 5)

    def step(i: int) -> Tensor:
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        loss.backward()
        return loss

    return StepCase(model, step)


@fault(
    "nonfinite.exploding_lr",
    "nonfinite",
    "torch",
    "learning rate 100x too large: the loss diverges over steps until it overflows",
    {"exploding": True, "phase": "optimizer"},
)
def _lr(faulty: bool):
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1.0 if faulty else 0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 1)

    def step(i: int) -> Tensor:
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    def after(i: int) -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    return StepCase(model, step, steps=60, after=after, watch_grads=True)


class LogFrontend(nn.Module):
    """Log-compressed power spectrum; the healthy twin floors the power before the log."""

    def __init__(self, floor: float) -> None:
        super().__init__()
        self.floor = floor

    def forward(self, power: Tensor) -> Tensor:
        return torch.log(power.clamp_min(self.floor)) if self.floor > 0 else torch.log(power)


class SpecPool(nn.Module):
    def __init__(self, floor: float) -> None:
        super().__init__()
        self.frontend = LogFrontend(floor)
        self.proj = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, power: Tensor, valid: Tensor) -> Tensor:
        h = torch.tanh(self.proj(self.frontend(power)))  # (B, T, 8)
        m = valid[..., None].float()
        return self.head((h * m).sum(1) / m.sum(1))


@fault(
    "nonfinite.nan_in_padding_item",
    "nonfinite",
    "torch",
    "log of zero-padded power frames: -inf only in the padding of batch item 1",
    {"module": "frontend", "phase": "forward", "items": [1], "in_padding": True},
)
def _pad_item(faulty: bool):
    model = SpecPool(0.0 if faulty else 1e-10)
    power = torch.rand(3, 7, 6) + 0.1
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[1, 4:] = False
    power[1, 4:] = 0.0  # zero padding
    y = torch.tensor([0, 1, 2])

    def step(i: int) -> Tensor:
        loss = F.cross_entropy(model(power, valid), y)
        loss.backward()
        return loss

    return StepCase(model, step, context={"valid_mask": valid})


class Normalize(nn.Module):
    """Per-item standardisation over time; the healthy twin adds an epsilon to the std."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(dim=(1, 2), keepdim=True)
        sd = x.std(dim=(1, 2), keepdim=True)
        return (x - mu) / (sd + self.eps)


class NormNet(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.norm = Normalize(eps)
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.conv(self.norm(x))).mean(-1))


@fault(
    "nonfinite.silent_item_normalize",
    "nonfinite",
    "torch",
    "per-item standardisation without epsilon: a silent clip (item 2) gives 0/0",
    {"module": "norm", "phase": "forward", "items": [2]},
)
def _silent(faulty: bool):
    model = NormNet(0.0 if faulty else 1e-5)
    x = torch.randn(4, 4, 20)
    x[2] = 0.0  # a silent clip
    y = torch.tensor([0, 1, 0, 1])

    def step(i: int) -> Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return StepCase(model, step)


@fault(
    "nonfinite.paraformer_empty_utterance",
    "nonfinite",
    "torchdx",
    "Paraformer batch with an empty utterance (feat_mask row all False): masked softmax NaN",
    {"module": "encoder.blocks.0.attn", "phase": "forward", "items": [2]},
)
def _paraformer_empty(faulty: bool):
    from models.paraformer import Paraformer, ParaformerConfig

    cfg = ParaformerConfig.tiny(max_tokens=4)
    model = Paraformer(cfg)
    feats, toks, fl, tl = paraformer_batch(cfg)
    if faulty:
        fl = fl.clone()
        fl[2] = 0  # the utterance was empty after trimming
    fm = torch.arange(feats.shape[1])[None, :] < fl[:, None]  # (B, T) True = valid
    tm = torch.arange(toks.shape[1])[None, :] < tl[:, None]

    def step(i: int) -> Tensor:
        out = model(feats, toks, fm, tm)
        out["loss"].backward()
        return out["loss"]

    return StepCase(model, step, context={"valid_mask": fm})


@fault(
    "nonfinite.whisper_fp16_raw_features",
    "nonfinite",
    "transformers",
    "Whisper fed raw power (x1e5) instead of log-mel under fp16 autocast: conv1 overflows",
    {"module": "model.encoder.conv1", "phase": "forward"},
)
def _whisper_fp16(faulty: bool):
    model, cfg = tiny_whisper()
    feats, labels = whisper_batch(cfg)
    feats = feats.abs() * (1e5 if faulty else 1.0)

    def step(i: int) -> Tensor:
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(input_features=feats, decoder_input_ids=labels).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        return loss

    return StepCase(model, step)
