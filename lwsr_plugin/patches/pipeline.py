"""BasicSR's pipeline as the plugin's entry points run it: the hand-over of BasicSR's own scripts, the first log line,
progress lines, validation under DDP, the device check, and dataset reads and result images that fail or land whole.

* BasicSR's own ``train.py``/``test.py`` run as scripts are ``__main__``, whose functions no patch reaches, and they
  write into site-packages when BasicSR is installed: their first call, ``parse_options``, hands the run to
  :mod:`lwsr_plugin.entry` (the same run as ``lwsr-train``/``lwsr-test``) and exits with its status.
* ``datasets.<phase>.num_worker_per_gpu: auto`` is resolved by :mod:`lwsr_plugin.options.workers` as
  ``parse_options`` returns (for every entry point, BasicSR's own scripts included), and logged as the log file opens.
* Progress: a training log line with it/s and ETA at least every ``logger.progress_interval`` seconds (default 10),
  not only every ``print_freq`` iterations; under a training budget (:mod:`.budget`) this line and BasicSR's own
  count the budget, not ``total_iter``; ``lwsr-test`` shows BasicSR's per-set progress bar (``val.pbar``).
* Validation under DDP runs on rank 0 only; forwarding through the DDP wrapper there would broadcast buffers from
  rank 0 alone and desync the ranks, so validation forwards the bare network.
* ``num_gpu`` > 0 without a visible GPU is refused with the fix when the model is built.
* ``PairedImageDataset`` names an image that cannot be decoded (or, with ``on_corrupt: skip``, leaves it out), and
  BasicSR's ``imwrite`` writes validation/test images through a temporary name.
"""
import contextlib
import datetime
import os
import re
import sys
import time

import torch

from basicsr.utils import logger as _logger
from lwsr_plugin.fileio import atomic_target
from lwsr_plugin.options.keys import default


_RUN = {}  # settings of the run that lwsr_plugin.entry started in this process


@contextlib.contextmanager
def run_settings(**settings):
    """While active, BasicSR's pipeline runs with ``settings``: ``root_note`` (first log line), ``kind``."""
    _RUN.update(settings)
    try:
        yield
    finally:
        _RUN.clear()


def _is_basicsr_script(frame):
    """True when ``frame`` is ``train_pipeline``/``test_pipeline`` of BasicSR's own script run as ``__main__``."""
    g = frame.f_globals
    folder = os.path.dirname(os.path.abspath(g.get('__file__') or ''))
    return (frame.f_code.co_name in ('train_pipeline', 'test_pipeline') and g.get('__name__') == '__main__' and
            os.path.basename(folder) == 'basicsr' and os.path.isfile(os.path.join(folder, '__init__.py')))


def wrap_parse_options(original):

    def parse_options(root_path, is_train=True):
        if _is_basicsr_script(sys._getframe(1)):
            from lwsr_plugin.entry import run_basicsr_script
            sys.exit(run_basicsr_script('train' if is_train else 'test', root_path))
        opt, args = original(root_path, is_train)
        if is_train:
            from lwsr_plugin.models.lwsr_model import apply_accumulate
            apply_accumulate(opt)
        from lwsr_plugin.options.workers import resolve_auto_workers
        # logged once the pipeline opens its log file: a log call before that would leave the run without one
        _RUN.setdefault('log_notes', []).extend(resolve_auto_workers(opt))
        if _RUN.get('kind') == 'test' and isinstance(opt.get('val'), dict):
            opt['val'].setdefault('pbar', True)  # BasicSR's own per-image tqdm bar, off by default
        return opt, args

    parse_options.__wrapped__ = original
    return parse_options


def wrap_get_root_logger(original):
    """The pipeline's first ``get_root_logger`` call (the one that opens the log file) states the output root, then
    what ``parse_options`` chose for the run (``num_worker_per_gpu: auto``)."""

    def get_root_logger(logger_name='basicsr', log_level=20, log_file=None):
        logger = original(logger_name, log_level, log_file)
        if log_file is not None:
            for note in [_RUN.pop('root_note', None)] + _RUN.pop('log_notes', []):
                if note:
                    logger.info(note)
        return logger

    get_root_logger.__wrapped__ = original
    return get_root_logger


