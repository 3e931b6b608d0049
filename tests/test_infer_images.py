"""Image loading (every input kind and mode, EXIF, bad files) and official preprocessing."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from gdino.core.images import find_images, load_image
from gdino.core.preprocess import PreprocessConfig, pad_batch, preprocess, resized_size
from gdino.errors import InputImageError


@pytest.fixture()
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)


def png_header_only(path, width: int, height: int) -> None:
    """A PNG that only *claims* a size (no pixel data): a decompression-bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


class TestInputKinds:
    def test_path_pil_numpy_tensor_agree(self, tmp_path, rgb):
        p = tmp_path / "x.png"
        Image.fromarray(rgb).save(p)
        from_path = np.asarray(load_image(p).image)
        from_str = np.asarray(load_image(str(p)).image)
        from_pil = np.asarray(load_image(Image.fromarray(rgb)).image)
        from_np = np.asarray(load_image(rgb).image)
        from_chw_u8 = np.asarray(load_image(torch.from_numpy(rgb).permute(2, 0, 1)).image)
        from_chw_f = np.asarray(load_image(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255).image)
        from_hwc = np.asarray(load_image(torch.from_numpy(rgb)).image)
        for arr in (from_path, from_str, from_pil, from_chw_u8, from_chw_f, from_hwc):
            np.testing.assert_array_equal(arr, from_np)
        np.testing.assert_array_equal(from_np, rgb)
        assert load_image(p).name == str(p) and load_image(p).path == str(p)

    def test_exif_orientation_is_applied(self, tmp_path, rgb):
        img = Image.fromarray(rgb)  # 40 wide, 30 high
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        p = tmp_path / "rotated.jpg"
        img.save(p, exif=exif.tobytes())
        loaded = load_image(p)
        assert (loaded.width, loaded.height) == (30, 40)
        # PIL input with EXIF too
        assert load_image(Image.open(p)).image.size == (30, 40)

    def test_grayscale_palette_rgba_and_others(self, tmp_path):
        gray = np.array([[0, 128], [255, 7]], dtype=np.uint8)
        out = np.asarray(load_image(Image.fromarray(gray, "L")).image)
        assert out.shape == (2, 2, 3) and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()
        np.testing.assert_array_equal(np.asarray(load_image(gray).image)[..., 1], gray)
        np.testing.assert_array_equal(np.asarray(load_image(gray[..., None]).image)[..., 0], gray)

        rgba = np.zeros((2, 2, 4), dtype=np.uint8)
        rgba[0, 0] = [255, 0, 0, 255]  # opaque red
        rgba[0, 1] = [0, 0, 0, 0]  # transparent: composited on white
        rgba[1, 0] = [0, 0, 0, 128]  # half-transparent black -> mid gray
        out = np.asarray(load_image(Image.fromarray(rgba, "RGBA")).image)
        assert out[0, 0].tolist() == [255, 0, 0]
        assert out[0, 1].tolist() == [255, 255, 255]
        assert 120 <= out[1, 0, 0] <= 135
        np.testing.assert_array_equal(np.asarray(load_image(rgba).image), out)

        pal = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
        pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
        out = np.asarray(load_image(pal).image)
        assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [200, 100, 50]
        p = tmp_path / "pal.png"
        pal.save(p, transparency=0)
        out = np.asarray(load_image(p).image)
        assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [200, 100, 50]

        for mode in ("CMYK", "LA", "1", "YCbCr"):
            img = Image.new(mode, (3, 2))
            assert load_image(img).image.mode == "RGB"

    def test_16_bit_and_float_images_are_scaled_not_clipped(self, tmp_path):
        a16 = np.array([[0, 32768], [65535, 257]], dtype=np.uint16)
        p = tmp_path / "deep.png"
        Image.fromarray(a16).save(p)
        assert Image.open(p).mode.startswith("I")
        out = np.asarray(load_image(p).image)[..., 0]
        assert out.tolist() == [[0, 128], [255, 1]]
        np.testing.assert_array_equal(np.asarray(load_image(a16).image)[..., 0], out)
        f = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
        assert np.asarray(load_image(f).image)[..., 0].tolist() == [[0, 128], [255, 64]]
        fimg = Image.fromarray(f * 1000.0, "F")  # not in [0, 1]: range stretched
        assert np.asarray(load_image(fimg).image)[..., 0].tolist() == [[0, 128], [255, 64]]

    def test_odd_file_names(self, tmp_path, rgb):
        for name in ("with space.jpg", "chat noir é.png", "猫 写真.JPG", "-dash.jpeg"):
            p = tmp_path / name
            Image.fromarray(rgb).save(p, format="PNG" if name.endswith("png") else "JPEG")
            assert load_image(p).image.size == (40, 30)


