"""Encoder, decoder and the full Paraformer (non-autoregressive ASR with a CIF predictor).

Data flow (FunASR ``funasr/models/paraformer``):

    features [B, T, F] --Encoder--> enc [B, T, D] --Predictor--> alphas [B, T]
    (enc, alphas) --CIF--> acoustic embeddings [B, N, D] --Decoder(+ enc)--> logits [B, N, V]

In training the alphas are rescaled to the target length N; a glancing sampler replaces a share
of the acoustic embeddings by gold token embeddings for a second decoder pass. The loss is the
label-smoothed cross-entropy plus the L1 quantity loss ``|N - sum(alpha)|``.
"""

from __future__ import annotations

from typing import Annotated

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

import contracts
from contracts import Mask, Probability, Range, contract

from ._config import DecodingError, ParaformerConfig, ParaformerError
from ._layers import PositionalEncoding, TransformerBlock
from ._losses import MaskedCrossEntropy, PredictorLoss
from ._masks import create_causal_mask
from ._predictor import Predictor

__all__ = ["Decoder", "Encoder", "Paraformer"]

_TINY = ParaformerConfig.tiny


@contracts.example(lambda: Encoder(_TINY()))
class Encoder(nn.Module):
    """Input projection + sinusoidal positions + SAN-M style blocks (attention + FSMN)."""

    def __init__(self, cfg: ParaformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.n_feats, cfg.d_model)
        self.pos = PositionalEncoding(cfg.d_model, cfg.max_len, cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.fsmn_kernel)
            for _ in range(cfg.n_enc_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)

    @contract(dims={"F": "self.cfg.n_feats", "D": "self.cfg.d_model"}, sizes={"T": (1, 32)})
    def forward(
        self,
        features: Annotated[Float[Tensor, "B T F"], Range(-2, 2)],
        mask: Annotated[Bool[Tensor, "B T"], Mask()],
    ) -> Float[Tensor, "B T D"]:
        """``mask`` is True at valid frames; outputs at valid frames ignore the padding."""
        B, T, _ = features.shape
        x = self.pos(self.in_proj(features))  # (B, T, D)
        attn_mask = mask[:, None, :].expand(B, T, T)  # (B, T, T): keys must be valid
        for i in range(len(self.blocks)):
            x = self.encode_layer(x, attn_mask, i)
        return self.ln_f(x)

    @contract(
        dims={"D": "self.cfg.d_model"},
        sizes={"T": (1, 16)},
        strategies={"index": lambda st: st.just(0)},
    )
    def encode_layer(
        self,
        x: Float[Tensor, "B T D"],
        mask: Annotated[Bool[Tensor, "B T T"], Mask()],
        index: Annotated[int, Range(0, None)] = 0,
    ) -> Float[Tensor, "B T D"]:
        """Run block ``index``; the FSMN memory sees the frames any query may attend to."""
        try:
            block = self.blocks[index]
        except IndexError:
            n = len(self.blocks)
            raise ParaformerError(
                f"Encoder.encode_layer(): argument 'index' = {index} is out of range: the encoder "
                f"has {n} block(s) (ParaformerConfig.n_enc_layers={self.cfg.n_enc_layers}); "
                f"expected 0 <= index < {n}"
            ) from None
        return block(x, mask, mask.any(dim=1))


