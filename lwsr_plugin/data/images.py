"""Image folder scanning, reading and the small per-image steps shared by the preparation commands.

Every user-facing failure is a :class:`DataPrepError` whose message is one line naming the file and the cause.
"""
import os

import cv2
import numpy as np
from basicsr.utils.color_util import bgr2ycbcr

IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.pgm', '.webp')


class DataPrepError(Exception):
    """A bad input or output condition, reported to the user as one line (no traceback)."""


def list_images(folder):
    """Sorted image paths directly in ``folder``.

    Raises DataPrepError for a missing or empty folder and for any non-image file in it (a stray file is more
    likely a wrong folder than something to skip silently). Hidden files (``.DS_Store`` ...) are ignored.
    """
    if not os.path.isdir(folder):
        raise DataPrepError(f'{folder}: not a folder')
    names = sorted(n for n in os.listdir(folder) if not n.startswith('.'))
    paths = []
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            continue
        if not name.lower().endswith(IMG_EXTS):
            raise DataPrepError(f'{path}: not an image file (expected one of {", ".join(IMG_EXTS)})')
        paths.append(path)
    if not paths:
        raise DataPrepError(f'{folder}: no images in the folder')
    return paths


def stem(path):
    """File name without folder and extension."""
    return os.path.splitext(os.path.basename(path))[0]


def check_keys(paths):
    """Map key (file stem) -> path; refuses stems that BasicSR's LMDB reader cannot use as keys.

    Duplicates across folders would overwrite each other in the LMDB, and BasicSR's ``paired_paths_from_lmdb``
    cuts ``meta_info.txt`` names at the first dot, so a stem containing a dot would be read under another key.
    """
    keys = {}
    for path in paths:
        key = stem(path)
        if key in keys:
            raise DataPrepError(f'{path}: duplicate base name "{key}" (also {keys[key]}); LMDB keys would collide')
        if '.' in key or ' ' in key or not key.isascii():
            raise DataPrepError(f'{path}: base name "{key}" has a dot, space or non-ASCII character, which BasicSR '
                                'LMDB keys cannot hold')
        keys[key] = path
    return keys


def read_image(path):
    """Read an image as HWC BGR uint8 (grey images become 3 equal channels, alpha is dropped)."""
    try:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error as err:  # some corrupt files make the decoder raise instead of returning None
        raise DataPrepError(f'{path}: cannot decode image ({err})') from None
    if img is None:
        reason = 'empty file' if os.path.getsize(path) == 0 else 'unreadable or corrupt image'
        raise DataPrepError(f'{path}: {reason}')
    return img


def to_y(img):
    """Y channel of a BGR uint8 image (ITU-R BT.601, MATLAB ``rgb2ycbcr``), as HW uint8."""
    return bgr2ycbcr(img, y_only=True)


def mod_crop(img, mod):
    """Crop bottom/right so both sides are multiples of ``mod``."""
    h, w = img.shape[:2]
    return img[:h - h % mod, :w - w % mod, ...]


def encode_png(img, compress_level):
    """PNG bytes and (h, w, c) shape, the record format of BasicSR's ``lmdb_util``."""
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise DataPrepError(f'cannot PNG-encode an image of shape {img.shape}')
    shape = (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])
    return buf.tobytes(), shape


def crop_positions(size, crop, step, thresh_size=0):
    """Top-left offsets of a sliding window along one side, BasicSR ``extract_subimages`` convention: every
    ``step`` from 0, plus one window flush with the far border when more than ``thresh_size`` pixels remain."""
    pos = list(range(0, size - crop + 1, step))
    if size - (pos[-1] + crop) > thresh_size:
        pos.append(size - crop)
    return pos


def as_uint8(img_float_255):
    """Round and clip a float image in [0, 255] to uint8."""
    return np.clip(np.round(img_float_255), 0, 255).astype(np.uint8)
