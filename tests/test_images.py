import numpy as np
import pytest
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.images import MAX_PIXELS_ENV, list_images, max_pixels, open_image, pixel_limit


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
    with pytest.raises(VitsamError, match="bomb.png: .*400 megapixels, over the 250-megapixel"):
        open_image(tmp_path / "bomb.png")


def test_a_108_megapixel_phone_photo_opens_and_the_limit_is_one_flag(tmp_path, monkeypatch):
    """Pillow's own limit (89 MP) would refuse it as a bomb: only the project's applies."""
    photo = tmp_path / "phone.jpg"
    Image.new("L", (12_000, 9_000), 128).save(photo, quality=50)  # 108 MP, small on disk
    assert photo.stat().st_size < 4_000_000
    assert open_image(photo, "L").size == (12_000, 9_000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "100_000_000")
    with pytest.raises(VitsamError, match=r"phone.jpg: 12000x9000 is 108 megapixels, over the "
                       r"100-megapixel limit: .*--max-pixels N or VITSAM_MAX_PIXELS=N"):  # fmt: skip
        open_image(photo, "L")
    with pixel_limit(110_000_000):  # what --max-pixels does: the env for this process and its children
        assert max_pixels() == 110_000_000 and open_image(photo, "L").size == (12_000, 9_000)
    assert max_pixels() == 100_000_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(VitsamError, match="VITSAM_MAX_PIXELS='lots': give a number of pixels"):
        max_pixels()


def test_the_cli_says_how_to_raise_the_limit(tmp_path, capsys, models):
    from vitsam.cli import main

    Image.new("1", (20_000, 20_000)).save(tmp_path / "big.png")
    args = ["segment", str(tmp_path / "big.png"), "--box", "0,0,10,10", "--out", str(tmp_path),
            "--segmenter", models["sam2"], "--device", "cpu"]  # fmt: skip
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "over the 250-megapixel limit" in err and "--max-pixels" in err
    assert main([*args, "--max-pixels", "0"]) == 2
    assert "--max-pixels must be a positive" in capsys.readouterr().err


def test_list_images_expands_folders_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "1.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images([tmp_path])] == ["1.jpg", "2.png"]
    with pytest.raises(VitsamError, match="no such file or folder"):
        list_images([tmp_path / "nope"])


def test_a_small_limit_is_said_in_pixels(tmp_path):
    Image.new("RGB", (160, 120)).save(tmp_path / "small.png")
    with pixel_limit(100), pytest.raises(VitsamError, match="19,200 pixels, over the 100-pixel limit"):
        open_image(tmp_path / "small.png")
