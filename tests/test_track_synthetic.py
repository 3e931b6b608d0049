"""The generated tracking video's ground truth, checked against the rendered pixels."""

from __future__ import annotations

import numpy as np

from gdino.data.synthetic import COLORS
from gdino.track.synthetic import VideoSpec, class_names, generate_frames, mot_lines


def test_ground_truth_boxes_are_the_visible_pixels_of_each_object():
    spec = VideoSpec(frames=60, width=128, height=96, objects=4, seed=5)
    names = class_names(spec)
    assert len(set(names)) == 4 and len({n.split()[0] for n in names}) == 4  # one color per object
    seen_ids, partial = set(), 0
    for image, truth in generate_frames(spec):
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        for g in truth:
            color = np.array(COLORS[g.label.split()[0]], dtype=np.uint8)
            ys, xs = np.nonzero(np.all(image == color, axis=-1))
            # every pixel of the object's color is inside its box, and the box is tight around them
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == g.box
            assert 0.3 <= g.visibility <= 1.0
            partial += g.visibility < 1.0
            seen_ids.add(g.track_id)
        visible = {g.label.split()[0] for g in truth}
        for name, rgb in COLORS.items():  # objects left out of the truth are (nearly) invisible
            if name not in visible and name in {n.split()[0] for n in names}:
                assert np.all(image == np.array(rgb, dtype=np.uint8), axis=-1).sum() < 0.3 * spec.max_side**2
    assert seen_ids == {1, 2, 3, 4} and partial > 0  # all objects appear; some are partly hidden


def test_mot_ground_truth_lines():
    spec = VideoSpec(frames=3, width=64, height=64, objects=1, min_side=10, max_side=12, seed=0)
    (_, truth), *_ = generate_frames(spec)
    (line,) = mot_lines(truth, {truth[0].label: 1})
    x0, y0, x1, y1 = truth[0].box
    assert line == f"1,1,{x0},{y0},{x1 - x0},{y1 - y0},1,1,{truth[0].visibility}"
