"""Reference Paraformer ASR (non-autoregressive, CIF predictor) under its contract tables.

Follows FunASR's ``funasr/models/paraformer`` (encoder -> CIF predictor -> decoder over the
fired acoustic embeddings; label-smoothed CE + L1 quantity loss; glancing sampler), small enough
to train on toy data on a CPU in minutes. Every component carries the contract from seed 004's
tables; where the tables and Paraformer disagree, the code says why.

Example:
    >>> from models.paraformer import ParaformerConfig, Paraformer, ToySeq2SeqDataset
    >>> cfg = ParaformerConfig()
    >>> model, data = Paraformer(cfg), ToySeq2SeqDataset(cfg, num_samples=8)

Train: ``python -m models.paraformer.train --help``.
"""

from ._config import (
    BatchError as BatchError,
)
from ._config import (
    CheckpointError as CheckpointError,
)
from ._config import (
    ConfigError as ConfigError,
)
from ._config import (
    DecodingError as DecodingError,
)
from ._config import (
    ParaformerConfig as ParaformerConfig,
)
from ._config import (
    ParaformerError as ParaformerError,
)
from ._config import (
    PredictorCollapseError as PredictorCollapseError,
)
from ._config import (
    VocabError as VocabError,
)
from ._data import ToySeq2SeqDataset as ToySeq2SeqDataset
from ._data import collate_fn as collate_fn
from ._decode import (
    DecodingWarning as DecodingWarning,
)
from ._decode import (
    beam_search as beam_search,
)
from ._decode import (
    greedy_decode as greedy_decode,
)
from ._layers import (
    FeedForward as FeedForward,
)
from ._layers import (
    MultiHeadAttention as MultiHeadAttention,
)
from ._layers import (
    PositionalEncoding as PositionalEncoding,
)
from ._layers import (
    TransformerBlock as TransformerBlock,
)
from ._losses import (
    MaskedCrossEntropy as MaskedCrossEntropy,
)
from ._losses import (
    PredictorLoss as PredictorLoss,
)
from ._losses import (
    SequenceAccuracy as SequenceAccuracy,
)
from ._losses import (
    TokenAccuracy as TokenAccuracy,
)
from ._masks import (
    apply_mask as apply_mask,
)
from ._masks import (
    assert_shape as assert_shape,
)
from ._masks import (
    create_causal_mask as create_causal_mask,
)
from ._masks import (
    create_padding_mask as create_padding_mask,
)
from ._model import Decoder as Decoder
from ._model import Encoder as Encoder
from ._model import Paraformer as Paraformer
from ._predictor import Predictor as Predictor
from ._predictor import check_alphas as check_alphas
from ._predictor import cif as cif
from ._tokenizer import Tokenizer as Tokenizer
from ._train import (
    check_vocab as check_vocab,
)
from ._train import (
    evaluate as evaluate,
)
from ._train import (
    fit as fit,
)
from ._train import (
    load_checkpoint as load_checkpoint,
)
from ._train import (
    predict as predict,
)
from ._train import (
    save_checkpoint as save_checkpoint,
)
from ._train import (
    train_step as train_step,
)
from ._train import (
    unpack_batch as unpack_batch,
)
from ._train import (
    val_step as val_step,
)

__all__ = [
    "BatchError",
    "CheckpointError",
    "ConfigError",
    "Decoder",
    "DecodingError",
    "DecodingWarning",
    "Encoder",
    "FeedForward",
    "MaskedCrossEntropy",
    "MultiHeadAttention",
    "Paraformer",
    "ParaformerConfig",
    "ParaformerError",
    "PositionalEncoding",
    "Predictor",
    "PredictorCollapseError",
    "PredictorLoss",
    "SequenceAccuracy",
    "TokenAccuracy",
    "Tokenizer",
    "ToySeq2SeqDataset",
    "TransformerBlock",
    "VocabError",
    "apply_mask",
    "assert_shape",
    "beam_search",
    "check_alphas",
    "check_vocab",
    "cif",
    "collate_fn",
    "create_causal_mask",
    "create_padding_mask",
    "evaluate",
    "fit",
    "greedy_decode",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
    "train_step",
    "unpack_batch",
    "val_step",
]
