"""The parallel produce-then-write loop every preparation command shares, and its command-line plumbing.

Workers (``multiprocessing``) turn one source image each into encoded records; the parent process alone writes
them, so LMDB sees a single writer. Outputs are published only after every job succeeded.

The commands import this module before parsing their arguments: OpenCV, NumPy, torch and BasicSR (and
:mod:`lwsr_plugin.fileio`, which loads them) are imported only by :func:`write_lmdbs` / :func:`run_jobs`, i.e. once
the arguments, the inputs and the targets have been checked.
"""
import argparse
import multiprocessing
import os
import signal
import sys
import threading
import time

from .images import DataPrepError
from .lmdb_io import AtomicLmdbWriter, check_targets

MAX_NAMED = 20  # skipped images named in the --skip-small line; the count covers all


def _single_thread():
    # One thread per worker: the processes already use every core, extra threads would only contend.
    import cv2
    import torch
    torch.set_num_threads(1)
    cv2.setNumThreads(0)


def _init_pool_worker():
    _single_thread()
    # Ctrl-C is the parent's to handle (it stops the pool); SIGTERM from pool.terminate() must just end the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _thread_settings(saved=None):
    """Current (torch, OpenCV) thread counts; with ``saved``, restore those first (the in-process path sets 1)."""
    import cv2
    import torch
    if saved:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])
    return torch.get_num_threads(), cv2.getNumThreads()


def _import_pixel_modules():
    """Imports NumPy, torch and BasicSR (through .resize) and :mod:`lwsr_plugin.fileio` with Ctrl-C held back until
    they are in.

    Before the pool forks: the workers inherit them from the parent instead of importing them each, which costs
    seconds and a few hundred MB per worker. Before any temporary output exists, and with SIGINT blocked meanwhile:
    a KeyboardInterrupt raised inside the C++ initialisation of a torch extension aborts the process
    (``terminate called after throwing an instance of 'pybind11::error_already_set'``, SIGABRT, the temporary LMDBs
    left behind); held back, it is raised once the import is done and cleans up like any Ctrl-C."""
    if 'lwsr_plugin.data.resize' in sys.modules and 'lwsr_plugin.fileio' in sys.modules:
        return
    hold = (threading.current_thread() is threading.main_thread() and hasattr(signal, 'pthread_sigmask'))
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hold else None
    try:
        from lwsr_plugin import fileio  # noqa: F401
        from . import resize  # noqa: F401
    finally:
        if hold:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a Ctrl-C pending meanwhile is delivered here


def run_jobs(func, jobs, workers, desc):
    """Yield ``func(job)`` for every job in order, over ``workers`` processes (in-process when ``workers`` <= 1),
    with a tqdm bar. A worker's DataPrepError is re-raised here unchanged."""
    from tqdm import tqdm  # not at the top: 50-70 ms that --help would pay
    _import_pixel_modules()
    bar = tqdm(total=len(jobs), desc=desc, unit='img', dynamic_ncols=True, file=sys.stderr)
    pool = None
    saved = _thread_settings()
    try:
        if workers <= 1 or len(jobs) <= 1:
            _single_thread()
            results = map(func, jobs)
        else:
            pool = multiprocessing.get_context('fork').Pool(min(workers, len(jobs)), initializer=_init_pool_worker)
            results = pool.imap(func, jobs, chunksize=1)
        for result in results:
            yield result
            bar.update()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _thread_settings(saved)
        bar.close()


def write_lmdbs(outputs, func, jobs, workers, overwrite, compress_level, desc):
    """Run ``func`` over ``jobs`` and store its records atomically.

    ``outputs`` maps a label to a final ``.lmdb`` path; ``func(job)`` returns {label: [(key, png_bytes, shape)]}.
    Returns (images, records, seconds) and prints the throughput.
    """
    _import_pixel_modules()
    from lwsr_plugin import fileio
    check_targets(outputs.values(), overwrite)
    writers = {}
    results = None
    start = time.time()
    n_records = 0
    try:
        for label, path in outputs.items():
            writers[label] = AtomicLmdbWriter(path, compress_level)
        results = run_jobs(func, jobs, workers, desc)
        for result in results:
            for label, records in result.items():
                for key, data, shape in records:
                    writers[label].put(key, data, shape)
                    n_records += 1
        done = [(w.finish(), w.final_path) for w in writers.values()]
        for tmp, final in done:  # only now: a run killed before leaves every output as it was
            fileio.publish(tmp, final)
    except BaseException:
        if results is not None:
            results.close()  # stops the workers and the progress bar before the error is reported
        for w in writers.values():
            w.abort()
        raise
    seconds = time.time() - start
    report_throughput(desc, len(jobs), n_records, seconds)
    for path in outputs.values():
        print(f'  wrote {path}')
    return len(jobs), n_records, seconds