@contracts.example(lambda: Decoder(_TINY()))
class Decoder(nn.Module):
    """Non-autoregressive decoder over the CIF acoustic embeddings.

    Seed 004's table feeds ``predictor_out`` and target ids to the decoder; in Paraformer the
    decoder consumes the acoustic embeddings the CIF fired (target ids enter only through the
    training sampler), so ``forward`` takes ``acoustic_embeds [B, T_dec, D]``.
    """

    def __init__(self, cfg: ParaformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)  # gold embeddings (sampler)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.fsmn_kernel, cross=True
            )
            for _ in range(cfg.n_dec_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.vocab_size)

    @contract(
        dims={"D": "self.cfg.d_model", "V": "self.vocab_size"},
        sizes={"T_enc": (1, 16), "T_dec": (1, 8)},
    )
    def forward(
        self,
        encoder_out: Float[Tensor, "B T_enc D"],
        acoustic_embeds: Float[Tensor, "B T_dec D"],
        enc_mask: Annotated[Bool[Tensor, "B T_enc"], Mask()],
        dec_mask: Annotated[Bool[Tensor, "B T_dec"], Mask()],
    ) -> Float[Tensor, "B T_dec V"]:
        B, N, _ = acoustic_embeds.shape
        self_mask = dec_mask[:, None, :].expand(B, N, N)  # (B, N, N)
        if self.cfg.decoder_causal:  # autoregressive variant (the seed's causal attention)
            self_mask = self_mask & create_causal_mask(N).to(dec_mask.device)[None]
        cross_mask = enc_mask[:, None, :].expand(B, N, enc_mask.shape[1])  # (B, N, T_enc)
        x = acoustic_embeds
        for block in self.blocks:
            x = block(x, self_mask, dec_mask, encoder_out, cross_mask)
        return self.out(self.ln_f(x))

    @contract(
        dims={"D": "self.cfg.d_model", "V": "self.vocab_size"},
        sizes={"T_enc": (1, 16), "T_dec": (2, 8), "T_prev": (1, 2)},
        strategies={"step": lambda st: st.just(1)},
    )
    def decode_step(
        self,
        encoder_out: Float[Tensor, "B T_enc D"],
        acoustic_embeds: Float[Tensor, "B T_dec D"],
        enc_mask: Annotated[Bool[Tensor, "B T_enc"], Mask()],
        dec_mask: Annotated[Bool[Tensor, "B T_dec"], Mask()],
        prev_tokens: Annotated[Int[Tensor, "B T_prev"], Range(0, "V-1")],
        step: Annotated[int, Range(0, "T_dec-1")],
    ) -> Float[Tensor, "B 1 V"]:
        """Logits at position ``step`` after substituting the embeddings of ``prev_tokens`` for
        the first ``T_prev`` acoustic embeddings -- the sampler's mechanism, used to refine a
        position given already decided tokens (the seed's single decoding step)."""
        n_prev = prev_tokens.shape[1]
        if n_prev > acoustic_embeds.shape[1]:
            raise DecodingError(
                f"Decoder.decode_step: {n_prev} prev_tokens for only "
                f"{acoustic_embeds.shape[1]} positions (T_dec)"
            )
        x = torch.cat([self.embed(prev_tokens), acoustic_embeds[:, n_prev:]], dim=1)  # (B,N,D)
        return self.forward(encoder_out, x, enc_mask, dec_mask)[:, step : step + 1]


