"""BERT text encoder built from a config (no download), run with sub-sentence masks.

Wraps transformers' ``BertModel``. The official code passes a 3-D ``[B,L,L]`` mask; transformers 5
needs it as ``[B,1,L,L]``, transformers 4 as ``[B,L,L]``. Both get the same masking.
"""

from __future__ import annotations

import transformers
from torch import Tensor
from transformers import BertConfig, BertModel

from gdino.config import TextEncoderConfig

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def bert_config(cfg: TextEncoderConfig) -> BertConfig:
    """transformers ``BertConfig`` for a :class:`TextEncoderConfig` (dropouts 0: inference shape)."""
    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        pad_token_id=cfg.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def build_bert(cfg: TextEncoderConfig) -> BertModel:
    """A randomly initialized ``BertModel`` of the given shape (weights come from checkpoints)."""
    return BertModel(bert_config(cfg), add_pooling_layer=cfg.with_pooler)


def run_bert(
    bert: BertModel, input_ids: Tensor, token_type_ids: Tensor, position_ids: Tensor, self_attention_masks: Tensor
) -> Tensor:
    """Last hidden state ``[B,L,hidden]`` with the sub-sentence mask ``[B,L,L]`` (True = attend)."""
    mask = self_attention_masks if _TRANSFORMERS_MAJOR < 5 else self_attention_masks[:, None]
    out = bert(
        input_ids=input_ids,
        attention_mask=mask,
        token_type_ids=token_type_ids,
        position_ids=position_ids,
        return_dict=True,
    )
    return out.last_hidden_state


__all__ = ["bert_config", "build_bert", "run_bert"]
