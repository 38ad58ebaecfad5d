#!/usr/bin/env python
"""Kill the plugin's output builders with SIGKILL at random moments and check that no half-written result is ever
left under a final name, and that a plain rerun completes and clears the leftovers.

Builders (each on a small real input): ``lmdb`` (lwsr-prepare-291 -> two LMDBs), ``folder`` (lwsr-prepare-benchmark
-> HR/ + LR_bicubic/X<s>/), ``pth`` (lwsr-convert-idn), ``sr`` (lwsr-upscale of a folder), ``onnx`` (lwsr-export),
``cache`` (the decoded-pairs cache of ``InMemoryPairedImageDataset``, 500 Set5 x4 pairs (100 links to each image); each
trial deletes the cache first, so every trial builds it).
Per builder: one full run (its duration T sets the kill window; its output is the "previous complete" one), then
``--trials`` runs with ``--overwrite`` each killed (whole process group, pool workers included) after a random delay
(a quarter in [0, T], the others in [0.5 T, 1.2 T], where the writing happens), each followed by an inspection of what
is there; then one rerun.

After every kill, each output under its final name must be complete (same content checks as the full run) or absent;
the killed run's ``*.tmp-<pid>@<host>`` / ``*.old-<pid>@<host>`` leftovers (:func:`lwsr_plugin.fileio.temp_name`) are
allowed, and must be gone after the rerun.

Run: ``python scripts/check_kill_builders.py [--trials 20] [--seed 0] [--builders lmdb folder ...]``; prints a table
and exits 1 on any partial result under a final name or a failed rerun.
"""
import argparse
import contextlib
import glob
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

