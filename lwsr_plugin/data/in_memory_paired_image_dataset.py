"""``InMemoryPairedImageDataset``: BasicSR's ``PairedImageDataset`` with every image decoded once.

``PairedImageDataset`` decodes two PNGs for every patch, which costs far more than a small SR network's step. This
dataset decodes every GT and LQ image once into a cache file (uint8 BGR, as ``imfrombytes`` decodes it), memory-maps
that file read-only, and per patch only crops, converts the patch to float and augments it. All DataLoader workers
and all ranks on one host share the mapped pages (the page cache), so the decoded set is held in RAM once per host.

Same options, keys, pairing rules and outputs as ``PairedImageDataset``; with the same ``random`` state it returns
bit-identical tensors (it makes the same ``random`` calls in the same order). Extra options:

* ``cache_dir``: folder of the cache file (default: the folder that holds ``dataroot_gt``);
* ``max_memory``: refuse, before decoding, a decoded set larger than this (bytes or ``'8GB'``, ``'500MiB'``, ...);
* ``decode_threads``: threads that decode while the cache is built (default: up to 8);
* ``on_device`` (train phase only, default false): ``__getitem__`` returns only ``{'index': index}`` and the model
  (``LWSRModel`` and the plugin models derived from it) cuts the batch itself from a copy of the whole set on its
  device, see :mod:`lwsr_plugin.data.device_batches`; ``seed`` then seeds those draws.

Cache file ``<gt>__<lq>.<source>.<fingerprint>.lwsrcache`` (the fingerprint covers paths, sizes, mtimes,
``meta_info`` contents and the decode mode, so a changed dataset gets a new file; older caches of the same source are
removed once no process holds them); its format and writer are in :mod:`lwsr_plugin.data.in_memory_cache`.
"""
import errno
import hashlib
import json
import math
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.utils import data as data
from torchvision.transforms.functional import normalize

from basicsr.data.data_util import paired_paths_from_folder, paired_paths_from_lmdb, paired_paths_from_meta_info_file
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import bgr2ycbcr, get_root_logger, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from lwsr_plugin.data.in_memory_cache import (CACHE_VERSION, DECODE_MODE, GT, LQ, SUFFIX, build_lock, hold,
                                              read_cache_header, read_cache_index, remove_unused, sha256_file,
                                              write_cache)
from lwsr_plugin.fileio import remove_path

_SIZE_UNITS = {'': 1, 'b': 1,
               'kb': 10**3, 'mb': 10**6, 'gb': 10**9, 'tb': 10**12,
               'k': 2**10, 'm': 2**20, 'g': 2**30, 't': 2**40,
               'kib': 2**10, 'mib': 2**20, 'gib': 2**30, 'tib': 2**40}


class InMemoryDatasetError(ValueError):
    """Bad options or data for ``InMemoryPairedImageDataset``; the one-line message names the option or file, what
    is wrong and the fix."""


