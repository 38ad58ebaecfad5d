"""The cache file of :class:`~lwsr_plugin.data.in_memory_paired_image_dataset.InMemoryPairedImageDataset`: its format,
its writer, the per-cache build lock, the hold that keeps a file in use, and the removal of caches nothing uses.

File ``<gt>__<lq>.<source>.<fingerprint>.lwsrcache``. Layout: a 4096-byte prefix (magic, header offset/length), the
image bytes (uint8 HWC BGR, one image after the other), an int64 index ``(n, 2, 4)`` of ``(offset, h, w, c)`` for
GT/LQ, then a JSON header. Written through :func:`lwsr_plugin.fileio.atomic_target` (a temporary name, renamed when
complete), under a per-cache ``flock`` so that the ranks of one host decode once.

:mod:`lwsr_plugin.fileio` and BasicSR are imported inside the functions: importing either registers the plugin, which
imports the dataset module that imports this one, and would find this module half-initialised.
"""
import errno
import glob
import hashlib
import json
import os
import struct
from contextlib import contextmanager

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no build lock (the rename alone keeps caches whole) and no stale-cache removal
    fcntl = None

CACHE_VERSION = 1
MAGIC = b'LWSRIMC1'
PREFIX_SIZE = 4096
SUFFIX = '.lwsrcache'
# what a cached image is: the array BasicSR's imfrombytes(content) gives before its float conversion
DECODE_MODE = 'cv2.imdecode IMREAD_COLOR uint8 BGR'
GT, LQ = 0, 1


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def build_lock(path):
    """Exclusive ``flock`` on ``path`` while the cache is built: the other ranks of the host wait, then reuse the
    cache instead of decoding it again. Where locks are unsupported each process builds and the atomic rename
    keeps the result intact."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            from basicsr.utils import get_root_logger
            get_root_logger().info(f'InMemoryPairedImageDataset: waiting for another process building {path[:-5]}')
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        yield
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_cache_header(path):
    """The JSON header of a complete cache file, or None when ``path`` is missing, foreign or truncated."""
    try:
        with open(path, 'rb') as f:
            prefix = f.read(24)
            if len(prefix) < 24 or prefix[:8] != MAGIC:
                return None
            header_offset, header_len = struct.unpack('<QQ', prefix[8:24])
            f.seek(header_offset)
            raw = f.read(header_len)
            size = os.fstat(f.fileno()).st_size
        header = json.loads(raw.decode('utf-8'))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if size != header_offset + header_len or header.get('version') != CACHE_VERSION:
        return None
    return header


def read_cache_index(path, header):
    """The ``(n, 2, 4)`` int64 index ``(offset, h, w, c)`` of GT (``[:, 0]``) and LQ (``[:, 1]``)."""
    index = np.fromfile(path, dtype='<i8', count=header['count'] * 8, offset=header['index_offset'])
    return index.reshape(header['count'], 2, 4).astype(np.int64)


def write_cache(path, count, pairs, info):
    """Write the cache file ``path`` of ``count`` pairs: ``pairs`` yields each pair's ``(gt, lq)`` uint8 HWC arrays in
    order, ``info`` (a dict) joins the JSON header. Readers see the previous file, none, or the complete new one,
    never a partial one. Returns the number of image bytes."""
    from lwsr_plugin.fileio import atomic_target
    index = np.zeros((count, 2, 4), dtype='<i8')
    with atomic_target(path) as tmp, open(tmp, 'wb') as f:
        f.write(b'\0' * PREFIX_SIZE)
        offset = 0
        for i, pair in enumerate(pairs):
            for which, img in zip((GT, LQ), pair):
                index[i, which] = (offset, *img.shape)
                f.write(img.data)
                offset += img.nbytes
        index_offset = PREFIX_SIZE + offset
        f.write(index.tobytes())
        header = json.dumps({'version': CACHE_VERSION, 'count': count, 'decode': DECODE_MODE,
                             'data_offset': PREFIX_SIZE, 'data_nbytes': offset, 'index_offset': index_offset,
                             **info}).encode('utf-8')
        f.write(header)
        f.seek(0)
        f.write(MAGIC + struct.pack('<QQ', index_offset + index.nbytes, len(header)))
    return offset


def hold(path):
    """An open handle with a shared ``flock`` on the cache for as long as the dataset lives: another process that
    rebuilds the cache for changed data then leaves this one in place, since DataLoader workers (re)started later,
    e.g. every epoch, map it again by its path."""
    f = open(path, 'rb')
    if fcntl is None:
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        pass  # no locks on this file system: stale caches may then go while in use, as without the hold
    return f


def remove_unused(path, stem):
    """Delete what the other caches of ``stem`` in the folder of the cache ``path`` left (their data changed since):
    caches no process holds (see :func:`hold`) and their idle lock files; and the temporary files of killed builds of
    any cache there on this host."""
    if fcntl is None:
        return
    from lwsr_plugin.fileio import remove_path, remove_stale_temps
    remove_stale_temps(path, siblings=SUFFIX)
    pattern = os.path.join(glob.escape(os.path.dirname(path)), glob.escape(stem) + '.*')
    for old in glob.glob(pattern + SUFFIX) + glob.glob(pattern + SUFFIX + '.lock'):
        if old.startswith(path):
            continue
        try:
            with open(old, 'rb') as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                remove_path(old)
        except OSError:
            pass  # in use (a running job maps it, or a build holds the lock), or already gone