@contracts.example(lambda: Paraformer(_TINY()))
class Paraformer(nn.Module):
    """Encoder -> CIF predictor -> decoder.

    ``forward`` returns a dict with ``loss`` (nanoGPT returns ``(logits, loss)``; a dict keeps
    the two loss terms apart for logging).

    Example:
        >>> cfg = ParaformerConfig.tiny()
        >>> model = Paraformer(cfg).eval()
        >>> feats = torch.zeros(2, 12, cfg.n_feats); fm = torch.ones(2, 12, dtype=torch.bool)
        >>> toks = torch.tensor([[3, 4, 2], [5, 2, 0]]); tm = toks != 0
        >>> out = model(feats, toks, fm, tm)
        >>> out["logits"].shape, out["loss"].ndim
        (torch.Size([2, 3, 7]), 0)
    """

    def __init__(self, cfg: ParaformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.encoder = Encoder(cfg)
        self.predictor = Predictor(cfg)
        self.decoder = Decoder(cfg)
        self.criterion_ce = MaskedCrossEntropy(cfg.label_smoothing)
        self.criterion_pre = PredictorLoss()

    @contract(
        dims={"F": "self.cfg.n_feats", "V": "self.vocab_size"},
        sizes={"T_feat": (1, 16), "T_token": (1, 6)},
        returns={
            "loss": Annotated[Float[Tensor, ""], Range(0, None)],
            "loss_ce": Annotated[Float[Tensor, ""], Range(0, None)],
            "loss_predictor": Annotated[Float[Tensor, ""], Range(0, None)],
            "logits": Float[Tensor, "B T_token V"],
            "alphas": Annotated[Float[Tensor, "B T_feat"], Probability()],
            "token_num": Annotated[Float[Tensor, " B"], Range(0, None)],
        },
    )
    def forward(
        self,
        features: Annotated[Float[Tensor, "B T_feat F"], Range(-2, 2)],
        tokens: Annotated[Int[Tensor, "B T_token"], Range(0, "V-1")],
        feat_mask: Annotated[Bool[Tensor, "B T_feat"], Mask()],
        token_mask: Annotated[Bool[Tensor, "B T_token"], Mask()],
    ) -> dict[str, Tensor]:
        """Training forward: logits for the target positions and the loss terms."""
        enc = self.encoder(features, feat_mask)  # (B, T, D)
        alphas = self.predictor(enc, feat_mask)  # (B, T)
        target_lengths = token_mask.sum(dim=1)  # (B,)
        acoustic, _, token_num = self.predictor.integrate(enc, alphas, feat_mask, target_lengths)
        acoustic = acoustic[:, : tokens.shape[1]]  # (B, N, D); N = max target length
        if acoustic.shape[1] < tokens.shape[1]:  # token_mask shorter than tokens' padding
            acoustic = nn.functional.pad(acoustic, (0, 0, 0, tokens.shape[1] - acoustic.shape[1]))
        contracts.check(acoustic, Float[Tensor, "B T_token D"], name="acoustic")
        if self.training and self.cfg.sampling_ratio > 0:
            acoustic = self._sample(enc, acoustic, feat_mask, tokens, token_mask)
        logits = self.decoder(enc, acoustic, feat_mask, token_mask)  # (B, N, V)
        loss_ce = self.criterion_ce(logits, tokens, token_mask)
        loss_pre = self.criterion_pre(alphas, feat_mask, target_lengths)
        return {
            "loss": loss_ce + self.cfg.predictor_weight * loss_pre,
            "loss_ce": loss_ce,
            "loss_predictor": loss_pre,
            "logits": logits,
            "alphas": alphas,
            "token_num": token_num,
        }

    def _sample(
        self, enc: Tensor, acoustic: Tensor, feat_mask: Tensor, tokens: Tensor, token_mask: Tensor
    ) -> Tensor:
        """Glancing sampler: a first decoder pass without gradients counts the errors; a
        random ``sampling_ratio`` share of that many valid positions get the gold token's
        embedding instead of the acoustic one."""
        with torch.no_grad():
            pred = self.decoder(enc, acoustic, feat_mask, token_mask).argmax(-1)  # (B, N)
            n_err = ((pred != tokens) & token_mask).sum(dim=1)  # (B,)
            n_sub = (n_err.float() * self.cfg.sampling_ratio).long()  # (B,)
            score = torch.rand(tokens.shape, device=tokens.device).masked_fill(~token_mask, 2.0)
            rank = score.argsort(dim=1).argsort(dim=1)  # (B, N) rank of each position
            sub = (rank < n_sub[:, None]) & token_mask  # (B, N)
        gold = self.decoder.embed(tokens)  # (B, N, D)
        return torch.where(sub[..., None], gold, acoustic)

    @contract(dims={"F": "self.cfg.n_feats", "D": "self.cfg.d_model"}, sizes={"T_feat": (1, 16)})
    def encode(
        self,
        features: Annotated[Float[Tensor, "B T_feat F"], Range(-2, 2)],
        mask: Annotated[Bool[Tensor, "B T_feat"], Mask()],
    ) -> tuple[Float[Tensor, "B T_feat D"], Annotated[Float[Tensor, "B T_feat"], Probability()]]:
        """Encoder output and the predictor's alphas (seed: ``predictor [B, T, 1]``)."""
        enc = self.encoder(features, mask)
        return enc, self.predictor(enc, mask)

    @contract(
        dims={"D": "self.cfg.d_model"},
        sizes={"T_feat": (1, 16)},
        strategies={"max_len": lambda st: st.integers(1, 8)},
    )
    def decode_logits(
        self,
        encoder_out: Float[Tensor, "B T_feat D"],
        alphas: Annotated[Float[Tensor, "B T_feat"], Probability()],
        enc_mask: Annotated[Bool[Tensor, "B T_feat"], Mask()],
        max_len: Annotated[int, Range(1, None)] = 200,
    ) -> tuple[Float[Tensor, "B N V"], Annotated[Int[Tensor, " B"], Range(0, None)]]:
        """Inference pass: CIF with the 0.45 tail, then the decoder. Returns the logits of the
        first ``min(count, max_len)`` positions and the predictor's token ``counts``
        (before truncation to ``max_len``)."""
        acoustic, counts, _ = self.predictor.integrate(encoder_out, alphas, enc_mask)
        acoustic = acoustic[:, :max_len]  # (B, N, D)
        n = acoustic.shape[1]
        dec_mask = torch.arange(n, device=counts.device)[None, :] < counts.clamp(min=1)[:, None]
        return self.decoder(encoder_out, acoustic, enc_mask, dec_mask), counts

    @contract(
        dims={"D": "self.cfg.d_model", "V": "self.vocab_size"},
        sizes={"T_feat": (1, 16)},
        strategies={"max_len": lambda st: st.integers(1, 8)},
    )
    def decode_greedy(
        self,
        encoder_out: Float[Tensor, "B T_feat D"],
        alphas: Annotated[Float[Tensor, "B T_feat"], Probability()],
        enc_mask: Annotated[Bool[Tensor, "B T_feat"], Mask()],
        max_len: Annotated[int, Range(1, None)] = 200,
    ) -> Annotated[Int[Tensor, "B T_out"], Range(0, "V-1")]:
        """Argmax per fired position; positions past the predicted count or after the first
        EOS are PAD. See :func:`models.paraformer.greedy_decode` for the checks."""
        logits, counts = self.decode_logits(encoder_out, alphas, enc_mask, max_len)
        return _finish(logits.argmax(dim=-1), counts)


def _finish(tokens: Tensor, counts: Tensor) -> Tensor:
    """PAD (0) past each row's predicted count and after its first EOS (2)."""
    N = tokens.shape[-1]
    pos = torch.arange(N, device=tokens.device)
    tokens = tokens.masked_fill(
        pos >= counts.reshape(*counts.shape, *([1] * (tokens.dim() - 1))), 0
    )
    after_eos = (torch.cumsum((tokens == 2).long(), dim=-1) - (tokens == 2).long()) > 0
    return tokens.masked_fill(after_eos, 0)
