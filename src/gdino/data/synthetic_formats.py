"""File formats of the synthetic dataset: COCO detection JSON and ODVG detection/grounding JSONL,
each written atomically (temporary file, then rename)."""

from __future__ import annotations

import json
from pathlib import Path

from gdino.core.files import atomic_write_text
from gdino.core.files import write_json as core_write_json


def coco_json(items: list[dict], names: list[str], size: int) -> dict:
    images: list[dict] = []
    anns: list[dict] = []
    for it in items:
        images.append({"id": it["id"], "file_name": it["file_name"], "height": size, "width": size})
        for s in it["shapes"]:
            x0, y0, x1, y1 = s.box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": it["id"],
                    "category_id": s.label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    return {"images": images, "annotations": anns, "categories": cats}


def odvg_detection(items: list[dict], names: list[str], size: int) -> list[dict]:
    return [
        {
            "filename": it["file_name"],
            "height": size,
            "width": size,
            "detection": {
                "instances": [{"bbox": list(s.box), "label": s.label, "category": names[s.label]} for s in it["shapes"]]
            },
        }
        for it in items
    ]


def odvg_grounding(items: list[dict], names: list[str], size: int) -> list[dict]:
    rows = []
    for it in items:
        if not it["shapes"]:
            continue
        regions = [
            {"bbox": list(s.box), "phrase": names[s.label], "tokens_positive": [list(sp) for sp in spans]}
            for s, spans in zip(it["shapes"], it["spans"], strict=True)
        ]
        rows.append(
            {
                "filename": it["file_name"],
                "height": size,
                "width": size,
                "grounding": {"caption": it["caption"], "regions": regions},
            }
        )
    return rows


def write_json(path: Path, data) -> str:
    return str(core_write_json(path, data, indent=None))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    return str(atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows)))
