"""The CIF predictor of Paraformer (continuous integrate-and-fire).

Facts followed (FunASR ``CifPredictorV2``): a depthwise conv1d (kernel 3) -> ReLU -> Linear ->
sigmoid gives one weight ``alpha_t`` in [0, 1] per encoder frame, zeroed at padding; the
expected token count is ``sum_t alpha_t``; in training the alphas are rescaled so that they sum
to the target length; integrate-and-fire accumulates ``alpha_t * h_t`` and emits one acoustic
embedding each time the running sum crosses the threshold (1.0), the crossing frame's weight
being split between the two tokens; at inference a tail weight 0.45 is appended after the last
frame so a nearly complete final token still fires.

Seed 004's table describes a frame-level *boundary classifier* (``predictions [B, T, 1]``,
alignment targets per frame). We follow Paraformer instead -- alphas ``[B, T]`` trained by the
quantity loss ``|N - sum(alpha)|`` only -- because CIF needs no frame alignment; the table's
boundary tools (``compute_alignment_loss``, ``generate_alignment_targets``,
``extract_token_positions``) are kept as optional supervision and debugging aids.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

import contracts
from contracts import Mask, Probability, Range, contract

from ._config import ParaformerConfig, PredictorCollapseError

__all__ = ["Predictor", "check_alphas", "cif"]


@contract(
    strategies={"threshold": lambda st: st.sampled_from([1.0]), "n_out": lambda st: st.none()}
)
def cif(
    hidden: Float[Tensor, "B T D"],
    alphas: Annotated[Float[Tensor, "B T"], Range(0, None)],
    threshold: Annotated[float, Range(0.1, None)] = 1.0,
    n_out: Annotated[int, Range(1, None)] | None = None,
) -> Float[Tensor, "B N D"]:
    """Integrate-and-fire: token ``k`` (1-based) collects ``alpha_t * h_t`` for the part of
    frame ``t``'s weight that lies between ``k - 1`` and ``k`` on the running sum.

    Vectorised form of the sequential loop: with ``c_t = cumsum(alpha)/threshold``, token ``k``
    takes ``max(0, min(c_t, k) - max(c_{t-1}, k - 1))`` of frame ``t`` -- exactly the weight the
    loop gives when it fires at the threshold and carries the remainder over.

    Args:
        hidden: ``[B, T, D]`` frames to integrate.
        alphas: ``[B, T]`` non-negative weights (0 at padding).
        threshold: firing threshold.
        n_out: number of output tokens N (default: the largest number of fires in the batch).

    Returns:
        ``[B, N, D]`` acoustic embeddings; rows past a sample's own count are partial or zero.

    Example:
        >>> h = torch.eye(3)[None]                     # 3 frames, one-hot features
        >>> cif(h, torch.tensor([[0.5, 0.75, 0.75]])).squeeze(0).tolist()
        [[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]]
    """
    c = torch.cumsum(alphas, dim=1) / threshold  # (B, T) running integral in token units
    c_prev = c - alphas / threshold  # (B, T)
    if n_out is None:
        n_out = max(1, int(torch.floor(c[:, -1] + 1e-4).max()))
    k = torch.arange(1, n_out + 1, device=alphas.device, dtype=alphas.dtype)[None, :, None]
    w = torch.minimum(c[:, None, :], k) - torch.maximum(c_prev[:, None, :], k - 1)  # (B, N, T)
    w = w.clamp(min=0.0) * threshold
    return w @ hidden  # (B, N, T) @ (B, T, D) -> (B, N, D)


@contract(generate=False)
def check_alphas(
    alphas: Annotated[Float[Tensor, "B T"], Range(0, None)],
    mask: Annotated[Bool[Tensor, "B T"], Mask()],
    low: float = 0.02,
    high: float = 0.98,
    share: float = 0.95,
) -> None:
    """Raise :class:`PredictorCollapseError` when the predictor's alphas are saturated.

    Seed guide, "Predictor outputs are all zeros or ones": if more than ``share`` of the valid
    frames have alpha below ``low`` (or above ``high``) the predictor is not learning an
    alignment. Cheap enough to call on every validation batch.
    """
    valid = alphas[mask]
    n = valid.numel()
    lo_share = float((valid < low).sum()) / n
    hi_share = float((valid > high).sum()) / n
    for which, frac, hint in (
        ("0", lo_share, "no token will ever fire (empty transcripts)"),
        ("1", hi_share, "every frame fires a token (one token per frame)"),
    ):
        if frac > share:
            raise PredictorCollapseError(
                f"check_alphas: CIF predictor collapsed -- {frac:.0%} of {n} valid frames have "
                f"alpha about {which} (mean {float(valid.mean()):.3f}); {hint}. Check that "
                "predictor_weight > 0, the quantity loss is in the total loss, and the "
                "predictor's output bias/learning rate"
            )


@contracts.example(lambda: Predictor(ParaformerConfig.tiny()))
class Predictor(nn.Module):
    """CIF predictor: alphas from encoder frames, and integrate-and-fire into token embeddings.

    Example:
        >>> cfg = ParaformerConfig.tiny()
        >>> p = Predictor(cfg)
        >>> enc, mask = torch.randn(2, 10, cfg.d_model), torch.ones(2, 10, dtype=torch.bool)
        >>> p(enc, mask).shape
        torch.Size([2, 10])
    """

    def __init__(self, cfg: ParaformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k, d = cfg.predictor_kernel, cfg.d_model
        self.conv = nn.Conv1d(d, d, k, padding=k // 2, groups=d)  # depthwise, l/r order k//2
        self.out = nn.Linear(d, 1)
        self.threshold = cfg.threshold
        self.tail_threshold = cfg.tail_threshold

    @contract(dims={"D": "self.cfg.d_model"})
    def forward(
        self,
        encoder_out: Float[Tensor, "B T D"],
        padding_mask: Annotated[Bool[Tensor, "B T"], Mask()],
    ) -> Annotated[Float[Tensor, "B T"], Probability()]:
        """Alphas ``[B, T]`` in [0, 1], 0 at padded frames.

        Seed table: ``[B, T, 1]``; we keep FunASR's squeezed ``[B, T]`` since CIF and the
        token count work on one scalar per frame.
        """
        # zero the padded frames first so the conv at the edge does not read padding content
        x = encoder_out.masked_fill(~padding_mask[..., None], 0.0).transpose(1, 2)  # (B, D, T)
        h = F.relu(self.conv(x)).transpose(1, 2)  # (B, T, D)
        alphas = torch.sigmoid(self.out(h)).squeeze(-1)  # (B, T)
        return alphas * padding_mask

    @contract(
        dims={"D": "self.cfg.d_model"},
        sizes={"T": (1, 16)},
        strategies={"target_lengths": lambda st: st.none()},
    )
    def integrate(
        self,
        encoder_out: Float[Tensor, "B T D"],
        alphas: Annotated[Float[Tensor, "B T"], Probability()],
        padding_mask: Annotated[Bool[Tensor, "B T"], Mask()],
        target_lengths: Annotated[Int[Tensor, " B"], Range(1, None)] | None = None,
    ) -> tuple[
        Float[Tensor, "B N D"],
        Annotated[Int[Tensor, " B"], Range(0, "N")],
        Annotated[Float[Tensor, " B"], Range(0, None)],
    ]:
        """Fire acoustic embeddings.

        Training (``target_lengths`` given): alphas are rescaled to sum to the target length
        and exactly ``N = max(target_lengths)`` tokens are taken. Inference: a tail weight
        ``tail_threshold`` is placed on a zero frame after each sequence and the count is
        ``floor(sum(alpha) + tail)``.

        Returns:
            ``(acoustic_embeds [B, N, D], counts [B], token_num [B])``; ``token_num`` is the
            raw ``sum(alpha)`` (the quantity the L1 loss trains).
        """
        token_num = alphas.sum(dim=1)  # (B,)
        if target_lengths is not None:
            scale = target_lengths.to(alphas.dtype) / token_num.clamp(min=1e-6)  # (B,)
            scaled = alphas * scale[:, None]  # (B, T), sums to target length
            n_out = int(target_lengths.max())
            embeds = cif(encoder_out, scaled, self.threshold, n_out)
            return embeds, target_lengths.clone(), token_num
        B, T, D = encoder_out.shape
        lengths = padding_mask.sum(dim=1)  # (B,)
        hidden = torch.cat(
            [
                encoder_out.masked_fill(~padding_mask[..., None], 0.0),
                encoder_out.new_zeros(B, 1, D),
            ],
            dim=1,
        )  # (B, T+1, D)
        tail = F.one_hot(lengths, T + 1).to(alphas.dtype) * self.tail_threshold  # (B, T+1)
        a = torch.cat([alphas, alphas.new_zeros(B, 1)], dim=1) + tail  # (B, T+1)
        counts = torch.floor(a.sum(dim=1) / self.threshold + 1e-4).long()  # (B,)
        embeds = cif(hidden, a, self.threshold, max(1, int(counts.max())))
        return embeds, counts, token_num

    @contract(dims={"D": "self.cfg.d_model"})
    def compute_alignment_loss(
        self,
        predictions: Annotated[Float[Tensor, "B T"], Probability()],
        target_alignments: Annotated[Float[Tensor, "B T"], Probability()],
        padding_mask: Annotated[Bool[Tensor, "B T"], Mask()],
    ) -> Annotated[Float[Tensor, ""], Range(0, None)]:
        """Masked binary cross-entropy between alphas and frame-level targets (optional
        supervision from the seed's table; not part of Paraformer's own loss). Clamped so a
        0/1 prediction cannot give ``log(0)``."""
        p = predictions.clamp(1e-6, 1 - 1e-6)
        bce = F.binary_cross_entropy(p, target_alignments, reduction="none")  # (B, T)
        return (bce * padding_mask).sum() / padding_mask.sum()

    @contract(
        dims={"D": "self.cfg.d_model"},
        strategies={"threshold": lambda st: st.sampled_from([0.5, 1.0])},
    )
    def extract_token_positions(
        self,
        probabilities: Annotated[Float[Tensor, "B T"], Range(0, None)],
        padding_mask: Annotated[Bool[Tensor, "B T"], Mask()],
        threshold: Annotated[float, Range(0.1, 1.0)] = 1.0,
    ) -> list[list[int]]:
        """Frames at which integrate-and-fire emits a token (running sum crosses a multiple
        of ``threshold``), valid frames only. (The seed's "minimum boundary probability" is,
        in CIF, the firing threshold.)"""
        c = torch.cumsum(probabilities * padding_mask, dim=1) / threshold  # (B, T)
        fired = torch.floor(c + 1e-4) > torch.floor(c - probabilities / threshold + 1e-4)
        fired &= padding_mask
        return [torch.nonzero(row).flatten().tolist() for row in fired]

    @contract(
        dims={"D": "self.cfg.d_model"},
        strategies={
            "token_positions": lambda st: st.lists(
                st.lists(st.integers(0, 9), max_size=4), min_size=1, max_size=3
            ),
            "sequence_length": lambda st: st.integers(10, 20),
            "method": lambda st: st.sampled_from(["boundary", "gaussian"]),
        },
    )
    def generate_alignment_targets(
        self,
        token_positions: list[list[int]],
        sequence_length: Annotated[int, Range(1, None)],
        method: str = "boundary",
    ) -> Annotated[Float[Tensor, "B T"], Probability()]:
        """Frame targets ``[B, T]``: 1 at each token position (``'boundary'``) or a Gaussian
        bump of width 1 frame around it, peak 1 (``'gaussian'``)."""
        if method not in ("boundary", "gaussian"):
            raise ValueError(
                f"Predictor.generate_alignment_targets: method={method!r}; use 'boundary' or "
                "'gaussian'"
            )
        out = torch.zeros(len(token_positions), sequence_length)  # (B, T)
        t = torch.arange(sequence_length, dtype=torch.float32)
        for b, positions in enumerate(token_positions):
            for p in positions:
                if not 0 <= p < sequence_length:
                    raise ValueError(
                        f"Predictor.generate_alignment_targets: token_positions[{b}] holds {p},"
                        f" outside [0, sequence_length-1={sequence_length - 1}]"
                    )
                if method == "boundary":
                    out[b, p] = 1.0
                else:
                    out[b] = torch.maximum(out[b], torch.exp(-0.5 * (t - p) ** 2))
        return out

    @contract(dims={"D": "self.cfg.d_model"}, generate=False)
    def visualize_alignment(
        self,
        probabilities: Annotated[Float[Tensor, "B T"], Range(0, None)],
        token_positions: list[list[int]] | None = None,
        feature_lengths: Annotated[Int[Tensor, " B"], Range(1, "T")] | None = None,
    ) -> dict[str, Any]:
        """Figure of alphas and their running sum per item, with fire positions (and the
        given ``token_positions`` as dashed lines). Returns ``{"figure", "fires",
        "token_num"}``; matplotlib is imported lazily."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        B, T = probabilities.shape
        lengths = feature_lengths if feature_lengths is not None else torch.full((B,), T)
        mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
        fires = self.extract_token_positions(probabilities, mask)
        fig, axes = plt.subplots(B, 1, figsize=(10, 2.2 * B), squeeze=False)
        for b in range(B):
            n = int(lengths[b])
            a = probabilities[b, :n].detach().float().cpu()
            ax = axes[b, 0]
            ax.bar(range(n), a.numpy(), color="tab:blue", label="alpha")
            ax2 = ax.twinx()
            ax2.plot(torch.cumsum(a, 0).numpy(), color="tab:orange", label="sum alpha")
            for p in fires[b]:
                ax.axvline(p, color="tab:green", alpha=0.6)
            for p in token_positions[b] if token_positions else []:
                ax.axvline(p, color="r", linestyle="--", alpha=0.5)
            ax.set_ylim(0, max(1.0, float(a.max()) if n else 1.0))
            ax.set_ylabel(f"item {b}")
        axes[-1, 0].set_xlabel("frame")
        fig.tight_layout()
        token_num = (probabilities * mask).sum(1)
        return {
            "figure": fig,
            "fires": fires,
            "token_num": token_num.tolist(),
            "expected_count": [math.floor(x + 1e-4) for x in token_num.tolist()],
        }