def parse_size(value, option='max_memory'):
    """Bytes from an int/float or a string such as ``'8GB'`` (10^9), ``'8GiB'``/``'8G'`` (2^30), ``'500MB'``."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, (int, float)) and value >= 0:
        return int(value)
    match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*', str(value))
    if match and match.group(2).lower() in _SIZE_UNITS:
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise InMemoryDatasetError(f'{option}: {value!r} is not a size; write bytes (e.g. 8000000000) or a number with a '
                               'unit: 8GB, 500MB (powers of 1000), 8GiB or 8G (powers of 1024).')


def format_size(nbytes):
    """``'1.23 GB'``-style text (powers of 1000, as ``parse_size`` reads ``GB``)."""
    for unit, factor in (('TB', 10**12), ('GB', 10**9), ('MB', 10**6), ('kB', 10**3)):
        if nbytes >= factor:
            return f'{nbytes / factor:.2f} {unit}'
    return f'{nbytes} B'


def _suggest_size(nbytes):
    """A ``max_memory`` value just above ``nbytes``, in the unit ``format_size`` would print."""
    for unit, factor in (('TB', 10**12), ('GB', 10**9), ('MB', 10**6), ('KB', 10**3)):
        if nbytes >= factor:
            return f'{math.floor(nbytes / factor * 10 + 1) / 10:g}{unit}'
    return str(nbytes)


@DATASET_REGISTRY.register()
class InMemoryPairedImageDataset(data.Dataset):
    """``PairedImageDataset`` (same options and outputs) reading from a decoded, memory-mapped uint8 cache.

    Args:
        opt (dict): ``PairedImageDataset``'s options (``dataroot_gt``, ``dataroot_lq``, ``io_backend`` ``lmdb`` or
            ``disk``, ``meta_info_file``, ``filename_tmpl``, ``gt_size``, ``use_hflip``, ``use_rot``, ``color``,
            ``mean``, ``std``, ``phase``, ``scale``) plus ``cache_dir``, ``max_memory``, ``decode_threads``,
            ``on_device`` and ``seed`` (see the module docstring).

    Attributes:
        paths: as ``PairedImageDataset.paths``.
        cache_path: the cache file in use.
        cache_built: True when this instance decoded the cache, False when it reused one.
    """

    builds = 0  # caches decoded by this process (tests read it to tell a reuse from a rebuild)

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.name = type(self).__name__
        for key in ('dataroot_gt', 'dataroot_lq', 'io_backend', 'phase', 'scale'):
            if opt.get(key) is None:
                raise self._error(f'option {key} is missing; set it as for PairedImageDataset (BasicSR adds phase '
                                  'and scale itself when it builds the dataset from an option file).')
        self.gt_folder, self.lq_folder = str(opt['dataroot_gt']), str(opt['dataroot_lq'])
        self.filename_tmpl = opt.get('filename_tmpl', '{}')
        self.mean, self.std = opt.get('mean'), opt.get('std')
        self.backend = (opt['io_backend'] or {}).get('type')
        self.scale = opt['scale']
        self.train = opt['phase'] == 'train'
        self.on_device = opt.get('on_device', False)
        self._check_options()
        self.paths = self._paired_paths()
        if not self.paths:
            raise self._error(f'no image pairs found in dataroot_gt {self.gt_folder} / dataroot_lq {self.lq_folder}; '
                              'point them at folders (or LMDBs) that hold the images.')
        self.cache_path, self.cache_built = self._prepare_cache()
        header = read_cache_header(self.cache_path)
        self._data_offset, self._data_nbytes = header['data_offset'], header['data_nbytes']
        self._index = read_cache_index(self.cache_path, header)
        self._check_alignment(self._index[:, :, 1:3])
        self._buffer = None  # mapped lazily in each process: a mapping is not pickled to workers
        self._envs = {}
        self._holder = hold(self.cache_path)
        remove_unused(self.cache_path, self._cache_stem())

    # ------------------------------------------------------------------------------------------------ options
    def _error(self, message):
        return InMemoryDatasetError(f'{self.name} ({self.opt.get("name", self.opt.get("phase", "?"))}): {message}')

    def _check_options(self):
        """Reject, in one line, the options BasicSR would only trip over later (or silently misuse)."""
        opt = self.opt
        if self.backend not in ('lmdb', 'disk'):
            raise self._error(f'io_backend.type {self.backend!r} is not supported; use lmdb or disk.')
        if opt.get('color') not in (None, 'y', 'rgb'):
            raise self._error(f'color: {opt["color"]!r} is not known; use "y" (Y channel) or leave it out (RGB).')
        if not isinstance(self.scale, int) or self.scale < 1:
            raise self._error(f'scale {self.scale!r} is not a positive integer.')
        if self.train:
            for key in ('gt_size', 'use_hflip', 'use_rot'):
                if key not in opt:
                    raise self._error(f'option {key} is missing; training needs gt_size, use_hflip and use_rot.')
            gt_size = opt['gt_size']
            if not isinstance(gt_size, int) or gt_size < self.scale or gt_size % self.scale:
                hint = max(1, round(gt_size / self.scale)) * self.scale if isinstance(gt_size, (int, float)) else 192
                raise self._error(f'gt_size {gt_size!r} is not a positive multiple of scale {self.scale}, so the LQ '
                                  f'patch could not match the GT patch; use e.g. gt_size: {hint}.')
        for key, folder in (('dataroot_gt', self.gt_folder), ('dataroot_lq', self.lq_folder)):
            if not os.path.isdir(folder):
                raise self._error(f'{key}: {folder} is not a folder (relative paths are read from {os.getcwd()}); '
                                  'fix the path.')
            if self.backend == 'lmdb':
                for name in ('meta_info.txt', 'data.mdb'):
                    if not os.path.isfile(os.path.join(folder, name)):
                        raise self._error(f'{key}: {folder} has no {name}; it is not a BasicSR LMDB. Build it with '
                                          'lwsr-prepare-div2k or basicsr.utils.lmdb_util (docs/data_preparation.md).')
        meta = opt.get('meta_info_file')
        if self.backend == 'disk' and meta is not None and not os.path.isfile(meta):
            raise self._error(f'meta_info_file: {meta} does not exist; fix the path or remove the option.')
        if opt.get('max_memory') is not None:
            self.max_memory = parse_size(opt['max_memory'])
        else:
            self.max_memory = None
        self._check_on_device()
        threads = opt.get('decode_threads', min(8, os.cpu_count() or 1))
        if not isinstance(threads, int) or threads < 1:
            raise self._error(f'decode_threads {threads!r} is not a positive integer.')
        self.decode_threads = threads

    def _check_on_device(self):
        opt = self.opt
        if not isinstance(self.on_device, bool):
            raise self._error(f'on_device: {self.on_device!r} is not true or false; write on_device: true to cut the '
                              'training batches on the model\'s device, or leave it out.')
        if self.on_device and not self.train:
            raise self._error(f'on_device: true works in the train phase only (this is phase {opt["phase"]!r}); '
                              'remove it from this dataset (validation reads whole images through the DataLoader).')
        if 'seed' in opt and (not isinstance(opt['seed'], int) or isinstance(opt['seed'], bool) or opt['seed'] < 0):
            raise self._error(f'seed: {opt["seed"]!r} is not a non-negative integer; fix it or leave it out (the '
                              'draws are then seeded from BasicSR\'s manual_seed).')
        if 'seed' in opt and not self.on_device:
            raise self._error('seed is read with on_device: true only (the DataLoader path is seeded by BasicSR\'s '
                              'manual_seed); remove it or set on_device: true.')

    def _paired_paths(self):
        """BasicSR's own pairing (same modes, keys and order as ``PairedImageDataset``); its failures become one
        line naming the folders and the fix."""
        folders = [self.lq_folder, self.gt_folder]
        where = f'dataroot_gt {self.gt_folder} / dataroot_lq {self.lq_folder}'
        try:
            if self.backend == 'lmdb':
                return paired_paths_from_lmdb(folders, ['lq', 'gt'])
            if self.opt.get('meta_info_file') is not None:
                return paired_paths_from_meta_info_file(folders, ['lq', 'gt'], self.opt['meta_info_file'],
                                                        self.filename_tmpl)
            return paired_paths_from_folder(folders, ['lq', 'gt'], self.filename_tmpl)
        except (ValueError, AssertionError) as err:
            fix = ('store GT and LQ under the same keys (python -m lwsr_plugin.data.check_lmdb GT.lmdb LQ.lmdb lists '
                   'the differences)' if self.backend == 'lmdb' else
                   f'make every GT name map to an LQ name through filename_tmpl {self.filename_tmpl!r}')
            raise self._error(f'{where}: {err}; {fix}.') from None

    # ------------------------------------------------------------------------------------------------ cache
    def _source_id(self):
        """What the cache is of (folders, mode, pairing options), independent of the files' contents."""
        meta = self.opt.get('meta_info_file') if self.backend == 'disk' else None
        desc = [self.backend, os.path.realpath(self.gt_folder), os.path.realpath(self.lq_folder), self.filename_tmpl,
                os.path.realpath(meta) if meta else None]
        return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:8]

    def _fingerprint(self):
        """Hash of everything the decoded arrays depend on: the decode mode, the pairs, and the sizes, mtimes and
        meta_info contents of what is read."""
        digest = hashlib.sha256(json.dumps([CACHE_VERSION, DECODE_MODE, self._source_id(), self.paths]).encode())
        if self.backend == 'lmdb':
            for folder in (self.gt_folder, self.lq_folder):
                st = os.stat(os.path.join(folder, 'data.mdb'))
                digest.update(f'{st.st_size} {st.st_mtime_ns} '.encode())
                digest.update(sha256_file(os.path.join(folder, 'meta_info.txt')).encode())
        else:
            for pair in self.paths:
                for key in ('gt_path', 'lq_path'):
                    try:
                        st = os.stat(pair[key])
                    except OSError as err:
                        raise self._error(f'{pair[key]}: cannot be read ({err.strerror}); restore the file or remove '
                                          'it from meta_info_file.') from None
                    digest.update(f'{st.st_size} {st.st_mtime_ns} '.encode())
            if self.opt.get('meta_info_file') is not None:
                digest.update(sha256_file(self.opt['meta_info_file']).encode())
        return digest.hexdigest()

    def _cache_stem(self):
        def base(folder):
            name = os.path.basename(os.path.normpath(folder))
            return name[:-5] if name.endswith('.lmdb') else name
        return f'{base(self.gt_folder)}__{base(self.lq_folder)}.{self._source_id()}'

    def _prepare_cache(self):
        """Path of a valid cache for the current data (built here when there is none) and whether it was built."""
        cache_dir = os.path.abspath(self.opt.get('cache_dir') or os.path.dirname(os.path.abspath(self.gt_folder)))
        fingerprint = self._fingerprint()
        path = os.path.join(cache_dir, f'{self._cache_stem()}.{fingerprint[:16]}{SUFFIX}')
        header = read_cache_header(path)
        if self._is_valid(header, fingerprint):
            self._check_memory(header['data_nbytes'])
            return path, False
        shapes = self._estimate_shapes()
        self._check_alignment(shapes)
        self._check_memory(int((shapes.clip(0).prod(axis=2) * 3).sum()))
        try:
            os.makedirs(cache_dir, exist_ok=True)
            with build_lock(path + '.lock'):
                try:
                    if self._is_valid(read_cache_header(path), fingerprint):
                        return path, False
                    self._build(path, fingerprint)
                finally:
                    # still locked: processes waiting on this lock file re-check the cache when they get it, and
                    # a process that makes a new lock file meanwhile at worst builds once more (same result)
                    remove_path(path + '.lock')
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            where = 'cache_dir' if self.opt.get('cache_dir') else 'the default cache folder (beside dataroot_gt)'
            raise self._error(f'cannot write the cache in {cache_dir}, {where} ({err.strerror}); set cache_dir: to a '
                              'writable folder on a local disk.') from None
        return path, True

    def _is_valid(self, header, fingerprint):
        return header is not None and header.get('fingerprint') == fingerprint and header['count'] == len(self.paths)

    def _check_memory(self, nbytes):
        if self.max_memory is not None and nbytes > self.max_memory:
            raise self._error(
                f'max_memory is {format_size(self.max_memory)} but the decoded {len(self.paths)} GT/LQ pairs of '
                f'{self.gt_folder} need {format_size(nbytes)} ({nbytes} bytes); raise it (max_memory: '
                f'{_suggest_size(nbytes)}), list fewer images (meta_info_file), or use type: PairedImageDataset.')

    def _estimate_shapes(self):
        """``(n, 2, 2)`` GT/LQ ``(h, w)`` from meta_info.txt (LMDB) or the image headers (disk), without decoding;
        -1 where an LMDB line gives no shape. Decoded, each image takes h*w*3 bytes (grey ones decode to 3 channels)."""
        shapes = np.full((len(self.paths), 2, 2), -1, dtype=np.int64)
        if self.backend == 'lmdb':
            for which, folder, key in ((GT, self.gt_folder, 'gt_path'), (LQ, self.lq_folder, 'lq_path')):
                known = {}
                with open(os.path.join(folder, 'meta_info.txt')) as f:
                    for line in f:
                        m = re.search(r'\((\d+),\s*(\d+)(?:,\s*\d+)?\)', line)
                        if m:
                            known[line.split('.')[0]] = (int(m.group(1)), int(m.group(2)))
                for i, pair in enumerate(self.paths):
                    shapes[i, which] = known.get(pair[key], (-1, -1))
        else:
            for i, pair in enumerate(self.paths):
                shapes[i, GT], shapes[i, LQ] = self._header_hw(pair['gt_path']), self._header_hw(pair['lq_path'])
        return shapes

    def _header_hw(self, path):
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as img:
                return img.size[1], img.size[0]
        except (OSError, UnidentifiedImageError) as err:
            raise self._error(f'{path}: cannot be decoded as an image ({type(err).__name__}); replace it or remove '
                              'the pair.') from None

    def _read_records(self, items):
        """Encoded bytes of ``items`` (``(pair_index, 'gt_path'|'lq_path')``), in order."""
        out = []
        if self.backend == 'lmdb':
            for i, key in items:
                env = self._envs['gt' if key == 'gt_path' else 'lq']
                with env.begin(write=False) as txn:
                    buf = txn.get(self.paths[i][key].encode('ascii'))
                if buf is None:
                    folder = self.gt_folder if key == 'gt_path' else self.lq_folder
                    raise self._error(f'{folder}: key {self.paths[i][key]!r} is listed in meta_info.txt but not '
                                      'stored; rebuild the LMDB (lwsr_plugin.data.check_lmdb lists such keys).')
                out.append(bytes(buf))
        else:
            for i, key in items:
                try:
                    with open(self.paths[i][key], 'rb') as f:
                        out.append(f.read())
                except OSError as err:
                    raise self._error(f'{self.paths[i][key]}: cannot be read ({err.strerror}); restore the file or '
                                      'remove the pair.') from None
        return out

    def _decode(self, item_and_bytes):
        (i, key), buf = item_and_bytes
        img = None
        if buf:
            try:
                img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
            except cv2.error:
                img = None
        if img is None:
            where = self.paths[i][key]
            if self.backend == 'lmdb':
                where = f'{self.gt_folder if key == "gt_path" else self.lq_folder} record {where!r}'
            raise self._error(f'{where}: cannot be decoded as an image; replace it or remove the pair.')
        return np.ascontiguousarray(img)

    def _build(self, path, fingerprint):
        """Decode every pair once into the cache file ``path`` (see :func:`.in_memory_cache.write_cache`)."""
        from tqdm import tqdm
        logger = get_root_logger()
        self._envs = {}
        if self.backend == 'lmdb':
            import lmdb
            self._envs = {k: lmdb.open(folder, readonly=True, lock=False, readahead=False, meminit=False)
                          for k, folder in (('gt', self.gt_folder), ('lq', self.lq_folder))}
        n = len(self.paths)
        start = time.time()
        logger.info(f'{self.name}: decoding {n} GT/LQ pairs once into {path}')
        info = {'fingerprint': fingerprint, 'dataroot_gt': os.path.abspath(self.gt_folder),
                'dataroot_lq': os.path.abspath(self.lq_folder), 'backend': self.backend,
                'created': time.strftime('%Y-%m-%d %H:%M:%S')}
        try:
            with ThreadPoolExecutor(self.decode_threads) as pool, \
                    tqdm(total=n, unit='pair', desc=f'{self.name}: decoding {os.path.basename(self.gt_folder)}',
                         dynamic_ncols=True) as bar:
                data_nbytes = write_cache(path, n, self._decoded_pairs(pool, bar), info)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise self._error(f'no space left in {os.path.dirname(path)} for the cache; free space or set '
                              'cache_dir: to another disk.') from None
        finally:
            for env in self._envs.values():
                env.close()
            self._envs = {}
        type(self).builds += 1
        logger.info(f'{self.name}: cache of {n} pairs, {format_size(data_nbytes)}, written in '
                    f'{time.time() - start:.1f} s: {path}')

    def _decoded_pairs(self, pool, bar):
        """Every pair's decoded ``(gt, lq)``, in order; ``4 * decode_threads`` pairs are read and decoded at a time."""
        n, chunk = len(self.paths), 4 * self.decode_threads
        for first in range(0, n, chunk):
            items = [(i, key) for i in range(first, min(n, first + chunk)) for key in ('gt_path', 'lq_path')]
            images = list(pool.map(self._decode, zip(items, self._read_records(items))))
            yield from zip(images[0::2], images[1::2])
            bar.update(len(items) // 2)

    def _check_alignment(self, shapes):
        """BasicSR's paired_random_crop checks (GT = scale x LQ, LQ at least the patch) for every pair at once, and
        for validation that GT covers scale x LQ, so a bad pair fails now instead of when it is drawn. ``shapes``:
        ``(n, 2, 2)`` GT/LQ ``(h, w)``; pairs with a -1 (unknown before decoding) are skipped."""
        known = (shapes >= 0).all(axis=(1, 2))
        gt_hw, lq_hw = shapes[:, GT], shapes[:, LQ]
        if self.train:
            bad = np.nonzero(known & (gt_hw != lq_hw * self.scale).any(axis=1))[0]
            why = 'GT must be exactly scale x LQ for training; fix or remove the pair'
            small = np.nonzero(known & (lq_hw < self.opt['gt_size'] // self.scale).any(axis=1))[0]
            if not len(bad) and len(small):
                i = small[0]
                raise self._error(f'{self.paths[i]["lq_path"]}: LQ {lq_hw[i][0]}x{lq_hw[i][1]} is smaller than the LQ '
                                  f'patch {self.opt["gt_size"] // self.scale} (gt_size {self.opt["gt_size"]} / scale '
                                  f'{self.scale}); remove the pair or lower gt_size.')
        else:
            bad = np.nonzero(known & (gt_hw < lq_hw * self.scale).any(axis=1))[0]
            why = 'GT must be at least scale x LQ; fix or remove the pair'
        if len(bad):
            i = bad[0]
            raise self._error(f'{self.paths[i]["gt_path"]}: GT {gt_hw[i][0]}x{gt_hw[i][1]} vs LQ '
                              f'{self.paths[i]["lq_path"]} {lq_hw[i][0]}x{lq_hw[i][1]} at scale {self.scale} '
                              f'({len(bad)} such pair(s)); {why}.')

    # ------------------------------------------------------------------------------------------------ reading
    def __getstate__(self):
        state = self.__dict__.copy()
        state['_buffer'] = None  # each worker maps the file itself instead of receiving a pickled copy of it
        state['_holder'] = None  # the constructing process holds the file for its workers
        return state

    def cache_data(self):
        """``(buffer, index)``: every decoded image of the set as one flat read-only uint8 array (the mapped data
        of the cache file; images are HWC BGR, one after the other) and a copy of the ``(n, 2, 4)`` int64 index of
        ``(offset, h, w, c)`` into it, GT at ``[:, GT]`` and LQ at ``[:, LQ]``. What ``DeviceBatches`` copies to a
        device."""
        if self._buffer is None:
            self._buffer = np.memmap(self.cache_path, dtype=np.uint8, mode='r', offset=self._data_offset,
                                     shape=(self._data_nbytes,)).view(np.ndarray)
        return self._buffer, self._index.copy()

    def _image(self, index, which):
        """Read-only uint8 HWC BGR view of image ``which`` (GT or LQ) of pair ``index``."""
        buffer = self._buffer if self._buffer is not None else self.cache_data()[0]
        offset, h, w, c = (int(v) for v in self._index[index, which])
        return buffer[offset:offset + h * w * c].reshape(h, w, c)

    def __getitem__(self, index):
        if self.on_device:
            # the model cuts the patch from its device copy of the set (DeviceBatches): nothing to read here
            return {'index': index}
        scale = self.scale
        gt_path, lq_path = self.paths[index]['gt_path'], self.paths[index]['lq_path']
        img_gt, img_lq = self._image(index, GT), self._image(index, LQ)
        y_only = self.opt.get('color') == 'y'

        if self.train:
            # BasicSR's own crop (same random calls, same checks) on the uint8 views: only the patch is ever copied
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.opt['gt_size'], scale, gt_path)
            if not y_only:
                # the draws of basicsr's augment(), in its order; flips, rotation and BGR->RGB are index permutations,
                # so applying them as views before the one float conversion gives img2tensor's values exactly
                hflip = self.opt['use_hflip'] and random.random() < 0.5
                vflip = self.opt['use_rot'] and random.random() < 0.5
                rot90 = self.opt['use_rot'] and random.random() < 0.5
                img_gt, img_lq = (_patch_to_tensor(_flip(img, hflip, vflip, rot90)) for img in (img_gt, img_lq))
                return self._finish(img_gt, img_lq, gt_path, lq_path)
            img_gt, img_lq = _to_float(img_gt), _to_float(img_lq)
            img_gt, img_lq = augment([img_gt, img_lq], self.opt['use_hflip'], self.opt['use_rot'])
        else:
            img_gt, img_lq = _to_float(img_gt), _to_float(img_lq)

        # PairedImageDataset's own steps, in its order: bgr2ycbcr's float64 dot product rounds the same way
        if y_only:
            img_gt = bgr2ycbcr(img_gt, y_only=True)[..., None]
            img_lq = bgr2ycbcr(img_lq, y_only=True)[..., None]
        if not self.train:
            img_gt = img_gt[0:img_lq.shape[0] * scale, 0:img_lq.shape[1] * scale, :]
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        return self._finish(img_gt, img_lq, gt_path, lq_path)

    def _finish(self, img_gt, img_lq, gt_path, lq_path):
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': lq_path, 'gt_path': gt_path}

    def __len__(self):
        return len(self.paths)


def _flip(img, hflip, vflip, rot90):
    """basicsr.data.transforms.augment's cv2.flip(img, 1) / cv2.flip(img, 0) / transpose, as views."""
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    if rot90:
        img = img.transpose(1, 0, 2)
    return img


def _patch_to_tensor(img):
    """CHW RGB float32 tensor of an HWC BGR uint8 view, in one pass: uint8 -> float32 divided by float32(255), the
    arithmetic of ``imfrombytes(float32=True)``. Contiguous, which also makes the batch collation cheaper."""
    out = np.empty((img.shape[2], img.shape[0], img.shape[1]), np.float32)
    np.divide(img[:, :, ::-1].transpose(2, 0, 1), np.float32(255.), out=out)
    return torch.from_numpy(out)


def _to_float(img):
    # the same expression as imfrombytes(float32=True), hence the same float32 values
    return img.astype(np.float32) / 255.
