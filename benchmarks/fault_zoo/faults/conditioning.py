"""Conditioning (seed 002): severed cross-attention, collapsed encoders, bias-only conditions,
CFG dropout that never drops or drops at evaluation, and null conditions that disagree."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._cases import AblationCase, ProbeCase, fault
from ._common import CondNet, ZooFinding, tiny_whisper, whisper_task

_COND_SITES = ["arg:t", "arg:cond", "cond_encoder"]  # where the user says conditions enter
_COND_PATH = ["arg:cond", "cond_encoder"]


def _cond_batches(n: int = 2, b: int = 8, seed: int = 0) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"x": torch.randn(b, 6, 16, generator=g), "t": torch.rand(b, generator=g),
         "cond": torch.randn(b, 8, generator=g)}
        for _ in range(n)
    ]  # fmt: skip


def _target(model: nn.Module, **kw):
    import diagnostics

    return diagnostics.AblationTarget(model=model.eval(), batches=_cond_batches(), **kw)


@fault(
    "conditioning.severed_cross_attention",
    "conditioning",
    "torch",
    "cross-attention attends to the features instead of the condition tokens",
    {"sites": _COND_PATH},
    quick=True,
)
def _severed(faulty: bool):
    model = CondNet(mode="xattn")
    model.sever = faulty
    return AblationCase(_target(model), _COND_SITES, embedding_site="cond_encoder")


@fault(
    "conditioning.collapsed_encoder",
    "conditioning",
    "torch",
    "condition encoder collapsed to a constant (dead last layer: only its bias remains)",
    {"sites": _COND_PATH},
)
def _collapsed(faulty: bool):
    model = CondNet(mode="xattn")
    if faulty:
        with torch.no_grad():
            model.cond_encoder[2].weight.zero_()
    return AblationCase(_target(model), _COND_SITES, embedding_site="cond_encoder")


@fault(
    "conditioning.bias_only",
    "conditioning",
    "torch",
    "condition used only as an output bias (added after the last layer), not modulating features",
    {"sites": _COND_PATH},
)
def _bias_only(faulty: bool):
    model = CondNet(mode="bias" if faulty else "film")
    return AblationCase(_target(model), _COND_SITES, embedding_site="cond_encoder")


class CFGNet(nn.Module):
    """A conditioned regressor with classifier-free-guidance dropout of its condition.

    ``forward(x, cond, drop_cond=None)``: where ``drop_cond`` is True the condition is replaced
    by the learned ``null``. With ``drop_cond=None`` the model draws its own drop mask with
    probability ``p`` in training (and, with the ``eval_bug``, at evaluation too).
    """

    def __init__(self, p: float = 0.2, eval_bug: bool = False) -> None:
        super().__init__()
        self.p, self.eval_bug = p, eval_bug
        self.enc = nn.Linear(8, 16)
        self.null = nn.Parameter(torch.zeros(16))
        self.body = nn.Linear(16 + 16, 1)

    def forward(self, x: Tensor, cond: Tensor, drop_cond: Tensor | None = None) -> Tensor:
        if drop_cond is None and (self.training or self.eval_bug):
            drop_cond = torch.rand(x.shape[0]) < self.p
        e = self.enc(cond)
        if drop_cond is not None:
            e = torch.where(drop_cond[:, None], self.null.expand_as(e), e)
        return self.body(torch.cat([x, e], dim=-1)).squeeze(-1)


def _cfg_probe(model: CFGNet, train_drop: Any, eval_calls: int = 0):
    import diagnostics

    def probe() -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(0)
        with diagnostics.CFGDropoutMonitor(model, p=0.2, mask_arg="drop_cond") as mon:
            for _ in range(20):
                x, c = torch.randn(8, 16, generator=g), torch.randn(8, 8, generator=g)
                model.train()
                loss = F.mse_loss(model(x, c, drop_cond=train_drop(8)), torch.zeros(8))
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step()
            model.eval()
            with torch.no_grad():
                for _ in range(eval_calls):  # validation: should always use the condition
                    model(torch.randn(8, 16, generator=g), torch.randn(8, 8, generator=g))
                    mon.step()
        rep = mon.report()
        if not rep.ok:
            raise ZooFinding(str(rep))

    return probe


@fault(
    "conditioning.cfg_dropout_never_applied",
    "conditioning",
    "torch",
    "CFG dropout p=0.2 configured, but the training loop passes an all-False drop mask",
    {"names": ["never"]},
    quick=True,
)
def _cfg_never(faulty: bool):
    model = CFGNet()
    if faulty:
        drop = lambda b: torch.zeros(b, dtype=torch.bool)  # noqa: E731  (p read as 0 somewhere)
    else:
        drop = lambda b: torch.rand(b) < 0.2  # noqa: E731
    return ProbeCase(_cfg_probe(model, drop), "CFGDropoutMonitor")


@fault(
    "conditioning.cfg_dropout_at_eval",
    "conditioning",
    "torch",
    "CFG dropout also applied at evaluation (the model drops its condition in eval mode)",
    {"names": ["eval"]},
)
def _cfg_eval(faulty: bool):
    model = CFGNet(eval_bug=faulty)
    return ProbeCase(
        _cfg_probe(model, lambda b: torch.rand(b) < 0.2, eval_calls=10), "CFGDropoutMonitor"
    )


def _ddp_probe(seeding: str, world: int = 2, timeout: float = 90.0):
    """Run the DDP worker on ``world`` gloo ranks; raise ZooFinding when the ranks' report
    flags something."""

    def probe() -> None:
        import json
        import os
        import subprocess
        import sys
        import tempfile
        from pathlib import Path

        root = Path(__file__).resolve().parents[3]
        with tempfile.TemporaryDirectory(prefix="fault-zoo-ddp-") as tmp:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(k, None)
            cmd = [sys.executable, "-m", "benchmarks.fault_zoo.faults._ddp_worker"]
            procs = [
                subprocess.Popen(
                    [*cmd, str(r), str(world), os.path.join(tmp, "store"), tmp, seeding],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    cwd=str(root),
                )
                for r in range(world)
            ]
            outs = []
            try:
                for p in procs:
                    outs.append(p.communicate(timeout=timeout)[0])
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            report = Path(tmp, "report.json")
            if not report.exists():
                tail = (outs[0] if outs else "").strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"DDP workers failed: {tail[0]}")
            rep = json.loads(report.read_text())
        if rep["flags"]:
            raise ZooFinding(rep["message"])

    return probe


@fault(
    "conditioning.ddp_identical_dropout_masks",
    "conditioning",
    "torch",
    "under DDP (2 gloo ranks) every rank seeds its CFG dropout RNG alike: identical masks",
    {"names": ["identical"]},
)
def _ddp_masks(faulty: bool):
    return ProbeCase(_ddp_probe("same" if faulty else "per_rank"), "CFGDropoutMonitor.report_ranks")


class NullNet(nn.Module):
    """A CFG model whose unconditional input is ``cond=None``: the learned null embedding in
    training; with the fault, inference code builds the null as zeros instead."""

    def __init__(self, zero_null_at_inference: bool) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 16))
        self.null = nn.Parameter(torch.randn(16))  # trained null embedding
        self.body = nn.Sequential(nn.Linear(16 + 16, 32), nn.SiLU(), nn.Linear(32, 16))
        self.zero_null = zero_null_at_inference

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            null = (
                torch.zeros_like(self.null) if self.zero_null and not self.training else self.null
            )
            e = null.expand(x.shape[0], -1)
        else:
            e = self.enc(cond)
        return self.body(torch.cat([x, e], dim=-1))


@fault(
    "conditioning.null_differs_train_inference",
    "conditioning",
    "torch",
    "the null condition at inference (zeros) differs from the learned null used in training",
    {"names": ["arg:cond"]},  # the probe's finding names the argument the null replaces
)
def _null(faulty: bool):
    import diagnostics

    model = NullNet(zero_null_at_inference=faulty).eval()
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(8, 16, generator=g), "cond": torch.randn(8, 8, generator=g)}

    def probe() -> None:  # what a user runs before sampling with guidance
        rep = diagnostics.check_null_condition(model, batch, null={"cond": None})
        if not rep.ok:
            raise ZooFinding(str(rep))

    return ProbeCase(probe, "check_null_condition")


# ----------------------------------------------------------------------------- SGMSE+
def _sgmse_target(faulty_hook: Any = None):
    """The shipped noise-conditioned SGMSE+ (EMA) on held-out synthetic mixtures at t = 0.5."""
    import diagnostics
    from models.audio import make_mixtures, stft
    from models.sgmse import load_pretrained

    model = load_pretrained("cond").eval()
    if faulty_hook is not None:
        faulty_hook(model)
    mixes = make_mixtures("heldout", 12, seed=0, seconds=0.5)
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(0, 12, 6):
        group = mixes[i : i + 6]
        clean = torch.stack([m.clean for m in group])  # (B, L)
        noisy = torch.stack([m.noisy for m in group])  # (B, L)
        ref = torch.stack([m.noise_ref for m in group])  # (B, L_ref)
        scale = noisy.abs().amax(-1, keepdim=True).clamp_min(1e-8)  # (B, 1)
        x0 = stft(clean / scale, model.cfg.stft)[..., 8:24]  # (B, F, 16)
        y = stft(noisy / scale, model.cfg.stft)[..., 8:24]
        t = torch.full((6,), 0.5)
        mean, std = model.sde.marginal_prob(x0, y, t)
        z = torch.randn(x0.shape, dtype=x0.dtype, generator=g)
        batches.append({"x_t": mean + std[:, None, None] * z, "y": y, "t": t,
                        "noise_ref": ref / scale})  # fmt: skip
    null = {"arg:noise_ref": lambda v: None, "noise_encoder": model.null_embedding.detach()}
    return diagnostics.AblationTarget(model=model, batches=batches, null=null)


_SGMSE_SITES = ["arg:noise_ref", "noise_encoder"]


@fault(
    "conditioning.sgmse_severed_condition",
    "conditioning",
    "torchdx",
    "shipped SGMSE+ with its condition projection cut (cond_to_temb output zeroed by a patch)",
    {"sites": _SGMSE_SITES},
)
def _sgmse_severed(faulty: bool):
    def sever(model):
        model.cond_to_temb.register_forward_hook(lambda m, inp, out: torch.zeros_like(out))

    target = _sgmse_target(sever if faulty else None)
    return AblationCase(target, _SGMSE_SITES, embedding_site="noise_encoder")


@fault(
    "conditioning.sgmse_collapsed_noise_encoder",
    "conditioning",
    "torchdx",
    "shipped SGMSE+ whose noise encoder collapsed: every reference maps to one embedding",
    {"sites": _SGMSE_SITES},
)
def _sgmse_collapsed(faulty: bool):
    def collapse(model):
        with torch.no_grad():
            model.noise_encoder.out.weight.zero_()  # a dead output layer: only the bias is left

    target = _sgmse_target(collapse if faulty else None)
    return AblationCase(target, _SGMSE_SITES, embedding_site="noise_encoder")


# ----------------------------------------------------------------------------- Whisper
@fault(
    "conditioning.whisper_severed_cross_attention",
    "conditioning",
    "transformers",
    "Whisper decoder cross-attention outputs zeroed (a bad merge of an adapter patch)",
    {"sites": ["arg:input_features"]},
)
def _whisper_severed(faulty: bool):
    import diagnostics

    model, cfg = tiny_whisper()
    model.eval()
    if faulty:
        for layer in model.model.decoder.layers:
            layer.encoder_attn.register_forward_hook(
                lambda m, i, o: (torch.zeros_like(o[0]), *o[1:])
            )
    batches = []
    for s in range(2):
        f, lab = whisper_task(cfg, 8, seed=s)
        batches.append({"input_features": f, "decoder_input_ids": lab})
    target = diagnostics.AblationTarget(
        model=model, batches=batches, forward=lambda m, b: m(**b).logits
    )
    return AblationCase(target, ["arg:input_features"])
