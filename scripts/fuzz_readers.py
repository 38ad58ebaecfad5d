#!/usr/bin/env python
"""Fuzz the plugin's file readers: mutated copies (byte flips, truncations, insertions) of a valid file go through the
reader the commands use, each under a time limit, in a worker process that a crash cannot take down with the count.

Readers and the error each must answer with (one line naming the file; anything else would reach the user as a
traceback):

* ``caffemodel``: ``convert.caffe_idn.convert_idn_caffemodel`` (``lwsr-convert-idn``) -> ``CaffeModelError``;
* ``pth``: ``fileio.read_state_dict`` on a BasicSR ``.pth`` (pretrain, ``--ckpt``) -> ``ValueError``/``KeyError``;
* ``safetensors``: ``fileio.read_state_dict`` on a ``.safetensors`` checkpoint -> ``ValueError``/``KeyError``;
* ``state``: ``patches.checkpoints.load_resume_state`` on a ``<iter>.state`` (``path.resume_state``) -> ``RuntimeError`` naming
  ``path.resume_state``, judged as ``lwsr-train`` prints it (``entry.one_line``).

A mutation the reader accepts is counted as ``accepted`` (e.g. a flipped bit inside a weight). Outcomes:
``accepted``, ``error`` (the one-line error), ``other`` (another exception or a multi-line message), ``timeout`` (the
per-file limit ran out inside Python), ``hang`` (no answer at all: the worker is killed), ``crash`` (the worker died,
e.g. SIGSEGV/SIGBUS). Run: ``python scripts/fuzz_readers.py [--n 200] [--seed 0] [--readers caffemodel pth ...]``;
prints one table row per reader and exits 1 when any file ended in other/timeout/hang/crash.
"""
import argparse
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time

READERS = ('caffemodel', 'pth', 'safetensors', 'state')
SUFFIX = {'caffemodel': '.caffemodel', 'pth': '.pth', 'safetensors': '.safetensors', 'state': '.state'}
SHARED = os.environ.get('LWSR_SHARED', os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared'))
FILE_LIMIT_S = 20  # per mutated file, inside the worker (signal.alarm)
HANG_LIMIT_S = 60  # per file, from the parent: a worker stuck in C code gets no alarm


# ------------------------------------------------------------------------------------------------------ mutations
def mutate(data, rng):
    """(mutated bytes, description). Half the edits aim at the first 4 KiB, where the structure lives."""
    kind = rng.choice(('flip', 'truncate', 'insert'))
    n = len(data)

    def position():
        return rng.randrange(min(n, 4096)) if rng.random() < 0.5 else rng.randrange(n)

    if kind == 'flip':
        out = bytearray(data)
        spots = [position() for _ in range(rng.randint(1, 8))]
        for pos in spots:
            out[pos] ^= rng.randint(1, 255)
        return bytes(out), f'flip {len(spots)} bytes at {sorted(spots)[:3]}'
    if kind == 'truncate':
        cut = position() if rng.random() < 0.3 else rng.randrange(n)
        return data[:cut], f'truncate to {cut} of {n} bytes'
    pos, extra = position(), bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return data[:pos] + extra + data[pos:], f'insert {len(extra)} bytes at {pos}'


def mutation(source_bytes, seed, index):
    """The ``index``-th mutation of a run with ``seed`` (the same in the worker and the parent)."""
    return mutate(source_bytes, random.Random(f'{seed}-{index}'))


# -------------------------------------------------------------------------------------------------------- sources
def make_sources(folder):
    """{reader: path of a valid file} in ``folder``: the official IDN x2 caffemodel, and a small IMDN's checkpoint
    (.pth / .safetensors) and training state as the plugin writes them."""
    import torch

    from basicsr.models.lr_scheduler import MultiStepRestartLR
    from lwsr_plugin import fileio
    from lwsr_plugin.patches import checkpoints
    from lwsr_plugin.archs.imdn_arch import IMDN
    torch.manual_seed(0)
    net = IMDN(num_feat=8, num_block=1, upscale=4)
    sources = {'caffemodel': os.path.join(SHARED, 'anchors', 'idn', 'IDN_x2.caffemodel')}
    sources['pth'] = os.path.join(folder, 'net_g_5.pth')
    fileio.atomic_save({'params': net.state_dict()}, sources['pth'])
    sources['safetensors'] = os.path.join(folder, 'net_g_5.safetensors')
    fileio.save_safetensors({f'params.{k}': v.contiguous() for k, v in net.state_dict().items()},
                            sources['safetensors'])
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
    net(torch.rand(1, 3, 8, 8)).mean().backward()
    optimizer.step()
    scheduler = MultiStepRestartLR(optimizer, milestones=[10], gamma=0.5)
    sources['state'] = os.path.join(folder, '5.state')
    fileio.atomic_save({'epoch': 0, 'iter': 5, 'optimizers': [optimizer.state_dict()],
                        'schedulers': [scheduler.state_dict()]}, sources['state'])
    return sources


# --------------------------------------------------------------------------------------------------------- worker
def _reader(name):
    if name == 'caffemodel':
        from lwsr_plugin.convert.caffe_idn import CaffeModelError, convert_idn_caffemodel
        return lambda path: convert_idn_caffemodel(path), (CaffeModelError, )
    from lwsr_plugin import fileio
    from lwsr_plugin.patches import checkpoints
    if name in ('pth', 'safetensors'):
        return lambda path: fileio.read_state_dict(path, 'params'), (ValueError, KeyError)

    def load_state(path):
        opt = {'auto_resume': False, 'num_gpu': 0, 'path': {'resume_state': path}}
        return checkpoints.load_resume_state(opt)

    return load_state, (RuntimeError, )


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def worker(reader, source, seed, indices, folder):
    """Read each mutation of ``source``; print one JSON line per file (flushed before the next one starts)."""
    import warnings
    warnings.simplefilter('ignore')  # torch's pickle-protocol notes are not the reader's answer
    func, expected = _reader(reader)
    with open(source, 'rb') as f:
        data = f.read()
    signal.signal(signal.SIGALRM, _alarm)
    path = os.path.join(folder, f'mutated{SUFFIX[reader]}')
    with open(path, 'wb') as f:
        f.write(data)
    func(path)  # warm-up: the imports a first call pays must not count against the first mutation's time limit
    for index in indices:
        mutated, _ = mutation(data, seed, index)
        with open(path, 'wb') as f:
            f.write(mutated)
        print(json.dumps({'index': index, 'started': True}), flush=True)
        start = time.time()
        signal.alarm(FILE_LIMIT_S)
        try:
            func(path)
            outcome, message = 'accepted', ''
        except _Timeout:
            outcome, message = 'timeout', ''
        except expected as err:
            message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            if reader == 'state':  # what lwsr-train prints for an error raised inside BasicSR's pipeline
                from lwsr_plugin.entry import one_line
                message = one_line(err)
            named = path in message or reader == 'state' and 'path.resume_state' in message
            outcome = 'error' if '\n' not in message and named else 'other'
        except Exception as err:  # noqa: BLE001  (what the fuzzer is looking for)
            outcome, message = 'other', f'{type(err).__name__}: {err}'
        finally:
            signal.alarm(0)
        print(json.dumps({'index': index, 'outcome': outcome, 'seconds': time.time() - start,
                          'message': message[:300]}), flush=True)


# --------------------------------------------------------------------------------------------------------- parent
def fuzz(reader, source, n, seed, folder, log=None):
    """Run ``n`` mutations of ``source`` through ``reader``; returns {index: result dict}. A worker that dies or
    stops answering is replaced, and the file it was on is counted as a crash or a hang."""
    results, todo = {}, list(range(n))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    while todo:
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', reader, '--source', source, '--seed', str(seed),
               '--folder', folder, '--indices', ','.join(map(str, todo))]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        current, deadline = None, time.time() + HANG_LIMIT_S + 60  # + start-up (imports)
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
            if not ready:  # no answer in time: stuck outside Python (an alarm would have fired)
                proc.kill()
                proc.wait()
                if current is not None:
                    results[current] = {'outcome': 'hang', 'seconds': HANG_LIMIT_S, 'message': ''}
                break
            line = proc.stdout.readline()
            if not line:  # the worker exited: finished, or killed by a signal while on `current`
                proc.wait()
                if current is not None and current not in results:
                    results[current] = {'outcome': 'crash', 'seconds': 0.0,
                                        'message': f'worker exit status {proc.returncode}'}
                break
            item = json.loads(line)
            if item.get('started'):
                current, deadline = item['index'], time.time() + HANG_LIMIT_S
            else:
                results[item['index']] = item
                current = None
                if log:
                    log(reader, item)
        proc.stdout.close()
        todo = [i for i in todo if i not in results]
    return results