class TrainingProgress:
    """Iterations/s and ETA of the running training, logged at least every ``interval`` seconds of wall time.

    BasicSR logs every ``logger.print_freq`` iterations; on a slow machine that can be minutes of silence. The
    training loop calls ``update_learning_rate(current_iter)`` first thing in every iteration, so the time between
    those calls is the iteration time, data loading included. The total and the ETA are those of the active
    training budget (:mod:`.budget`) when there is one, else of ``train.total_iter``."""

    def __init__(self, opt):
        self.interval = float((opt.get('logger') or {}).get('progress_interval', default('logger.progress_interval'))
                              or 0)
        self.total = int(opt['train']['total_iter'])
        self.name = opt.get('name', '')
        self.start = None  # (time, iteration) of the first observed iteration
        self.last_line = time.time()

    def rate(self, done, now=None):
        if self.start is None or done <= self.start[1]:
            return None
        return (done - self.start[1]) / max((now or time.time()) - self.start[0], 1e-9)

    def eta(self, done, now=None):
        rate = self.rate(done, now)
        return None if not rate else datetime.timedelta(seconds=int((self.total - done) / rate))

    @staticmethod
    def budget():
        """The active training budget once it counts (its first iteration started), else None."""
        from lwsr_plugin.patches.budget import active
        budget = active()
        return budget if budget is not None and budget.start is not None else None

    def step(self, current_iter, logger_fn, log_dict=None):
        """Called at the start of iteration ``current_iter``; iteration ``current_iter - 1`` is complete."""
        now = time.time()
        done = current_iter - 1
        if self.start is None:
            self.start, self.last_line = (now, done), now
            return
        if not self.interval or now - self.last_line < self.interval:
            return
        rate = self.rate(done, now)
        losses = ' '.join(f'{k}: {v:.4e}' for k, v in (log_dict or {}).items())
        budget = self.budget()
        if budget is None:
            where, spent, eta = f'{done:8,d}/{self.total:,}', '', self.eta(done, now)
        else:
            where, spent, eta = f'{done:8,d}', f' | {budget.spent()}', budget.eta()
        eta = '-' if eta is None else eta  # a timedelta of 0 is falsy, yet a known ETA
        logger_fn(f'[{self.name[:5]}..][progress] iter:{where} | {rate:.3f} it/s{spent} | eta: {eta} {losses}'.rstrip())
        self.last_line = now


def wrap_update_learning_rate(original):

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        original(self, current_iter, warmup_iter)
        if not getattr(self, 'is_train', False) or self.opt.get('rank', 0) != 0:
            return
        progress = getattr(self, '_lwsr_progress', None)
        if progress is None:
            progress = self._lwsr_progress = TrainingProgress(self.opt)
            _RUN['progress'] = progress
        progress.step(current_iter, _logger.get_root_logger().info, getattr(self, 'log_dict', None))

    update_learning_rate.__wrapped__ = original
    return update_learning_rate


def wrap_message_logger_call(original):
    """BasicSR's periodic line, with it/s added and, under a training budget, the budget's ETA and spent share in
    place of the ETA it computes from ``total_iter``; it also restarts the progress interval."""

    def __call__(self, log_vars):
        progress = _RUN.get('progress')
        if progress is None:
            return original(self, log_vars)
        rate = progress.rate(log_vars.get('iter', 0))
        budget = progress.budget()
        logger = self.logger
        suffix = f' [{rate:.3f} it/s]' if rate else ''

        def info(msg):
            if budget is not None:
                eta = budget.eta()
                eta = f'[eta: {"-" if eta is None else eta} ({budget.spent()})'
                msg = re.sub(r'\[eta: (-?\d+ days?, )?\d+:\d\d:\d\d', lambda m: eta, msg, count=1)  # str(timedelta)
            logger.info(msg + suffix)

        self.logger = type('_Edited', (), {'info': staticmethod(info)})()
        try:
            return original(self, log_vars)
        finally:
            self.logger = logger
            progress.last_line = time.time()

    __call__.__wrapped__ = original
    return __call__


def wrap_validation(original):
    """Run validation on the bare networks: rank 0 must not issue DDP collectives the other ranks never join."""

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        swapped = {}
        for name in ('net_g', 'net_d'):
            net = getattr(self, name, None)
            if net is not None and isinstance(net, torch.nn.parallel.DistributedDataParallel):
                swapped[name] = net
                setattr(self, name, net.module)
        try:
            return original(self, dataloader, current_iter, tb_logger, save_img)
        finally:
            for name, net in swapped.items():
                setattr(self, name, net)

    validation.__wrapped__ = original
    return validation


