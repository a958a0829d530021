"""Image files: listing them and loading them as RGB PIL images.

:func:`load_image` mirrors Dassl's ``read_image`` (``Image.open(path).convert("RGB")``, which CoOp
uses for every dataset) but converts the modes that a bare ``convert("RGB")`` gets wrong:

* images with transparency (RGBA, LA, palette or grey with a transparent colour) are composited
  onto a white background instead of having their alpha channel dropped (which turns transparent
  pixels into whatever colour they happen to store, often black);
* 16-bit / 32-bit integer grey images ("I;16", "I") are scaled to 8 bits instead of being clipped
  (which turns almost every pixel white);
* float images ("F") are scaled from [0, 1] when they lie in that range.

Unreadable files (missing, zero bytes, truncated, not an image, decompression bombs, not a regular
file: a FIFO named ``x.png`` would block forever) raise
:class:`~vlprompt.core.errors.DataError` naming the file. Like CoOp, EXIF orientation is not applied.
"""

from __future__ import annotations

import os
import stat

import numpy as np
from PIL import Image

from vlprompt.core.errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)
"""Lower-case file extensions recognised as images (matched case-insensitively)."""

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)


def is_image_file(name: str) -> bool:
    """Whether ``name`` (a file name or path) has an image extension and is not hidden."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _not_regular(path: str) -> bool:
    """True for something that exists but is not a regular file (FIFO, socket, device, folder).

    Opening a FIFO for reading blocks until a writer appears, i.e. forever. Symbolic links are
    followed; a dangling link is not "not regular" (loading it reports the missing file).
    """
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def list_images(folder: str, *, recursive: bool = False) -> list[str]:
    """Return the paths of the non-hidden image files in ``folder``, sorted.

    Paths are ``os.path.join(folder, name)``. With ``recursive=True`` sub-folders are searched too
    (hidden sub-folders are skipped) and the result is sorted by path. A missing folder gives ``[]``.
    Names with an image extension that are not regular files (a FIFO named ``x.png``, a socket, a
    device) are skipped: reading them would block or make no sense.
    """
    if not recursive:
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [
            os.path.join(folder, n)
            for n in sorted(names)
            if is_image_file(n) and os.path.isfile(os.path.join(folder, n))
        ]
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(p for n in filenames if is_image_file(n) and not _not_regular(p := os.path.join(dirpath, n)))
    return sorted(found)


def _unreadable(path: str, reason: str) -> DataError:
    return DataError(
        f"cannot read image '{path}': {reason}. Remove or replace it (or drop it from the split "
        f"file / CSV that lists it)."
    )


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel integer/float image array to uint8."""
    if mode == "F":
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            arr = arr * 255.0
        return np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
    arr = arr.astype(np.int64)
    peak = int(arr.max()) if arr.size else 0
    if mode.startswith("I;16") or peak > 255:
        # 16-bit data (also 16-bit PNGs that older Pillow versions open as mode "I").
        arr = np.clip(arr, 0, 65535) / 257.0
    return np.clip(arr, 0, 255).round().astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded PIL image of any mode to RGB (alpha composited onto white)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img.copy()
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = Image.fromarray(_scale_to_uint8(np.asarray(img), mode), mode="L")
        return grey.convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str) -> Image.Image:
    """Open the image file ``path`` and return it as an RGB PIL image.

    Multi-frame files (GIF, TIFF) give their first frame.

    Raises:
        DataError: the file is missing, empty, truncated, not an image, too large (decompression
            bomb) or in a mode that cannot be converted; the message names the file.
    """
    try:
        if _not_regular(path) and not os.path.isdir(path):  # a FIFO would block forever in open()
            raise _unreadable(path, "it is not a regular file (a FIFO, socket or device)")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise _unreadable(path, "the file is empty (0 bytes)")
        with Image.open(path) as img:
            img.load()
            try:
                return to_rgb(img)
            except ValueError as exc:
                raise _unreadable(
                    path, f"its image mode '{img.mode}' cannot be converted to RGB ({exc})"
                ) from None
    except DataError:
        raise
    except FileNotFoundError:
        raise _unreadable(path, "the file does not exist") from None
    except IsADirectoryError:
        raise _unreadable(path, "it is a directory, not a file") from None
    except PermissionError:
        raise _unreadable(path, "permission denied") from None
    except Image.DecompressionBombError as exc:
        raise _unreadable(path, f"it is too large to decode safely ({exc})") from None
    except Image.UnidentifiedImageError:
        raise _unreadable(path, "it is not an image file PIL can identify") from None
    except MemoryError:
        raise
    except Exception as exc:  # truncated / corrupt files raise OSError, SyntaxError, struct.error...
        detail = str(exc) or type(exc).__name__
        raise _unreadable(path, f"the file is corrupt or truncated ({detail})") from None