BIN = os.path.dirname(sys.executable)
SHARED = os.environ.get('LWSR_SHARED', os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared'))
BUILDERS = ('lmdb', 'folder', 'pth', 'sr', 'onnx', 'cache')
_CACHE_SCRIPT = '''
import glob, os, sys
from lwsr_plugin.data.in_memory_cache import SUFFIX
from lwsr_plugin.data.in_memory_paired_image_dataset import InMemoryPairedImageDataset
out, gt, lq = sys.argv[1:]
for old in glob.glob(os.path.join(out, '*' + SUFFIX)):
    os.remove(old)
InMemoryPairedImageDataset({'name': 'set5x100', 'phase': 'train', 'scale': 4, 'dataroot_gt': gt, 'dataroot_lq': lq,
                            'filename_tmpl': '{}x4', 'io_backend': {'type': 'disk'}, 'gt_size': 32,
                            'use_hflip': False, 'use_rot': False, 'cache_dir': out})
'''


def _datasets(*parts):
    return os.path.join(SHARED, 'datasets', *parts)


def command(builder, work):
    """(argv, output paths under their final names) of one run of ``builder`` in ``work``."""
    out = os.path.join(work, 'out')
    if builder == 'lmdb':
        src = os.path.join(work, 'src')
        if not os.path.isdir(src):
            os.makedirs(src)
            for name in ('t1.png', 't2.png', 't3.png'):
                shutil.copy(_datasets('T91', name), src)
        return ([os.path.join(BIN, 'lwsr-prepare-291'), '--input', src, '--out', out, '--scales', '2',
                 '--factors', '1.0', '0.8', '--workers', '2', '--overwrite'],
                [os.path.join(out, '291_HR.lmdb'), os.path.join(out, '291_LR_bicubic_X2.lmdb')])
    if builder == 'folder':
        return ([os.path.join(BIN, 'lwsr-prepare-benchmark'), '--hr', _datasets('Set5', 'HR'), '--out',
                 os.path.join(out, 'MySet'), '--scales', '2', '3', '4', '--workers', '1', '--overwrite'],
                [os.path.join(out, 'MySet')])
    if builder == 'pth':
        return ([os.path.join(BIN, 'lwsr-convert-idn'), os.path.join(SHARED, 'anchors', 'idn', 'IDN_x2.caffemodel'),
                 os.path.join(out, 'IDN_x2.pth')], [os.path.join(out, 'IDN_x2.pth')])
    if builder == 'sr':
        names = sorted(os.listdir(_datasets('Set5', 'LR_bicubic', 'X4')))
        return ([os.path.join(BIN, 'lwsr-upscale'), _datasets('Set5', 'LR_bicubic', 'X4'), '-o', out, '--arch', 'IMDN',
                 '--scale', '4', '--ckpt', os.path.join(SHARED, 'anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth'),
                 '--device', 'cpu', '--overwrite'],
                [os.path.join(out, os.path.splitext(n)[0] + '.png') for n in names])
    if builder == 'cache':  # its name holds a fingerprint of the sources: found after the full run
        src = os.path.join(work, 'src')
        if not os.path.isdir(src):
            for sub in ('HR', 'LR'):
                os.makedirs(os.path.join(src, sub))
            for name in sorted(os.listdir(_datasets('Set5', 'HR'))):
                stem = os.path.splitext(name)[0]
                for i in range(100):
                    os.symlink(_datasets('Set5', 'HR', name), os.path.join(src, 'HR', f'{stem}{i}.png'))
                    os.symlink(_datasets('Set5', 'LR_bicubic', 'X4', f'{stem}x4.png'),
                               os.path.join(src, 'LR', f'{stem}{i}x4.png'))
        return ([sys.executable, '-c', _CACHE_SCRIPT, out, os.path.join(src, 'HR'), os.path.join(src, 'LR')], None)
    if builder == 'onnx':
        return ([os.path.join(BIN, 'lwsr-export'), '--arch', 'IMDN', '--scale', '4', '--ckpt',
                 os.path.join(SHARED, 'anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth'), '-o',
                 os.path.join(out, 'imdn_x4.onnx'), '--no-check'], [os.path.join(out, 'imdn_x4.onnx')])
    raise ValueError(builder)


def fingerprint(builder, path):
    """What a complete output at ``path`` is (compared with the full run's), or raises when it is not complete."""
    if builder == 'lmdb':
        from lwsr_plugin.data.check_lmdb import check_one
        from lwsr_plugin.data.lmdb_io import check_lmdb_file, read_meta_info
        check_lmdb_file(path)
        problems = []
        with contextlib.redirect_stderr(io.StringIO()):  # check_one's progress bar
            shapes = check_one(path, problems, 1)
        if problems:
            raise ValueError(problems[0])
        return sorted(shapes.items()), sorted(read_meta_info(path).items())
    if builder == 'folder':
        import cv2
        files = sorted(os.path.relpath(p, path) for p in glob.glob(os.path.join(path, '**', '*.png'), recursive=True))
        shapes = []
        for rel in files:
            img = cv2.imread(os.path.join(path, rel))
            if img is None:
                raise ValueError(f'{rel} does not decode')
            shapes.append((rel, img.shape))
        return shapes
    if builder == 'pth':
        from lwsr_plugin.fileio import read_state_dict
        state, _ = read_state_dict(path)
        return sorted((k, tuple(v.shape)) for k, v in state.items())
    if builder == 'sr':
        import cv2
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError('does not decode')
        return img.shape
    if builder == 'cache':  # a complete header, and the same pixels and index as the full run's (the header itself
        import hashlib      # records the build time)
        import struct

        from lwsr_plugin.data.in_memory_cache import read_cache_header
        header = read_cache_header(path)
        if header is None:
            raise ValueError('no complete cache header')
        with open(path, 'rb') as f:
            header_offset = struct.unpack('<QQ', f.read(24)[8:24])[0]
            body = f.read(header_offset - 24)
        return header['count'], header['fingerprint'], hashlib.sha256(body).hexdigest()
    if builder == 'onnx':
        import onnx
        model = onnx.load_model(path)
        onnx.checker.check_model(model)
        return len(model.graph.node)
    raise ValueError(builder)


def leftovers(work):
    return sorted(os.path.relpath(p, work) for p in glob.glob(os.path.join(work, 'out', '**', '*'), recursive=True)
                  if '.tmp-' in os.path.basename(p) or '.old-' in os.path.basename(p))


def _run(argv, kill_after=None):
    """Run ``argv`` in its own process group; SIGKILL the group after ``kill_after`` s. Returns (status, seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    start = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env=env, text=True)
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    if kill_after is not None:
        try:  # pool workers of a killed builder: the whole group goes
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, time.time() - start, err


def check_builder(builder, trials, seed, work):
    """One builder's row: counts of what each killed run left under the final names, and the rerun's outcome."""
    rng = random.Random(f'{seed}-{builder}')
    os.makedirs(work, exist_ok=True)
    argv, finals = command(builder, work)
    status, full_s, err = _run(argv)
    if status != 0:
        raise RuntimeError(f'{builder}: the full run failed ({status}): {err[-2000:]}')
    if finals is None:
        from lwsr_plugin.data.in_memory_cache import SUFFIX
        finals = glob.glob(os.path.join(work, 'out', '*' + SUFFIX))
        assert len(finals) == 1, finals
    reference = {path: fingerprint(builder, path) for path in finals}
    row = dict(builder=builder, trials=trials, full_s=full_s, killed=0, complete=0, absent=0, partial=0,
               leftovers=0, rerun_ok=False, rerun_leftovers=None, examples=[])
    for _ in range(trials):
        # the first part of a run is start-up (imports, checks): most kills land later, where the writing is
        status, _, err = _run(argv, kill_after=rng.uniform(0, full_s) if rng.random() < 0.25 else
                              rng.uniform(0.5 * full_s, 1.2 * full_s))
        row['killed'] += status == -signal.SIGKILL
        for path in finals:
            if not os.path.exists(path):
                row['absent'] += 1
                continue
            try:
                ok = fingerprint(builder, path) == reference[path]
            except Exception as exc:  # noqa: BLE001  (any unreadable final output is the failure counted here)
                ok, why = False, f'{type(exc).__name__}: {exc}'
            else:
                why = 'differs from the full run'
            if ok:
                row['complete'] += 1
            else:
                row['partial'] += 1
                row['examples'].append(f'{os.path.relpath(path, work)}: {why}'[:200])
        row['leftovers'] += bool(leftovers(work))
    status, _, err = _run(argv)
    try:
        row['rerun_ok'] = status == 0 and all(fingerprint(builder, p) == reference[p] for p in finals)
    except Exception as exc:  # noqa: BLE001
        row['examples'].append(f'rerun: {type(exc).__name__}: {exc}'[:200])
    if status != 0:
        row['examples'].append(f'rerun exited {status}: {err.strip().splitlines()[-1:] if err.strip() else ""}')
    row['rerun_leftovers'] = leftovers(work)
    return row


def check(builders, trials, seed, folder, parallel=2):
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda b: check_builder(b, trials, seed, os.path.join(folder, b)), builders))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--trials', type=int, default=20, help='killed runs per builder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--builders', nargs='+', default=list(BUILDERS), choices=BUILDERS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='lwsr-kill-') as folder:
        rows = check(args.builders, args.trials, args.seed, folder)
    print(f'{"builder":<8} {"full run s":>10} {"kills":>5} {"killed":>6} {"outputs complete":>16} {"absent":>6} '
          f'{"PARTIAL":>7} {"runs w/ leftovers":>17} {"rerun ok":>8} {"leftovers after rerun":>21}')
    bad = 0
    for r in rows:
        print(f'{r["builder"]:<8} {r["full_s"]:>10.1f} {r["trials"]:>5} {r["killed"]:>6} {r["complete"]:>16} '
              f'{r["absent"]:>6} {r["partial"]:>7} {r["leftovers"]:>17} {str(r["rerun_ok"]):>8} '
              f'{len(r["rerun_leftovers"]):>21}')
        for example in r['examples'][:3]:
            print(f'    {example}')
        bad += r['partial'] + (not r['rerun_ok']) + len(r['rerun_leftovers'])
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
