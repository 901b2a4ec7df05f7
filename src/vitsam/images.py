"""Reading image files safely for both halves: any mode, EXIF orientation, bombs."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitsam.errors import VitsamError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Larger than any real photo we expect (about 180 megapixels), small enough to refuse bombs.
MAX_PIXELS = 180_000_000


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


def decode_image(data: bytes, name: str = "image", mode: str = "RGB") -> Image.Image:
    """Decode image bytes as `open_image` does; errors name the image as `name`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise VitsamError(
                        f"{name}: {im.width}x{im.height} is too large to decode safely "
                        f"(over {MAX_PIXELS // 1_000_000} megapixels): downscale it first"
                    )
                im.load()
                im = ImageOps.exif_transpose(im)
    except VitsamError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise VitsamError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise VitsamError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise VitsamError(f"{name}: corrupt or truncated image ({e})") from None
    rgb = to_rgb(im)
    return rgb if mode == "RGB" else rgb.convert(mode)


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
