"""Validation of BasicSR LMDBs: an HR (GT) LMDB and one or more LR (LQ) LMDBs that pair with it.

Checks, and lists every problem found: ``meta_info.txt`` parses; its keys are the keys stored; the key sets of HR
and each LR are identical; every record decodes as an image whose shape matches ``meta_info.txt``; LR x scale = HR.
Exit status 0 when clean, 1 when problems were found, 2 when an LMDB cannot be opened at all.

Only OpenCV and NumPy are needed (no torch, no BasicSR), and only once the arguments are parsed. Records are read in
one sequential cursor pass and decoded by a few threads at a time (OpenCV releases the GIL while decoding).

Run: ``python -m lwsr_plugin.data.check_lmdb DIV2K_train_HR_sub.lmdb DIV2K_train_LR_bicubic_X4_sub.lmdb``.
"""
import argparse
import collections
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import lmdb

from .images import DataPrepError
from .lmdb_io import check_lmdb_file, read_meta_info

MAX_LISTED = 20


def _open(path):
    if not os.path.isdir(path):
        raise DataPrepError(f'{path}: not an LMDB folder')
    check_lmdb_file(path)  # before mapping it: a truncated data.mdb would end this process with SIGBUS
    try:
        # readahead stays on (BasicSR turns it off for random reads in training): this is one sequential pass, and
        # without readahead a cold disk serves it one 4 KiB page fault at a time
        return lmdb.open(path, readonly=True, lock=False, readahead=True)
    except lmdb.Error as err:
        raise DataPrepError(f'{path}: cannot open as LMDB ({err})') from None


def _decoded_shape(raw):
    """(h, w, c) of a PNG/JPEG record, or None when it does not decode."""
    import cv2
    import numpy as np
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    return img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2]


def _decode_in_order(records, workers):
    """Yield (key, shape or None) for the (key, raw bytes) ``records`` in their order, decoding up to ``workers``
    records at once; at most a few records per thread are held in memory."""
    with ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for key, raw in records:
            pending.append((key, pool.submit(_decoded_shape, raw)))
            if len(pending) >= 4 * workers:
                key, future = pending.popleft()
                yield key, future.result()
        while pending:
            key, future = pending.popleft()
            yield key, future.result()


def check_one(path, problems, workers=1, meta=None):
    """Decode every record of one LMDB against its meta_info; returns {key: (h, w, c)} of the decodable ones.
    ``meta``: its ``read_meta_info``, when the caller has it already."""
    from tqdm import tqdm  # not at the top: 50-70 ms that --help would pay
    meta = read_meta_info(path) if meta is None else meta
    shapes, stored, unlisted = {}, set(), []

    def listed_records(txn):  # one cursor pass, in the order the records lie in the file
        for raw_key, raw in txn.cursor():
            key = raw_key.decode('ascii', 'replace')
            stored.add(key)
            if key in meta:
                yield key, raw
            else:
                unlisted.append(key)

    env = _open(path)
    try:
        with env.begin() as txn, tqdm(total=len(meta), desc=os.path.basename(os.path.normpath(path)), unit='rec',
                                      dynamic_ncols=True, file=sys.stderr) as bar:
            for key, shape in _decode_in_order(listed_records(txn), workers):
                bar.update()
                if shape is None:
                    problems.append(f'{path}: record "{key}" does not decode as an image')
                elif shape != meta[key][0]:
                    problems.append(f'{path}: record "{key}" is {shape}, meta_info.txt says {meta[key][0]}')
                if shape is not None:
                    shapes[key] = shape
    finally:
        env.close()
    problems.extend(f'{path}: key "{key}" stored but not in meta_info.txt' for key in unlisted)
    problems.extend(f'{path}: key "{key}" in meta_info.txt but not stored' for key in sorted(meta.keys() - stored))
    return shapes


def check_pair(hr_path, lr_paths, scales, workers=1):
    """All problems (strings) of HR LMDB ``hr_path`` paired with ``lr_paths`` at ``scales``; empty when clean."""
    problems = []
    hr_meta = read_meta_info(hr_path)
    hr = check_one(hr_path, problems, workers, hr_meta)
    for lr_path, s in zip(lr_paths, scales):
        lr_meta = read_meta_info(lr_path)
        lr = check_one(lr_path, problems, workers, lr_meta)
        for key in sorted(hr_meta.keys() - lr_meta.keys()):
            problems.append(f'{lr_path}: key "{key}" of the HR LMDB is missing')
        for key in sorted(lr_meta.keys() - hr_meta.keys()):
            problems.append(f'{lr_path}: key "{key}" is not in the HR LMDB')
        for key in sorted(hr.keys() & lr.keys()):
            (h, w, c), (lh, lw, lc) = hr[key], lr[key]
            if (lh * s, lw * s, lc) != (h, w, c):
                problems.append(f'{lr_path}: record "{key}" is {lh}x{lw}x{lc}, HR is {h}x{w}x{c} (scale {s})')
    return problems


def infer_scale(path):
    """Scale from an ``X<s>`` in an LMDB name (``..._X4_sub.lmdb``)."""
    m = re.search(r'[Xx](\d+)', os.path.basename(os.path.normpath(path)))
    if not m:
        raise DataPrepError(f'{path}: cannot infer the scale from the name; pass --scales')
    return int(m.group(1))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Check an HR LMDB and its LR LMDBs (BasicSR format).')
    parser.add_argument('hr', help='HR (GT) .lmdb folder')
    parser.add_argument('lr', nargs='+', help='LR (LQ) .lmdb folders')
    parser.add_argument('--scales', type=int, nargs='+', help='scale of each LR (default: from "X<s>" in names)')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='threads decoding records (default: all cores)')
    return parser.parse_args(argv)


def run(argv=None):
    """Entry point body; returns the exit status."""
    args = parse_args(argv)
    scales = args.scales or [infer_scale(p) for p in args.lr]
    if len(scales) != len(args.lr):
        raise DataPrepError(f'{len(args.lr)} LR LMDBs but {len(scales)} scales')
    problems = check_pair(args.hr, args.lr, scales, max(1, args.workers))
    for line in problems[:MAX_LISTED]:
        print(line)
    if len(problems) > MAX_LISTED:
        print(f'... and {len(problems) - MAX_LISTED} more problems')
    n = len(read_meta_info(args.hr))
    print(f'{"FAILED" if problems else "OK"}: {args.hr} ({n} records) with {len(args.lr)} LR LMDBs, '
          f'{len(problems)} problems')
    return 1 if problems else 0


def main(argv=None):
    """Console command ``lwsr-check-lmdb``."""
    try:
        return run(argv)
    except DataPrepError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    raise SystemExit(main())
