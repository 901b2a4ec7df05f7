import numpy as np
import pytest
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.images import list_images, open_image


@pytest.mark.parametrize(
    "mode,suffix",
    [
        ("RGB", ".jpg"),
        ("L", ".png"),
        ("P", ".png"),
        ("RGBA", ".png"),
        ("I;16", ".png"),
        ("RGB", ".webp"),
        ("RGB", ".tiff"),
        ("LA", ".png"),
        ("CMYK", ".tiff"),
    ],
)
def test_any_mode_and_format_becomes_rgb(tmp_path, mode, suffix):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"x{suffix}"
    im.save(path)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    if mode == "I;16":
        assert np.asarray(out).max() > 200  # scaled from 16 bits, not clipped to white


def test_transparent_pixels_become_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.save(tmp_path / "t.png")
    assert np.asarray(open_image(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_honoured(tmp_path):
    im = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert open_image(tmp_path / "r.jpg").size == (20, 40)


def test_bad_files_get_clear_errors_naming_them(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(VitsamError, match="notes.png: not an image file"):
        open_image(tmp_path / "notes.png")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(VitsamError, match="cut.jpg: corrupt or truncated"):
        open_image(tmp_path / "cut.jpg")
    with pytest.raises(VitsamError, match="no such file"):
        open_image(tmp_path / "missing.jpg")
    with pytest.raises(VitsamError, match="is a folder"):
        open_image(tmp_path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    Image.new("1", (20_000, 20_000)).save(tmp_path / "bomb.png")  # 400 Mpx, a few kB on disk
    with pytest.raises(VitsamError, match="bomb.png: .*(decompression bomb|too large)"):
        open_image(tmp_path / "bomb.png")


def test_list_images_expands_folders_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "1.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images([tmp_path])] == ["1.jpg", "2.png"]
    with pytest.raises(VitsamError, match="no such file or folder"):
        list_images([tmp_path / "nope"])
