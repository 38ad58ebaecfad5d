"""Validation of BasicSR LMDBs: an HR (GT) LMDB and one or more LR (LQ) LMDBs that pair with it.

Checks, and lists every problem found: ``meta_info.txt`` parses; its keys are the keys stored; the key sets of HR
and each LR are identical; every record decodes as an image whose shape matches ``meta_info.txt``; LR x scale = HR.
Exit status 0 when clean, 1 when problems were found, 2 when an LMDB cannot be opened at all.

Run: ``python -m lwsr_plugin.data.check_lmdb DIV2K_train_HR_sub.lmdb DIV2K_train_LR_bicubic_X4_sub.lmdb``.
"""
import os
import re
import sys

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from .images import DataPrepError
from .lmdb_io import read_meta_info

MAX_LISTED = 20


def _open(path):
    if not os.path.isdir(path):
        raise DataPrepError(f'{path}: not an LMDB folder')
    try:
        return lmdb.open(path, readonly=True, lock=False, readahead=False)
    except lmdb.Error as err:
        raise DataPrepError(f'{path}: cannot open as LMDB ({err})') from None


def check_one(path, problems):
    """Decode every record of one LMDB against its meta_info; returns {key: (h, w, c)} of the decodable ones."""
    meta = read_meta_info(path)
    shapes = {}
    env = _open(path)
    with env.begin() as txn:
        stored = {k.decode('ascii', 'replace') for k in txn.cursor().iternext(keys=True, values=False)}
        for key in sorted(stored - set(meta)):
            problems.append(f'{path}: key "{key}" stored but not in meta_info.txt')
        for key in tqdm(sorted(meta), desc=os.path.basename(path), unit='rec', file=sys.stderr):
            raw = txn.get(key.encode('ascii'))
            if raw is None:
                problems.append(f'{path}: key "{key}" in meta_info.txt but not stored')
                continue
            img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
            if img is None:
                problems.append(f'{path}: record "{key}" does not decode as an image')
                continue
            shape = (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])
            if shape != meta[key][0]:
                problems.append(f'{path}: record "{key}" is {shape}, meta_info.txt says {meta[key][0]}')
            shapes[key] = shape
    env.close()
    return shapes


def check_pair(hr_path, lr_paths, scales):
    """All problems (strings) of HR LMDB ``hr_path`` paired with ``lr_paths`` at ``scales``; empty when clean."""
    problems = []
    hr = check_one(hr_path, problems)
    hr_keys = set(read_meta_info(hr_path))
    for lr_path, s in zip(lr_paths, scales):
        lr = check_one(lr_path, problems)
        lr_keys = set(read_meta_info(lr_path))
        for key in sorted(hr_keys - lr_keys):
            problems.append(f'{lr_path}: key "{key}" of the HR LMDB is missing')
        for key in sorted(lr_keys - hr_keys):
            problems.append(f'{lr_path}: key "{key}" is not in the HR LMDB')
        for key in sorted(set(hr) & set(lr)):
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


def run(argv=None):
    """Entry point body; returns the exit status."""
    import argparse
    parser = argparse.ArgumentParser(description='Check an HR LMDB and its LR LMDBs (BasicSR format).')
    parser.add_argument('hr', help='HR (GT) .lmdb folder')
    parser.add_argument('lr', nargs='+', help='LR (LQ) .lmdb folders')
    parser.add_argument('--scales', type=int, nargs='+', help='scale of each LR (default: from "X<s>" in names)')
    args = parser.parse_args(argv)
    scales = args.scales or [infer_scale(p) for p in args.lr]
    if len(scales) != len(args.lr):
        raise DataPrepError(f'{len(args.lr)} LR LMDBs but {len(scales)} scales')
    problems = check_pair(args.hr, args.lr, scales)
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