OUTCOMES = ('accepted', 'error', 'other', 'timeout', 'hang', 'crash')


def summarize(reader, results):
    counts = {k: sum(1 for r in results.values() if r['outcome'] == k) for k in OUTCOMES}
    return dict(reader=reader, files=len(results), slowest=max((r['seconds'] for r in results.values()), default=0),
                **counts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--n', type=int, default=200, help='mutated files per reader')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--readers', nargs='+', default=list(READERS), choices=READERS)
    parser.add_argument('--show', type=int, default=3, help='failures listed per reader')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--source', help=argparse.SUPPRESS)
    parser.add_argument('--folder', help=argparse.SUPPRESS)
    parser.add_argument('--indices', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.source, args.seed, [int(i) for i in args.indices.split(',')], args.folder)
        return 0
    bad = 0
    with tempfile.TemporaryDirectory(prefix='lwsr-fuzz-') as folder:
        sources = make_sources(folder)
        print(f'{"reader":<12} {"files":>5} {"accepted":>8} {"error":>6} {"other":>6} {"timeout":>7} {"hang":>5} '
              f'{"crash":>5} {"slowest s":>9}')
        for reader in args.readers:
            work = os.path.join(folder, reader)
            os.makedirs(work)
            results = fuzz(reader, sources[reader], args.n, args.seed, work)
            row = summarize(reader, results)
            print(f'{reader:<12} {row["files"]:>5} {row["accepted"]:>8} {row["error"]:>6} {row["other"]:>6} '
                  f'{row["timeout"]:>7} {row["hang"]:>5} {row["crash"]:>5} {row["slowest"]:>9.2f}', flush=True)
            failures = [(i, r) for i, r in sorted(results.items()) if r['outcome'] not in ('accepted', 'error')]
            bad += len(failures)
            with open(sources[reader], 'rb') as f:
                data = f.read()
            for i, r in failures[:args.show]:
                print(f'    #{i} {mutation(data, args.seed, i)[1]}: {r["outcome"]} {r["message"][:200]}')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
