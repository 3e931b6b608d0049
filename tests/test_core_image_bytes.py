"""``load_image(bytes)`` (what Ray Data reads) gives the same image, or the same error, as the path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gdino.core.images import load_image
from gdino.errors import InputImageError


def test_bytes_decode_like_the_file(tmp_path, chelsea_jpg):
    cat = Image.open(chelsea_jpg).convert("RGB").resize((60, 40))
    files = {"a.jpg": cat, "b.png": cat.convert("RGBA"), "c.png": cat.convert("L"), "d.webp": cat}
    for name, img in files.items():
        img.save(tmp_path / name)
        from_path = load_image(tmp_path / name, name=name)
        from_bytes = load_image((tmp_path / name).read_bytes(), name=name)
        assert from_bytes.name == name and from_bytes.path is None
        np.testing.assert_array_equal(np.asarray(from_bytes.image), np.asarray(from_path.image))


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\nnot a png", b"\xff\xd8 not a jpeg", b"hello"])
def test_bad_bytes_fail_like_the_file(tmp_path, data):
    (tmp_path / "x.jpg").write_bytes(data)
    with pytest.raises(InputImageError) as by_path:
        load_image(tmp_path / "x.jpg", name="x.jpg")
    with pytest.raises(InputImageError) as by_bytes:
        load_image(data, name="x.jpg")
    assert str(by_bytes.value) == str(by_path.value)


def test_pixel_limit_applies_to_bytes(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(InputImageError, match="exceeds the limit"):
        load_image((tmp_path / "big.png").read_bytes(), name="big.png", max_pixels=5000)
