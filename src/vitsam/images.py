"""Reading image files safely for both halves: any mode, EXIF orientation, bombs."""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vitsam.errors import VitsamError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# The largest image decoded (width x height, pixels) unless VITSAM_MAX_PIXELS says more:
# 2026's phones take 50-200 megapixel photos (200 MP: 16320x12240); 250 MP of RGB is 750 MB
# decoded, and a decompression bomb (a few kB claiming gigapixels) is refused before that.
MAX_PIXELS = 250_000_000
MAX_PIXELS_ENV = "VITSAM_MAX_PIXELS"


ORIENTATION = ExifTags.Base.Orientation  # the EXIF tag (0x0112)


def upright(image: Image.Image) -> Image.Image | None:
    """The image as it is displayed when its EXIF orientation (2-8) says to turn or mirror
    it, else None (no tag, 1, or a value outside the standard's 1-8)."""
    if image.getexif().get(ORIENTATION, 1) not in range(2, 9):
        return None
    return ImageOps.exif_transpose(image)


ImageLike = str | Path | Image.Image | np.ndarray


def as_image(image: ImageLike) -> tuple[Image.Image, str]:
    """A path, PIL image or HWC uint8 array -> (RGB PIL image, a name for reports).

    One rule on every interface: the image as it is displayed. Files are read with
    open_image (EXIF orientation applied); a PIL image still carrying an EXIF orientation
    tag (as Image.open returns a phone photo) is turned upright the same way, and one
    already upright is unchanged; arrays have no EXIF and are taken as they are.
    """
    if isinstance(image, (str, Path)):
        return open_image(image), str(image)
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "<image>"
        return to_rgb(upright(image) or image), name
    if isinstance(image, np.ndarray):
        if (
            image.dtype != np.uint8
            or image.ndim not in (2, 3)
            or (image.ndim == 3 and image.shape[2] not in (1, 3, 4))
        ):
            raise VitsamError(
                f"array image must be HxW or HxWxC (C = 1, 3, 4) uint8, got {image.dtype} {image.shape}"
            )
        return to_rgb(
            Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image)
        ), "<array>"
    raise VitsamError(
        f"cannot read an image from a {type(image).__name__}: give a path, PIL image or array"
    )


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (16-bit, palette, RGBA, grayscale, CMYK) -> 8-bit RGB.

    Transparent pixels are composited onto white, as viewers show them.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if arr.size and arr.max() > 255 else 1.0  # 16-bit -> 8-bit
        image = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Open an image file fully decoded, EXIF-rotated and converted to `mode` ('RGB' or 'L').

    Raises VitsamError naming the file when it is missing, unreadable, not an image,
    truncated or a decompression bomb.
    """
    path = Path(path)
    if not path.exists():
        raise VitsamError(f"{path}: no such file")
    if path.is_dir():
        raise VitsamError(f"{path}: is a folder, not an image file")
    try:
        data = path.read_bytes()
    except OSError as e:  # no permission, an I/O error
        raise VitsamError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_image(data, str(path), mode)


def max_pixels() -> int:
    """The pixel limit (width x height) for decoding: VITSAM_MAX_PIXELS, else MAX_PIXELS.

    Raises VitsamError when VITSAM_MAX_PIXELS is set to anything but a positive integer.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise VitsamError(f"{MAX_PIXELS_ENV}={text!r}: give a number of pixels, e.g. 400000000")
    return int(text)


@contextmanager
def pixel_limit(pixels: int | None) -> Iterator[None]:
    """Within the block, max_pixels() is `pixels` (None: unchanged), for this process and
    the processes it starts (Ray's local workers, a server); the old value comes back after."""
    if pixels is None:
        yield
        return
    if pixels < 1:
        raise VitsamError(f"--max-pixels must be a positive number of pixels, got {pixels}")
    before = os.environ.get(MAX_PIXELS_ENV)
    os.environ[MAX_PIXELS_ENV] = str(pixels)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MAX_PIXELS_ENV, None)
        else:
            os.environ[MAX_PIXELS_ENV] = before


def decode_image(
    data: bytes, name: str = "image", mode: str = "RGB", limit: int | None = None
) -> Image.Image:
    """Decode image bytes as `open_image` does; errors name the image as `name`.

    An image over `limit` pixels (default max_pixels()) is refused from its header, before
    any pixel is decoded. Pillow's own bomb limit (89 MP by default) is raised to ours so
    that one limit applies: the project's.
    """
    limit = limit or max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > limit:
                    raise _too_large(name, f"{im.width}x{im.height}", im.width * im.height, limit)
                im.load()
                im = upright(im) or im
    except VitsamError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))  # Pillow's own check, in open()
        raise _too_large(name, "it", int(pixels[1]) if pixels else limit + 1, limit) from None
    except UnidentifiedImageError:
        raise VitsamError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise VitsamError(f"{name}: corrupt or truncated image ({e})") from None
    rgb = to_rgb(im)
    return rgb if mode == "RGB" else rgb.convert(mode)


def _too_large(name: str, size: str, pixels: int, limit: int) -> VitsamError:
    if limit >= 10**7:
        amount, cap = f"{pixels / 1e6:.0f} megapixels", f"{limit / 1e6:.0f}-megapixel"
    else:  # a small limit someone set: in pixels, not rounded to 0 megapixels
        amount, cap = f"{pixels:,} pixels", f"{limit:,}-pixel"
    return VitsamError(
        f"{name}: {size} is {amount}, over the {cap} limit: downscale it, or raise the "
        f"limit with --max-pixels N or {MAX_PIXELS_ENV}=N"
    )


def example_images() -> list[Path]:
    """The example pictures shipped inside the package (vitsam/examples/*.png, for the
    page and the README's first command), found through importlib.resources so that an
    installed wheel has them too."""
    folder = resources.files("vitsam") / "examples"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".png"))


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f)))
        elif p.exists():
            out.append(p)
        else:
            raise VitsamError(f"{p}: no such file or folder")
    return out
