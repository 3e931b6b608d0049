"""Loading the BERT tokenizer that Grounding DINO was trained with (bert-base-uncased).

Only the vocabulary is needed: the text encoder's weights come from the detector checkpoint. The
tokenizer must be a *fast* (Rust-backed) one, because positive maps are built from character
offsets (``char_to_token``).

Nothing here downloads: :func:`default_tokenizer_dir` only looks in the local Hugging Face cache.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from transformers import AutoTokenizer

# transformers 5 exports BertTokenizerFast only lazily (an alias of BertTokenizer), not in its typed __init__
from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # isort: skip

from gdino.errors import CheckpointError, first_line

logger = logging.getLogger(__name__)

#: Token strings whose ids delimit sub-sentences (official order: [CLS], [SEP], ".", "?").
SPECIAL_TOKENS = ("[CLS]", "[SEP]", ".", "?")
#: Their ids in the bert-base-uncased vocabulary.
BERT_SPECIAL_IDS = (101, 102, 1012, 1029)
#: Hub names under which bert-base-uncased may sit in the local cache.
BERT_REPO_IDS = ("bert-base-uncased", "google-bert/bert-base-uncased")

_CONFIG_FILES = ("tokenizer.json", "tokenizer_config.json")


def default_tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> str | None:
    """The folder of a cached ``bert-base-uncased`` vocabulary, or None when it is not cached.

    Looks only in the local Hugging Face cache (``cache_dir`` or the default one); never touches
    the network.
    """
    for repo_id in BERT_REPO_IDS:
        try:
            found = try_to_load_from_cache(
                repo_id, "vocab.txt", cache_dir=None if cache_dir is None else os.fspath(cache_dir)
            )
        except (OSError, ValueError) as e:  # unreadable or odd cache layout: treat as absent
            logger.debug("Hugging Face cache lookup for %s failed: %s", repo_id, e)
            continue
        if isinstance(found, str) and os.path.isfile(found):
            return os.path.dirname(found)
    return None


def load_tokenizer(path: str | os.PathLike):
    """A fast, lower-casing BERT tokenizer from a folder or a ``vocab.txt`` file.

    ``path`` may be a folder with Hugging Face tokenizer files (``tokenizer.json`` /
    ``tokenizer_config.json``, e.g. a Hugging Face Grounding DINO folder), a folder holding a
    ``vocab.txt``, or the path of a vocabulary file itself. A folder with only a ``vocab.txt`` (or
    a bare vocabulary file) is read as uncased, like bert-base-uncased.

    Raises:
        CheckpointError: nothing usable at ``path`` (one line, naming the path).
    """
    p = Path(path).expanduser()
    if p.is_file():
        tok = _from_vocab_file(p)
    elif p.is_dir():
        tok = _from_folder(p)
    else:
        raise CheckpointError(f"tokenizer not found: {p} is neither a folder nor a vocab.txt file")
    _check_vocab(tok, p)
    # We truncate to max_text_len ourselves, after mask generation; the tokenizer's own limit
    # (512 for BERT folders) would only log a misleading "sequence too long" warning.
    tok.model_max_length = int(1e30)
    return tok


def special_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids of [CLS], [SEP], "." and "?" in ``tokenizer`` (101, 102, 1012, 1029 for BERT)."""
    return tuple(int(i) for i in tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))


def _from_folder(folder: Path):
    vocab = folder / "vocab.txt"
    if any((folder / name).is_file() for name in _CONFIG_FILES):
        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except Exception as e:  # noqa: BLE001 - transformers/tokenizers raise many types here
            if not vocab.is_file():
                raise CheckpointError(f"cannot load a tokenizer from {folder}: {first_line(e)}") from e
            logger.warning("tokenizer files in %s did not load (%s); using its vocab.txt", folder, e)
    if vocab.is_file():
        return _from_vocab_file(vocab)
    raise CheckpointError(f"no tokenizer in {folder}: expected tokenizer.json, tokenizer_config.json or vocab.txt")


def _from_vocab_file(vocab: Path):
    # transformers 5 takes `vocab=` (and silently ignores `vocab_file=`, giving garbage ids);
    # transformers 4 takes `vocab_file=`.
    params = inspect.signature(BertTokenizerFast.__init__).parameters
    key = "vocab" if "vocab" in params else "vocab_file"
    try:
        return BertTokenizerFast(**{key: str(vocab)}, do_lower_case=True)
    except Exception as e:  # noqa: BLE001 - the Rust backend raises plain Exception
        raise CheckpointError(f"cannot read vocabulary {vocab}: {first_line(e)}") from e


def _check_vocab(tok, path: Path) -> None:
    if not getattr(tok, "is_fast", False):
        raise CheckpointError(f"tokenizer at {path} is not a fast (tokenizers-backed) tokenizer; offsets are needed")
    vocab = tok.get_vocab()
    missing = [t for t in (*SPECIAL_TOKENS, "[PAD]") if t not in vocab]
    if missing:
        raise CheckpointError(f"vocabulary at {path} lacks {', '.join(missing)}: not a BERT vocab")
    ids = special_token_ids(tok)
    if ids != BERT_SPECIAL_IDS:
        logger.warning(
            "tokenizer at %s gives ids %s for %s, not bert-base-uncased's %s; "
            "official checkpoints expect bert-base-uncased",
            path,
            ids,
            SPECIAL_TOKENS,
            BERT_SPECIAL_IDS,
        )
