"""Named variants of the synthetic shapes generator, for checking that a recipe generalizes.

``python -m gdino.data.synthetic OUT --variant textured --num-images 2000`` writes one.
"""

from __future__ import annotations

from typing import Any

from gdino.data.synthetic import SyntheticConfig
from gdino.errors import GdinoError

#: Differently parameterized generators (backgrounds, object sizes, class counts, distractors, image
#: sizes) for checking that a training recipe generalizes beyond the data it was tuned on.
VARIANTS: dict[str, dict[str, Any]] = {
    # the default generator: 32 classes (4 colors x plain/striped x 4 shapes), 1-4 shapes of 15-35%
    "shapes": {},
    # 16 color-and-shape classes, textured noisy backgrounds, gray distractor blobs, 1-5 objects of
    # 24-96 px in 256-px images
    "textured": {
        "size": 256,
        "textures": ("plain",),
        "shapes": ("circle", "square", "triangle", "star"),
        "min_objects": 1,
        "max_objects": 5,
        "min_scale": 24 / 256,
        "max_scale": 96 / 256,
        "background": "textured",
        "noise": 12.0,
        "distractors": 3,
    },
    # crowded small objects: 6 colors x 4 other shapes (24 classes), 3-8 shapes of 8-20% in 192-px
    # images, pixel noise, one distractor
    "crowded": {
        "size": 192,
        "colors": ("red", "green", "blue", "yellow", "purple", "orange"),
        "textures": ("plain",),
        "shapes": ("circle", "square", "diamond", "cross"),
        "min_objects": 3,
        "max_objects": 8,
        "min_scale": 0.08,
        "max_scale": 0.2,
        "noise": 6.0,
        "distractors": 1,
    },
}


def variant_config(name: str, **fields: Any) -> SyntheticConfig:
    """The :data:`VARIANTS` entry ``name`` as a config; ``fields`` (num_images, seed, ...) win."""
    if name not in VARIANTS:
        raise GdinoError(f"unknown synthetic variant {name!r}; choose one of: {', '.join(VARIANTS)}")
    return SyntheticConfig(**{**VARIANTS[name], **fields})
