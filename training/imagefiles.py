"""A folder of class folders of images (PNG, JPEG) as numpy arrays: decoded, upright, in one color mode and size.

Every problem with a file raises DataFileError naming the file or folder and what was expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datafiles import DataFileError, _list

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
COLORS = {"grayscale": "L", "rgb": "RGB"}


def _decode(file: Path, mode: str):
    """One image file -> a decoded PIL image in `mode` (L: grayscale, RGB), upright by its EXIF rotation."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as img:
            img = ImageOps.exif_transpose(img)  # photos carry their rotation in EXIF
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            img = img.convert(mode)
            img.load()
            return img
    except Exception as exc:  # any decoder failure means this file cannot be used; name it
        raise DataFileError(
            f"{file}: cannot be read as an image ({type(exc).__name__}: {exc}); expected a PNG or JPEG image"
        ) from None


@dataclass
class ImageFolder:
    """The images of a class folder tree: pixels, classes, and the sizes the files had before any resize."""

    X: np.ndarray  # float32 [N, C, H, W], pixel values 0-255
    y: np.ndarray  # int64 [N], indices into classes
    classes: list[str]
    color: str  # grayscale or rgb
    sizes: dict[tuple[int, int], str]  # (width, height) found -> the first file of that size, relative to the folder
    size: int  # the side of the square images in X
    resized: bool  # True when data.image_size resized any image


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _class_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names, sorted, and (image file, class index) of every image in the class sub-folders."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataFileError(
            f"{root}: expected at least 2 class sub-folders, found {len(classes)}"
            + (f" ({_list(classes)})" if classes else "")
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        images = sorted(
            f.name
            for f in (root / name).iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise DataFileError(
                f"{root / name}: class folder {name!r} has no images; "
                f"expected at least one {'/'.join(IMAGE_EXTENSIONS)} file"
            )
        files.extend((root / name / f, label) for f in images)
    return classes, files


def _common_size(root: Path, sizes: dict[tuple[int, int], str]) -> int:
    """The one square size every image has; DataFileError when they differ or are not square."""
    if len(sizes) > 1:
        found = ", ".join(f"{_size_text(s)} ({example})" for s, example in sorted(sizes.items())[:10])
        more = f" and {len(sizes) - 10} more sizes" if len(sizes) > 10 else ""
        raise DataFileError(
            f"{root}: images have different sizes (width x height): {found}{more}; "
            "choose one with --set data.image_size=N to resize every image to NxN"
        )
    (width, height), example = next(iter(sizes.items()))
    if width != height:
        raise DataFileError(
            f"{root}: images are {width}x{height} (width x height, e.g. {example}), and the image "
            "architectures take square images; choose a size with --set data.image_size=N to resize every "
            "image to NxN"
        )
    return width


def read_image_folder(path: str | os.PathLike, image_size: int | None = None,
                      color: str = "grayscale") -> ImageFolder:
    """A folder with one sub-folder per class of PNG/JPEG images, decoded to `color` and kept at their own size
    when `image_size` is None (they must then share one square size), else resized to image_size x image_size."""
    root = Path(path)
    if color not in COLORS:
        raise DataFileError(f"{root}: color {color!r} is not supported; expected one of {sorted(COLORS)}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataFileError(f"{root}: image_size must be a positive integer, got {image_size!r}")
    if not root.exists():
        raise DataFileError(f"{root}: folder not found (expected a folder with one sub-folder of images per class)")
    if not root.is_dir():
        raise DataFileError(f"{root}: is not a folder (expected a folder with one sub-folder of images per class)")

    classes, files = _class_files(root)
    mode = COLORS[color]
    decoded = [_decode(file, mode) for file, _ in files]  # every file is checked before any size rule
    sizes: dict[tuple[int, int], str] = {}
    for (file, _), img in zip(files, decoded):
        sizes.setdefault(img.size, file.relative_to(root).as_posix())
    if image_size is None:
        image_size = _common_size(root, sizes)
    from PIL import Image

    channels = 1 if mode == "L" else 3
    X = np.empty((len(files), channels, image_size, image_size), dtype=np.float32)
    y = np.empty(len(files), dtype=np.int64)
    resized = False
    for i, ((_, label), img) in enumerate(zip(files, decoded)):
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            resized = True
        pixels = np.asarray(img, dtype=np.float32)
        X[i] = pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)
        y[i] = label
    return ImageFolder(X, y, classes, color, sizes, image_size, resized)


def load_image_folder(
    path: str | os.PathLike, image_size: int | None = None, color: str = "grayscale"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A folder with one sub-folder per class of PNG/JPEG images -> (X float32 [N, C, H, W] in 0-255, y int64 [N],
    class names sorted). The images keep their own size unless `image_size` is given (see read_image_folder)."""
    folder = read_image_folder(path, image_size, color)
    return folder.X, folder.y, folder.classes