def report_throughput(desc, n_images, n_records, seconds):
    """One line: images and records written, wall time, images/s."""
    rate = n_images / max(seconds, 1e-9)
    print(f'{desc}: {n_images} source images -> {n_records} records in {seconds:.1f} s ({rate:.2f} images/s)')


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except ``None``: such defaults are worked out at run time and the help text
    says how."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def base_parser(description):
    """ArgumentParser with the options every preparation command has."""
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='worker processes (1 = run in this process)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    return parser


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a positive integer')
    return value


def add_lmdb_args(parser, resize_default='basicsr', scales_default=(2, 3, 4)):
    """Options of the LMDB-writing commands: scales, PNG compression, resize rounding. ``scales_default=None``
    leaves ``--scales`` unset when not given (the command derives it)."""
    default = list(scales_default) if scales_default else None
    parser.add_argument('--scales', type=positive_int, nargs='+', default=default,
                        help='LR scales to produce' + ('' if default else ' (default: 2 3 4, or those of -opt)'))
    parser.add_argument('--compress-level', type=int, default=1, choices=range(10), metavar='0-9',
                        help='PNG compression of the records (BasicSR default 1: fast to decode)')
    parser.add_argument('--resize', choices=('basicsr', 'matlab'), default=resize_default,
                        help='bicubic rounding: basicsr = basicsr imresize (one rounding), '
                        'matlab = MATLAB uint8 imresize (rounding after each axis)')


def spaced(numbers):
    """``[2, 3, 4]`` -> ``'2 3 4'``, as the numbers would be typed on the command line."""
    return ' '.join(str(n) for n in numbers)


def add_skip_small_arg(parser, requirement):
    """``--skip-small``; ``requirement`` says which size an image needs, for the help text."""
    parser.add_argument('--skip-small', action='store_true',
                        help=f'leave out (and list) images smaller than {requirement}; without it any such image '
                        'stops the command before it does any work')


def keep_large_enough(sizes, min_side, skip_small, context, fix, desc, skipped_by='--skip-small'):
    """The paths of ``sizes`` ({path: (width, height)}) whose both sides are at least ``min_side``, in order.

    Images below that stop the command before any work is done, with one message that lists every one of them
    (path, size, required size) and the ways out (``--skip-small``, and ``fix`` when given); with ``skip_small``
    they are left out and counted instead, in a line that says they were left out by ``skipped_by``.
    """
    small = [(path, size) for path, size in sizes.items() if min(size) < min_side]
    kept = [path for path in sizes if min(sizes[path]) >= min_side]
    if small and not skip_small:
        lines = [f'{len(small)} of {len(sizes)} images are too small for {context}; nothing was written:']
        lines += [f'  {path}: {w}x{h}, needs both sides >= {min_side}' for path, (w, h) in small]
        lines.append('fix: pass --skip-small to leave them out' + (f', or {fix}' if fix else ''))
        raise DataPrepError('\n'.join(lines))
    if small:
        names = [os.path.basename(path) for path, _ in small]
        more = f' and {len(names) - MAX_NAMED} more' if len(names) > MAX_NAMED else ''
        print(f'{desc}: {skipped_by} leaves out {len(small)} of {len(sizes)} images with a side under {min_side} px: '
              f'{", ".join(names[:MAX_NAMED])}{more}')
    if not kept:
        raise DataPrepError(f'{desc}: every image has a side under {min_side} px, so {skipped_by} leaves nothing to '
                            'write' + (f'; instead use {fix}' if fix else ''))
    return kept


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def cli(main_func, argv=None):
    """Run ``main_func(argv)`` as a command: one-line message and exit status 2 on DataPrepError, 130 on Ctrl-C or
    SIGTERM (both clean up the temporary outputs)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        main_func(argv)
    except DataPrepError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: no output was written under its final name', file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, old_term)
    return 0