def _check_device(self):
    if self.opt.get('num_gpu', 0) != 0 and not torch.cuda.is_available():
        raise RuntimeError(f"num_gpu is {self.opt['num_gpu']} but no CUDA GPU is visible. Set `num_gpu: 0` (CPU) or "
                           '`num_gpu: auto` in the option file.')


def wrap_base_init(original):

    def __init__(self, opt):
        original(self, opt)
        _check_device(self)

    __init__.__wrapped__ = original
    return __init__


class DatasetReadError(RuntimeError):
    """An image of a dataset that cannot be read or decoded, named with its option and the fix."""


def _unreadable(dataset, index):
    """The GT or LQ file (or LMDB key) of pair ``index`` that does not decode, or None when both do."""
    import cv2
    import numpy as np
    client = getattr(dataset, 'file_client', None)
    if client is None:
        return None
    for key, client_key in (('gt_path', 'gt'), ('lq_path', 'lq')):
        path = dataset.paths[index][key]
        try:
            raw = client.get(path, client_key)
        except Exception:  # noqa: BLE001  (an unreadable file is what is looked for)
            return path
        if raw is None or cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) is None:
            if type(getattr(client, 'client', None)).__name__ == 'LmdbBackend':  # BasicSR popped io_backend.type
                return f'record {path!r} of {dataset.opt["dataroot_" + client_key]}'
            return path
    return None


def atomic_result_images():
    """BasicSR's ``imwrite`` (validation/test images under ``visualization/`` and ``results/``) through a temporary
    name in the same folder, renamed when complete: a killed ``lwsr-test`` leaves no truncated PNG under a final name.
    Replaced wherever a BasicSR or plugin module imported the name."""
    from basicsr.utils import img_util
    original = img_util.imwrite
    if getattr(original, '_lwsr_atomic', False):
        return

    def imwrite(img, file_path, params=None, auto_mkdir=True):
        if auto_mkdir:
            os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
        # the suffix keeps the extension: cv2 picks the codec by it; no fsync per validation image (not a checkpoint)
        with atomic_target(file_path, suffix=os.path.splitext(file_path)[1], fsync=False) as tmp:
            ok = original(img, tmp, params, auto_mkdir)
        return ok

    imwrite._lwsr_atomic = True
    imwrite.__wrapped__ = original
    for name, module in list(sys.modules.items()):
        if (name.startswith(('basicsr', 'lwsr_plugin')) and module is not None and
                getattr(module, 'imwrite', None) is original):
            module.imwrite = imwrite


def guard_dataset_reads():
    """Make BasicSR's ``PairedImageDataset`` (and the plugin datasets built on it) name an image that cannot be
    decoded instead of failing with ``'NoneType' object has no attribute 'astype'``; with
    ``datasets.<phase>.on_corrupt: skip`` such pairs are left out (each named once in the log) and the next pair is
    used. Forked DataLoader workers inherit the patch; spawned ones (--launcher pytorch) report the plain error."""
    from basicsr.data.paired_image_dataset import PairedImageDataset
    original = PairedImageDataset.__getitem__
    if getattr(original, '_lwsr_guard', False):
        return

    def __getitem__(self, index):
        skipped = self.__dict__.setdefault('_lwsr_skipped', set())
        for _ in range(len(self)):
            try:
                return original(self, index)
            except Exception:
                bad = _unreadable(self, index)
                if bad is None:
                    raise
            phase = self.opt.get('phase', 'train')
            if self.opt.get('on_corrupt', 'stop') != 'skip':
                raise DatasetReadError(f'datasets.{phase}: {bad} cannot be decoded (truncated or corrupt image). '
                                       f'Replace the file, or set `datasets.{phase}.on_corrupt: skip` to leave such '
                                       'pairs out.') from None
            if bad not in skipped:
                skipped.add(bad)
                from basicsr.utils import get_root_logger
                get_root_logger().warning(f'datasets.{phase}: skipping {bad}: cannot be decoded (on_corrupt: skip).')
            index = (index + 1) % len(self)
        raise DatasetReadError(f'datasets.{self.opt.get("phase", "train")}: no pair of the set can be decoded. Check '
                               'dataroot_gt and dataroot_lq.')

    __getitem__._lwsr_guard = True
    __getitem__.__wrapped__ = original
    PairedImageDataset.__getitem__ = __getitem__
