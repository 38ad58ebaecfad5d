"""Image folder scanning, header-only size reading, image reading and the small per-image steps shared by the
preparation commands.

Every user-facing failure is a :class:`DataPrepError` whose message is one line naming the file and the cause.

The commands import this module before they parse their arguments, so its top level stays pure Python: OpenCV,
NumPy and BasicSR (which brings torch) are imported inside the functions that handle pixels. ``--help`` and the
up-front size checks thus never load them.
"""
import os
import struct
import sys

IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.pgm', '.webp')
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_EXIF_ORIENTATION = 0x0112
# JPEG start-of-frame markers (the ones carrying the image size): C0-CF except DHT (C4), JPG (C8) and DAC (CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


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


# --------------------------------------------------------------------------------------------- sizes from headers
def _tiff_orientation(data):
    """EXIF orientation (1-8) stored in a TIFF-structured EXIF block, or 1 when absent or unreadable."""
    if len(data) < 8 or data[:2] not in (b'II', b'MM'):
        return 1
    end = '<' if data[:2] == b'II' else '>'
    ifd = struct.unpack(end + 'I', data[4:8])[0]
    if ifd + 2 > len(data):
        return 1
    count = struct.unpack(end + 'H', data[ifd:ifd + 2])[0]
    for i in range(count):
        entry = data[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(end + 'HH', entry[:4])
        if tag == _EXIF_ORIENTATION and kind == 3:  # SHORT, stored in the first two bytes of the value field
            return struct.unpack(end + 'H', entry[8:10])[0]
    return 1


def _png_size(f):
    head = f.read(16)  # after the signature: IHDR's length, type, width, height
    if len(head) < 16 or head[4:8] != b'IHDR':
        return None
    width, height = struct.unpack('>II', head[8:16])
    orientation = 1
    f.seek(8 + 25)  # past the signature and IHDR (length, type, 13 bytes, CRC)
    # OpenCV applies an eXIf orientation; the spec puts eXIf before the first IDAT, so the walk stops there
    while True:
        chunk = f.read(8)
        if len(chunk) < 8 or chunk[4:8] in (b'IDAT', b'IEND'):
            break
        length = struct.unpack('>I', chunk[:4])[0]
        if chunk[4:8] == b'eXIf':
            orientation = _tiff_orientation(f.read(length))
            break
        f.seek(length + 4, os.SEEK_CUR)
    return width, height, orientation


def _jpeg_size(f):
    f.seek(2)
    orientation = 1
    while True:
        marker = f.read(2)
        while len(marker) == 2 and marker[1] == 0xFF:  # fill bytes before a marker
            marker = marker[1:] + f.read(1)
        if len(marker) < 2 or marker[0] != 0xFF or marker[1] in (0xD9, 0xDA):  # end of image / start of scan
            return None
        if marker[1] == 0x01 or 0xD0 <= marker[1] <= 0xD7:  # markers without a length field
            continue
        raw = f.read(2)
        if len(raw) < 2:
            return None
        length = struct.unpack('>H', raw)[0]
        if marker[1] in _JPEG_SOF:
            sof = f.read(5)
            if len(sof) < 5:
                return None
            height, width = struct.unpack('>HH', sof[1:5])
            return width, height, orientation
        if marker[1] == 0xE1 and orientation == 1:  # APP1: Exif comes before the frame header
            payload = f.read(length - 2)
            if payload[:6] == b'Exif\x00\x00':
                orientation = _tiff_orientation(payload[6:])
        else:
            f.seek(length - 2, os.SEEK_CUR)


def _pil_size(path):
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: without it other formats are decoded
        return None
    try:
        with Image.open(path) as img:
            return img.size[0], img.size[1], img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001  (any Pillow failure: let OpenCV decide and report)
        return None


def image_size(path):
    """(width, height) of an image file as ``read_image`` returns it, from the file header: PNG and JPEG headers
    are parsed here (a few hundred bytes), other formats through Pillow when installed (it reads headers only);
    only when both fail is the image decoded, which also reports a corrupt file as ``read_image`` does.

    EXIF orientations 5-8 swap the sides, as OpenCV applies them when decoding.
    """
    found = None
    try:
        with open(path, 'rb') as f:
            signature = f.read(8)
            if signature == _PNG_SIGNATURE:
                found = _png_size(f)
            elif signature[:2] == b'\xff\xd8':
                found = _jpeg_size(f)
    except (OSError, struct.error):
        found = None
    if found is None and not path.lower().endswith(('.png', '.jpg', '.jpeg')):
        found = _pil_size(path)
    if found is None or min(found[:2]) <= 0:
        img = read_image(path)
        return img.shape[1], img.shape[0]
    width, height, orientation = found
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def scan_sizes(paths, desc='size check'):
    """{path: (width, height)} of every image, from headers (see :func:`image_size`); a progress bar appears when
    the scan takes more than a second (tens of thousands of files, a cold network disk)."""
    from tqdm import tqdm
    bar = tqdm(paths, desc=desc, unit='img', delay=1, leave=False, dynamic_ncols=True, file=sys.stderr)
    return {path: image_size(path) for path in bar}


# ---------------------------------------------------------------------------------------------------- pixel steps
def read_image(path):
    """Read an image as HWC BGR uint8 (grey images become 3 equal channels, alpha is dropped)."""
    import cv2
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
    from basicsr.utils.color_util import bgr2ycbcr
    return bgr2ycbcr(img, y_only=True)


def mod_crop(img, mod):
    """Crop bottom/right so both sides are multiples of ``mod``."""
    h, w = img.shape[:2]
    return img[:h - h % mod, :w - w % mod, ...]


def encode_png(img, compress_level):
    """PNG bytes and (h, w, c) shape, the record format of BasicSR's ``lmdb_util``."""
    import cv2
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise DataPrepError(f'cannot PNG-encode an image of shape {img.shape}')
    shape = (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])
    return buf.tobytes(), shape


def crop_positions(size, crop, step, thresh_size=0):
    """Top-left offsets of a sliding window along one side, BasicSR ``extract_subimages`` convention: every
    ``step`` from 0, plus one window flush with the far border when more than ``thresh_size`` pixels remain. A side
    shorter than the window gets the one offset 0 (the window is cut short there)."""
    if size < crop:
        return [0]
    pos = list(range(0, size - crop + 1, step))
    if size - (pos[-1] + crop) > thresh_size:
        pos.append(size - crop)
    return pos


def as_uint8(img_float_255):
    """Round and clip a float image in [0, 255] to uint8."""
    import numpy as np
    return np.clip(np.round(img_float_255), 0, 255).astype(np.uint8)
