"""vlprompt.data.images: RGB conversion of every common mode, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlprompt.core.errors import DataError
from vlprompt.data.images import IMAGE_EXTENSIONS, list_images, load_image

from data_trees import write_image


def _load(tmp_path, img: Image.Image, name: str) -> Image.Image:
    path = tmp_path / name
    img.save(path)
    out = load_image(str(path))
    assert out.mode == "RGB"
    assert out.size == img.size
    return out


def test_rgb_png_and_jpeg(tmp_path):
    for ext in (".png", ".jpg"):
        p = write_image(tmp_path / f"a{ext}", (200, 10, 10), size=8)
        img = load_image(str(p))
        assert img.mode == "RGB" and img.size == (8, 8)
        assert np.asarray(img)[..., 0].mean() > 150


def test_grayscale(tmp_path):
    out = _load(tmp_path, Image.new("L", (5, 4), 77), "g.png")
    assert out.getpixel((0, 0)) == (77, 77, 77)


def test_cmyk_jpeg(tmp_path):
    out = _load(tmp_path, Image.new("CMYK", (6, 6), (0, 255, 255, 0)), "c.jpg")
    r, g, b = out.getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    src = Image.fromarray(arr)
    assert src.mode.startswith("I;16")
    out = np.asarray(_load(tmp_path, src, "d.png"))
    assert out[0, :, 0].tolist() == [0, 100, 128, 255]


def test_32bit_int_grey(tmp_path):
    src = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    out = np.asarray(_load(tmp_path, src, "i.tif"))
    assert out[0, :, 0].tolist() == [0, 255]


def test_rgba_alpha_composited_on_white(tmp_path):
    src = Image.new("RGBA", (3, 1))
    src.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    src.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    src.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    out = _load(tmp_path, src, "a.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)
    assert all(120 <= v <= 135 for v in out.getpixel((2, 0)))


def test_grey_alpha(tmp_path):
    src = Image.new("LA", (2, 1), (0, 0))
    src.putpixel((1, 0), (0, 255))
    out = _load(tmp_path, src, "la.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 0)


def test_palette_with_transparency(tmp_path):
    src = Image.new("P", (2, 1))
    src.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    src.putpixel((0, 0), 0)
    src.putpixel((1, 0), 1)
    src.info["transparency"] = 0
    path = tmp_path / "p.png"
    src.save(path, transparency=0)
    out = load_image(str(path))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)


def test_palette_without_transparency(tmp_path):
    src = Image.new("P", (2, 2))
    src.putpalette([10, 20, 30] + [0] * 765)
    out = _load(tmp_path, src, "p2.png")
    assert out.getpixel((1, 1)) == (10, 20, 30)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg.*empty.*[Rr]emove or replace"):
        load_image(str(p))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file(tmp_path, ext):
    p = write_image(tmp_path / f"full{ext}", (1, 2, 3), size=64)
    data = p.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"cut\{ext}.*[Rr]emove or replace"):
        load_image(str(cut))


def test_missing_and_not_an_image(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png.*does not exist"):
        load_image(str(tmp_path / "nope.png"))
    bad = tmp_path / "text.jpg"
    bad.write_text("hello, I am not a JPEG")
    with pytest.raises(DataError, match=r"text\.jpg"):
        load_image(str(bad))


def test_decompression_bomb(tmp_path, monkeypatch):
    p = write_image(tmp_path / "big.png", (0, 0, 0), size=16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(DataError, match=r"big\.png.*too large"):
        load_image(str(p))


def test_list_images(tmp_path):
    for name in ("b.JPG", "a.png", ".hidden.png", "notes.txt", "c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    names = [p.rsplit("/", 1)[-1] for p in list_images(str(tmp_path))]
    assert names == ["a.png", "b.JPG", "c.jpeg"]
    deep = list_images(str(tmp_path), recursive=True)
    assert [p.rsplit("/", 1)[-1] for p in deep] == ["a.png", "b.JPG", "c.jpeg", "d.png"]
    assert list_images(str(tmp_path / "missing")) == []
    assert ".jpg" in IMAGE_EXTENSIONS and ".png" in IMAGE_EXTENSIONS
