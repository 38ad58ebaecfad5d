"""Where the test data and the reference weights come from, and the check of a folder against it.

``manifest.json`` beside this module lists every file the tests and docs read from a ``shared/``-shaped folder (the
``../shared`` beside a checkout: ``datasets/`` with the benchmark and training images, ``anchors/`` with the papers'
official weights and reference outputs), keyed by its path in that folder:

- ``url``: where the file (or, with ``convert``, its source) is published; None for a ``derived`` reference output,
  which was computed from the official weights and has no public copy (``derived`` says how it was made);
- ``sha256`` and ``size`` of the file as the tests read it;
- ``licence``: a key of the manifest's ``licences`` notes;
- ``convert: bmp-to-png`` (T91): the source is a BMP saved losslessly as PNG; a PNG written by another encoder has
  other bytes, so it is accepted when its decoded pixels hash to ``pixels_sha256``; ``source_git_blob`` is the git
  blob id of the BMP, which checks a download before it is converted.

Standard library only; OpenCV and NumPy are imported for the pixel check of converted images.
"""
import hashlib
import json
import os

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'manifest.json')
CHUNK = 1 << 20


def load(path=MANIFEST):
    """The manifest as a dict (``about``, ``licences``, ``files``)."""
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    """SHA-256 (hex) of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id(data):
    """The id git gives ``data`` as a blob (``git hash-object``): what a repository's tree names a file by."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def pixels_sha256(data):
    """SHA-256 of the pixels an encoded image decodes to (shape, dtype and values, as OpenCV reads them unchanged),
    whatever its container: the identity of a losslessly converted image."""
    import cv2
    import numpy as np
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    return sha256_bytes(f'{img.shape}|{img.dtype}|'.encode() + np.ascontiguousarray(img).tobytes())


def problem(root, rel, entry):
    """Why ``root/rel`` does not verify against its manifest ``entry``: ``'missing'``, ``'wrong'`` (its bytes, or
    for a converted image its pixels, are not the manifest's), or None when it verifies."""
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        return 'missing'
    if sha256_file(path) == entry['sha256']:
        return None
    if entry.get('pixels_sha256'):
        with open(path, 'rb') as f:
            if pixels_sha256(f.read()) == entry['pixels_sha256']:
                return None
    return 'wrong'


def select(files, only=()):
    """The manifest entries whose path is, or lies under, one of ``only`` (every entry when ``only`` is empty)."""
    prefixes = [p.strip('/') for p in only]
    return {rel: e for rel, e in files.items()
            if not prefixes or any(rel == p or rel.startswith(p + '/') for p in prefixes)}


# The official weight releases the docs point to, by the manifest's path: what a log line calls each of them.
RELEASE_NAMES = {
    'anchors/idn/IDN_x2.caffemodel': 'official IDN x2 release (Caffe)',
    'anchors/idn/IDN_x3.caffemodel': 'official IDN x3 release (Caffe)',
    'anchors/idn/IDN_x4.caffemodel': 'official IDN x4 release (Caffe)',
    'anchors/imdn/checkpoints/IMDN_AS.pth': 'official IMDN_AS release',
    'anchors/imdn/checkpoints/IMDN_x2.pth': 'official IMDN x2 release',
    'anchors/imdn/checkpoints/IMDN_x3.pth': 'official IMDN x3 release',
    'anchors/imdn/checkpoints/IMDN_x4.pth': 'official IMDN x4 release',
    'anchors/imdn/checkpoints/model_RTC.pth': 'official IMDN_RTC release',
    'anchors/slwsr/slwsr32_x4_repo_1epoch_model_best.pt': 'official s-LWSR32 x4 checkpoint',
}


def release_note(path):
    """``(level, text)`` about ``path`` as an official weight release, or None when it is none: ``('info',
    'official IMDN x4 release')`` when its SHA-256 is a release's; ``('warning', ...)`` when it carries a release's
    file name but not its SHA-256 (a modified or damaged copy)."""
    files = load()['files']
    name = os.path.basename(os.fspath(path))
    named = [rel for rel in RELEASE_NAMES if os.path.basename(rel) == name]
    if not named and os.path.getsize(path) not in {files[rel]['size'] for rel in RELEASE_NAMES}:
        return None  # no release has this name or size: no need to hash the file
    digest = sha256_file(path)
    for rel, label in RELEASE_NAMES.items():
        if files[rel]['sha256'] == digest:
            return 'info', f'{path}: {label} (SHA-256 {digest[:12]}...)'
    if named:
        rel = named[0]
        return 'warning', (f'{path}: has the file name of the {RELEASE_NAMES[rel]} but not its SHA-256 '
                           f'({digest[:12]}... instead of {files[rel]["sha256"][:12]}...): a modified or damaged '
                           f'copy. The release is at {files[rel]["url"]}.')
    return None