class TestBadInputs:
    def check(self, source, fragment, **kw):
        with pytest.raises(InputImageError) as err:
            load_image(source, **kw)
        msg = str(err.value)
        assert fragment in msg and "\n" not in msg
        return msg

    def test_missing_empty_corrupt_truncated(self, tmp_path, rgb):
        self.check(tmp_path / "nope.jpg", "file not found")
        self.check(tmp_path, "is a folder")
        empty = tmp_path / "empty.jpg"
        empty.write_bytes(b"")
        self.check(empty, "empty file (0 bytes)")
        junk = tmp_path / "junk.png"
        junk.write_bytes(b"this is not an image at all" * 10)
        self.check(junk, "not an image")
        good = tmp_path / "good.jpg"
        Image.fromarray(np.tile(rgb, (10, 10, 1))).save(good, quality=90)
        cut = tmp_path / "cut.jpg"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        self.check(cut, "truncated")
        png = tmp_path / "good.png"
        Image.fromarray(np.tile(rgb, (10, 10, 1))).save(png)
        cut_png = tmp_path / "cut.png"
        cut_png.write_bytes(png.read_bytes()[:200])
        self.check(cut_png, "truncated")

    def test_decompression_bombs(self, tmp_path, rgb):
        huge = tmp_path / "bomb.png"
        png_header_only(huge, 100_000, 100_000)  # past Pillow's own hard limit
        self.check(huge, "decompression bomb")
        big = tmp_path / "big.png"
        png_header_only(big, 20_000, 20_000)  # under Pillow's limit, over ours
        self.check(big, "exceeds the limit", max_pixels=16_000 * 16_000)
        self.check(rgb, "exceeds the limit", max_pixels=100)
        self.check(Image.fromarray(rgb), "exceeds the limit", max_pixels=100)

    def test_bad_arrays_and_types(self):
        self.check(np.zeros((2, 3, 5), np.uint8), "not an image")
        self.check(np.zeros((0, 3, 3), np.uint8), "no pixels")
        self.check(np.full((2, 2), np.nan, np.float32), "NaN")
        self.check(np.zeros((2, 2), np.int64) - 3, "unsupported array dtype")
        self.check(torch.full((3, 4, 4), 2.0), "must be in [0, 1]")
        self.check(torch.zeros(2, 3, 4, 4), "not an image")
        self.check(12, "unsupported image type")


class TestFindImages:
    def test_recursive_sorted_hidden_and_excluded(self, tmp_path):
        for rel in (
            "b.jpg",
            "a.PNG",
            "sub/c.jpeg",
            "sub/deep/d.webp",
            "notes.txt",
            ".hidden.jpg",
            ".cache/e.jpg",
            "out/f.jpg",
        ):
            p = tmp_path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
        found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path, exclude=tmp_path / "out")]
        assert found == ["a.PNG", "b.jpg", "sub/c.jpeg", "sub/deep/d.webp"]

    def test_missing_folder(self, tmp_path):
        with pytest.raises(InputImageError, match="folder not found"):
            find_images(tmp_path / "nope")
        (tmp_path / "f.jpg").write_bytes(b"x")
        with pytest.raises(InputImageError, match="not a folder"):
            find_images(tmp_path / "f.jpg")


class TestPreprocess:
    @pytest.mark.parametrize(
        "size, expected",
        [
            ((451, 300), (1202, 800)),  # chelsea: shorter side 800
            ((300, 451), (800, 1202)),
            ((4000, 1000), (1332, 333)),  # capped: short = int(round(1333 * 1000 / 4000)), long truncated
            ((1333, 800), (1333, 800)),  # exactly at the cap
            ((800, 800), (800, 800)),
            ((100, 50), (1332, 666)),  # round(666.5) == 666 (banker's rounding, as the official)
            ((640, 480), (1066, 800)),
        ],
    )
    def test_official_target_sizes(self, size, expected):
        assert resized_size(*size) == expected

    def test_other_sizes(self):
        assert PreprocessConfig(size=None).target_size(123, 45) == (123, 45)
        assert PreprocessConfig(size=(320, 480)).target_size(1000, 10) == (480, 320)
        assert PreprocessConfig(size=400, max_size=None).target_size(4000, 1000) == (1600, 400)
        with pytest.raises(Exception, match="image size"):
            PreprocessConfig(size=0)

    def test_matches_torchvision_official_pipeline(self, rgb):
        import torchvision.transforms.functional as F

        img = Image.fromarray(np.tile(rgb, (4, 3, 1)))  # 120 x 120 -> upsampled to 800 x 800
        img = img.crop((0, 0, 120, 97))
        ours = preprocess(img)
        w, h = resized_size(*img.size)
        ref = F.normalize(F.to_tensor(F.resize(img, [h, w])), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        assert ours.shape == ref.shape == (3, 800, 989)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)

    def test_pad_batch(self):
        a, b = torch.ones(3, 4, 5), torch.full((3, 2, 7), 2.0)
        pv, pm = pad_batch([a, b])
        assert pv.shape == (2, 3, 4, 7) and pm.shape == (2, 4, 7)
        assert pm[0, :, :5].all() and not pm[0, :, 5:].any()
        assert pm[1, :2].all() and not pm[1, 2:].any()
        assert (pv[1, :, 2:] == 0).all() and (pv[0, :, :, :5] == 1).all()
