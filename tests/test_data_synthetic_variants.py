"""Generator variants: each one's parameters show up in what it draws; the default stays as it was."""

from __future__ import annotations

import numpy as np
import pytest

from gdino.data.synthetic import SyntheticConfig, class_names, main, render_image
from gdino.data.synthetic_variants import VARIANTS, variant_config
from gdino.errors import GdinoError


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_images_follow_their_parameters(name):
    cfg = variant_config(name)
    counts = []
    for i in range(12):
        image, shapes = render_image(cfg, np.random.default_rng([5, i]))
        assert image.shape == (cfg.size, cfg.size, 3) and image.dtype == np.uint8
        counts.append(len(shapes))
        for s in shapes:
            x0, y0, x1, y1 = s.box
            assert 0 <= x0 < x1 <= cfg.size and 0 <= y0 < y1 <= cfg.size
            side = max(x1 - x0, y1 - y0)
            assert side <= round(cfg.max_scale * cfg.size) + 1
            assert 0 <= s.label < len(class_names(cfg))
    assert max(counts) <= cfg.max_objects and min(counts) >= 1


def test_the_variants_differ_where_they_say():
    shapes, textured, crowded = (variant_config(n) for n in ("shapes", "textured", "crowded"))
    assert shapes == SyntheticConfig()  # the default generator, unchanged
    assert (len(class_names(shapes)), len(class_names(textured)), len(class_names(crowded))) == (32, 16, 24)
    assert (shapes.size, textured.size, crowded.size) == (256, 256, 192)
    assert textured.background == "textured" and textured.distractors == 3 and textured.noise > 0
    assert crowded.min_objects == 3 and crowded.max_scale < shapes.min_scale + 0.1
    # a textured background is colored; the default one is gray
    tex, _ = render_image(textured, np.random.default_rng(0))
    gray, _ = render_image(SyntheticConfig(max_objects=1, min_scale=0.1, max_scale=0.1), np.random.default_rng(0))
    assert np.abs(tex[..., 0].astype(int) - tex[..., 2]).mean() > 10
    assert np.median(np.abs(gray[..., 0].astype(int) - gray[..., 2])) == 0


def test_distractors_are_drawn_but_not_annotated():
    """With distractors, some gray pixels change that no annotated box covers."""
    base = SyntheticConfig(size=96, max_objects=1, min_scale=0.2, max_scale=0.2, background="textured")
    with_blobs = SyntheticConfig(**{**base.__dict__, "distractors": 3})
    changed = 0
    for i in range(6):
        a, shapes_a = render_image(base, np.random.default_rng([1, i]))
        b, shapes_b = render_image(with_blobs, np.random.default_rng([1, i]))
        outside = np.ones(a.shape[:2], dtype=bool)
        for s in shapes_b:
            x0, y0, x1, y1 = s.box
            outside[y0:y1, x0:x1] = False
        gray = (b[..., 0] == b[..., 1]) & (b[..., 1] == b[..., 2])
        changed += int((gray & outside & (a != b).any(-1)).sum())
    assert changed > 0


def test_unknown_variant_and_bad_options_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(GdinoError, match="unknown synthetic variant 'nope'"):
        variant_config("nope")
    with pytest.raises(GdinoError, match="background"):
        SyntheticConfig(background="stripes")
    assert main([str(tmp_path / "d"), "--variant", "crowded", "--num-images", "2", "--format", "coco"]) == 0
    assert "24 classes" in capsys.readouterr().out
