"""Video sources and bad input: streaming decode, frame ranges, folders, truncated/unsupported/empty videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av", reason="PyAV (in [video])")

from gdino.errors import GdinoError  # noqa: E402
from gdino.track.source import FrameRange, InputVideoError, VideoSource  # noqa: E402
from gdino.track.synthetic import VideoSpec, generate_frames  # noqa: E402
from gdino.track.writers import write_mp4  # noqa: E402

SPEC = VideoSpec(frames=30, width=96, height=80, objects=2, min_side=20, max_side=26, seed=1)


@pytest.fixture(scope="module")
def images():
    return [im for im, _ in generate_frames(SPEC)]


@pytest.fixture(scope="module")
def mkv(images, tmp_path_factory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("src") / "v.mkv", images, SPEC.fps, container="matroska")


def test_video_decodes_every_frame_in_order(mkv, images):
    src = VideoSource(mkv)
    assert (src.info.width, src.info.height, src.info.frames, src.info.codec) == (96, 80, 30, "h264")
    frames = list(src)
    assert [f.index for f in frames] == list(range(30)) and src.warning is None
    # H.264 at crf 18 is lossy: the decoded frames are close to what was encoded
    err = [np.abs(f.image.astype(int) - im.astype(int)).mean() for f, im in zip(frames, images)]
    assert max(err) < 6.0
    np.testing.assert_allclose([f.time for f in frames[:3]], [0, 1 / 15, 2 / 15], atol=1e-3)  # Matroska: ms ticks


def test_frame_range_and_skip(mkv):
    src = VideoSource(mkv, FrameRange(start=3, end=20, stride=4))
    assert [f.index for f in src] == [3, 7, 11, 15, 19]
    src.skip_to(12)
    assert [f.index for f in src] == [15, 19]
    with pytest.raises(GdinoError, match="bad frame range"):
        FrameRange(start=5, end=5)
    with pytest.raises(GdinoError, match="bad frame range"):
        FrameRange(stride=0)


def test_folder_of_frames_in_natural_order(tmp_path, images):
    for i in (0, 1, 2, 9, 10, 11):
        Image.fromarray(images[i]).save(tmp_path / f"frame{i}.png")
    frames = list(VideoSource(tmp_path))
    assert [f.index for f in frames] == list(range(6))
    assert np.array_equal(frames[3].image, images[9]) and np.array_equal(frames[4].image, images[10])


def test_truncated_video_stops_at_the_last_readable_frame(mkv, tmp_path):
    data = mkv.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 6 // 10])
    src = VideoSource(cut)
    frames = list(src)
    assert 3 <= len(frames) < 30 and [f.index for f in frames] == list(range(len(frames)))
    assert src.warning is not None and "\n" not in src.warning and f"after {len(frames)} of 30" in src.warning


@pytest.mark.parametrize("case", ["missing", "not-a-video", "unsupported-codec", "empty-folder", "header-only"])
def test_unreadable_sources_are_one_line_errors(case, mkv, tmp_path):
    path = tmp_path / "x.mkv"
    if case == "not-a-video":
        path.write_text("hello, not a video")
    elif case == "unsupported-codec":  # rename the codec in the Matroska header: no decoder for it
        data = mkv.read_bytes()
        assert data.count(b"V_MPEG4/ISO/AVC") == 1
        path.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_XXXXX/ISO/XYZ"))
    elif case == "empty-folder":
        path = tmp_path / "frames"
        path.mkdir()
    elif case == "header-only":  # the header survives, not one frame does
        path.write_bytes(mkv.read_bytes()[:200])
    expected = {
        "missing": "video not found",
        "not-a-video": "cannot open as a video",
        "unsupported-codec": "unsupported video codec",
        "empty-folder": "a folder with no frames",
        "header-only": "cannot open as a video|no frame size|no video stream",
    }[case]
    with pytest.raises(InputVideoError, match=expected) as e:
        VideoSource(path)
    assert "\n" not in str(e.value)
