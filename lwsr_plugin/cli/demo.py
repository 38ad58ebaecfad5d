"""``lwsr-demo``: the main job on a built-in default, with no download, in a fixed amount of wall time.

1. Builds a small x4 training set from the photos that scikit-image installs (HR mod-cropped, LR by BasicSR's
   MATLAB-exact bicubic ``imresize``) and keeps one photo for validation.
2. Trains a small IMDN with BasicSR's own ``train_pipeline`` on CPU (or GPU when present) until the time budget is
   used, through the plugin's ``LWSRModel`` (bf16 where the processor runs it natively, channels_last) on photos
   decoded once (``InMemoryPairedImageDataset``). ``--minutes`` bounds the whole demo (start-up, data, training,
   evaluation); training gets what the other steps leave, about 4.7 of the default 5 minutes on 2 cores. The
   learning rate follows a cosine over the elapsed fraction of the training time, so a longer budget trains longer
   and still ends at the small learning rate.
3. Upscales the validation photo, reports Y-PSNR of the SR result and of bicubic (border shaved by 4, BasicSR's
   ``calculate_psnr``), and writes the SR images plus a side-by-side comparison PNG.

Why the settings are what they are (measured on 2 cores shared with other jobs; gains are SR minus bicubic Y-PSNR
on the validation photo, chelsea):

* The model is the plugin's ``LWSRModel`` with ``train.amp: auto`` (bf16 autocast where the processor runs bf16
  natively: AVX512-BF16/AMX CPUs, bf16 GPUs; fp32 elsewhere) and ``train.channels_last``, and the data come from
  ``InMemoryPairedImageDataset`` (decoded once): 45-53 training iterations per second instead of 23 with SRModel in
  fp32 and ``PairedImageDataset``, so about 2.3x the iterations in the same minutes.
* The tiles cover the whole of every photo (the last row and column of tiles lie flush with the border). Cut on a
  plain 192-px grid, a third of the pixels never reached training, and 5 minutes of bf16 steps did worse than 2
  (+0.48 dB vs +0.57 dB: too few distinct pixels for some 15,000 steps, it seems); covering the photos gave +0.65 dB
  in 5 minutes and +0.58/+0.59 dB in 2.
* IMDN with 32 channels and 3 blocks, 8 patches of 64 px, Adam at 2e-3, L1: the paper's 64 channels / 6 blocks
  trains 3x fewer iterations per second and ended at the same +0.65 dB in 5 minutes; 16 patches of 96 px gave
  +0.38 dB in 2 minutes (vs +0.57 dB). In a plain-loop replica (3000 steps each, +0.57 to +0.60 dB as set here), a
  learning rate of 4e-3 (+0.61), weight EMA 0.999 (-0.05), extra 0.75x/0.5x copies of the photos (+0.58), only the
  natural photos (+0.60) or added grey texture photos (+0.54) were no better.
* Why the gain stays below +1 dB: chelsea is a hard photo for x4. The official IMDN x4 (DIV2K, full training) gains
  +0.97 dB on it, and this 32/3 network trained on chelsea itself reaches +0.89 dB after 3000 iterations.
"""
import argparse
import contextlib
import glob
import math
import os
import sys
import time

import lwsr_plugin  # noqa: F401  (cheap: registration happens when basicsr is imported, here and in workers)

TRAIN_PHOTOS = ('astronaut', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina', 'camera')
VAL_PHOTOS = ('chelsea', )
SCALE = 4
NAME = 'lwsr_demo_IMDN_x4'
MODEL_TYPE = 'LWSRModel'

DEFAULT_MINUTES = 5.0
MIN_MINUTES = 1.0  # torch import, data and BasicSR's start-up take 20-40 s on 2 loaded cores
# Kept free after the training deadline: leaving BasicSR's loop (DataLoader worker shutdown), saving, evaluation.
FINISH_RESERVE_S = 8.0
MIN_TRAIN_S = 10.0  # a run whose set-up ate the budget still trains this long: weights of 0 iterations show nothing
NO_ITER_CAP = 10**9  # BasicSR needs a total_iter; without --iters the deadline ends training long before this
ETA_MIN = 1e-5


def _progress(iterable=None, **kwargs):
    """A tqdm bar on stderr; where stderr is not a terminal (logs, tests) it is redrawn every 10 s, not 10 times a
    second."""
    from tqdm import tqdm
    interactive = sys.stderr.isatty()
    kwargs.setdefault('mininterval', 0.2 if interactive else 10.0)
    kwargs.setdefault('dynamic_ncols', interactive)
    return tqdm(iterable, file=sys.stderr, **kwargs)


def _photo(name):
    import numpy as np
    import skimage.data
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3][..., ::-1].copy()  # RGB -> BGR, as cv2/BasicSR store images


# training photos are cut into equal tiles (BasicSR's sub-image idea): the dataset draws its images uniformly, so
# every part of every photo is then drawn about equally often, whatever the photo's size
TILE = 192


def _tiles(img, tile):
    from lwsr_plugin.data.images import crop_positions
    h, w = img.shape[:2]
    # a last tile flush with the border: the whole photo is used, a strip twice
    for i, y in enumerate(crop_positions(h, tile, tile)):
        for j, x in enumerate(crop_positions(w, tile, tile)):
            yield f'_{i}{j:02d}', img[y:y + tile, x:x + tile]


def build_dataset(root, scale=SCALE):
    """Writes ``<root>/{train,val}/HR`` and ``LR_bicubic/X<scale>`` from scikit-image's sample photos: training photos
    as 192x192 tiles, the validation photo whole (mod-cropped)."""
    import cv2

    from lwsr_plugin.data.resize import bicubic_resize
    jobs = [('train', name) for name in TRAIN_PHOTOS] + [('val', name) for name in VAL_PHOTOS]
    for split, name in _progress(jobs, desc='[lwsr-demo] dataset', unit='photo'):
        hr_dir = os.path.join(root, split, 'HR')
        lr_dir = os.path.join(root, split, 'LR_bicubic', f'X{scale}')
        os.makedirs(hr_dir, exist_ok=True)
        os.makedirs(lr_dir, exist_ok=True)
        img = _photo(name)
        if max(img.shape[:2]) > 800:  # keep the few huge photos from dominating the crops
            img = bicubic_resize(img, 0.5)
        h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
        pieces = _tiles(img[:h, :w], TILE) if split == 'train' else [('', img[:h, :w])]
        for suffix, hr in pieces:
            lr = bicubic_resize(hr, 1 / scale)
            cv2.imwrite(os.path.join(hr_dir, f'{name}{suffix}.png'), hr)
            cv2.imwrite(os.path.join(lr_dir, f'{name}{suffix}x{scale}.png'), lr)
    return root


def demo_options(data_root, total_iter=NO_ITER_CAP, num_feat=32, num_block=3, name=NAME):
    """BasicSR options of the demo's training: the time budget ends it (:func:`training_budget`), or ``total_iter``
    if sooner. The demo evaluates the weights itself afterwards, so BasicSR's validation is off."""
    s = SCALE
    return {
        'name': name,
        'model_type': MODEL_TYPE,
        'scale': s,
        'num_gpu': 'auto',
        'manual_seed': 0,
        'datasets': {
            'train': {
                # decodes the tiles once into a memory-mapped cache: a patch costs a crop, not two PNG decodes
                'name': 'skimage_photos', 'type': 'InMemoryPairedImageDataset',
                'dataroot_gt': f'{data_root}/train/HR', 'dataroot_lq': f'{data_root}/train/LR_bicubic/X{s}',
                'filename_tmpl': f'{{}}x{s}', 'io_backend': {'type': 'disk'},
                # small batches of small patches: in minutes of CPU time, more steps beat bigger ones (measured in
                # 2 minutes: 8 x 64 px +0.57 dB, 16 x 96 px +0.38 dB, both at lr 2e-3)
                'gt_size': 64, 'use_hflip': True, 'use_rot': True,
                'num_worker_per_gpu': 1, 'batch_size_per_gpu': 8, 'dataset_enlarge_ratio': 2000,
                'prefetch_mode': None,
            },
        },
        'network_g': {'type': 'IMDN', 'num_feat': num_feat, 'num_block': num_block, 'upscale': s},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0,
            # LWSRModel's fast path: bf16 autocast where the CPU/GPU runs it natively (losses stay fp32), NHWC
            'amp': 'auto', 'channels_last': True,
            'optim_g': {'type': 'Adam', 'lr': 2e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            # the budget sets the learning rate (cosine over the time fraction); BasicSR requires a scheduler
            'scheduler': {'type': 'MultiStepLR', 'milestones': [], 'gamma': 1.0},
            'total_iter': int(total_iter), 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        # progress_interval 0: the demo's own bar and log line show the progress
        'logger': {'print_freq': max(total_iter // 10, 1), 'save_checkpoint_freq': total_iter,
                   'progress_interval': 0, 'use_tb_logger': False, 'wandb': {'project': None, 'resume_id': None}},
    }


class ProgressBar:
    """The demo's view of the running training, a ``show`` callback of its :class:`TrainingBudget`: a tqdm bar of the
    training seconds with it/s, learning rate, L1 loss and time left, and the same line in the log every 10 s."""

    def __init__(self):
        self.bar = None
        self.last_log = 0.0

    def __call__(self, budget):
        from basicsr.utils import get_root_logger
        if self.bar is None:
            if budget.finished:
                return
            self.bar = _progress(desc='[lwsr-demo] train', total=round(budget.seconds), unit='s',
                                 bar_format='{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s{postfix}')
        model = budget.model
        loss = model.log_dict.get('l_pix') if hasattr(model, 'log_dict') else None
        lr = model.optimizers[0].param_groups[0]['lr']
        text = (f'iter {budget.done}, {budget.rate():.2f} it/s, lr {lr:.1e}' +
                (f', L1 {loss:.4f}' if loss is not None else '') + f', {budget.left_s():.0f} s left')
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(min(budget.train_s, self.bar.total) - self.bar.n)
        now = time.time()
        if now - self.last_log >= 10:  # the log file gets the same line (the console shows only warnings)
            get_root_logger().info(f'[progress] {budget.train_s:.0f}/{budget.seconds:.0f} s, {text}')
            self.last_log = now
        if budget.finished:
            self.bar.close()
            self.bar = None


def training_budget(deadline, iters=None):
    """The demo's training budget: training ends at ``deadline`` (Unix time) or after ``iters``, the learning rate
    follows a cosine over the elapsed fraction from ``optim_g.lr`` to ``ETA_MIN``, the :class:`ProgressBar` shows it,
    and the weights are saved as BasicSR saves them at the end (``models/net_g_latest.pth``)."""
    from lwsr_plugin.patches.budget import TrainingBudget
    return TrainingBudget(iters=iters, deadline=deadline, min_seconds=MIN_TRAIN_S, fix='Give a larger --minutes.',
                          schedule='cosine', warmup=0.0, end_lr=ETA_MIN, show=ProgressBar(), save_latest=True)


def pick_threads(opt, requested=None):
    """Sets torch's CPU thread count for training and returns ``(threads, {threads: seconds per step})``:
    ``requested``, else the fastest of one thread and every core over a few timed steps of the demo's own network,
    precision and batch (an empty dict when nothing was timed: a GPU trains, or there is one core)."""
    import torch
    if requested:
        torch.set_num_threads(requested)
        return requested, {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    if torch.cuda.is_available() or cores == 1:
        return torch.get_num_threads(), {}
    from basicsr.utils.registry import ARCH_REGISTRY
    from lwsr_plugin.models.training_options import TrainingOptions
    fast = TrainingOptions(opt, torch.device('cpu'))  # the same precision and memory format as the training steps
    net_opt = dict(opt['network_g'])
    net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)  # not build_network: it would set up BasicSR's logger
    net = fast.prepare_network(net)
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    train = opt['datasets']['train']
    batch, gt = train['batch_size_per_gpu'], train['gt_size']
    lq = fast.prepare_batch(torch.rand(batch, 3, gt // SCALE, gt // SCALE))
    hr = fast.prepare_batch(torch.rand(batch, 3, gt, gt))

    def step():
        optimizer.zero_grad()
        with fast.autocast():
            out = net(lq)
        (out.float() - hr).abs().mean().backward()
        optimizer.step()

    timings = {}
    for threads in (1, cores):
        torch.set_num_threads(threads)
        begin = time.perf_counter()
        step()  # warm-up: thread pool, allocator, first-call set-up
        warm_up = time.perf_counter() - begin
        if timings and warm_up > 4 * min(timings.values()):
            timings[threads] = warm_up  # clearly slower (threads waiting on each other): more steps would only cost
            continue
        begin = time.perf_counter()
        for _ in range(2):
            step()
        timings[threads] = (time.perf_counter() - begin) / 2
    best = min(timings, key=timings.get)
    torch.set_num_threads(best)
    return best, timings


@contextlib.contextmanager
def basicsr_log_to_file(path):
    """BasicSR's log goes to ``path``; its console handler shows only warnings, so the progress bars stay intact.

    ``train_pipeline`` configures the ``basicsr`` logger only if nobody did before; doing it here first keeps its
    full log (options, environment, progress lines) in one file instead of on the screen."""
    import logging

    from basicsr.utils.logger import get_root_logger
    logger = get_root_logger()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    consoles = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    old_levels = [h.level for h in consoles]
    for h in consoles:
        h.setLevel(logging.WARNING)
    file_handler = logging.FileHandler(path, 'w', encoding='utf-8')
    file_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
    logger.addHandler(file_handler)
    try:
        yield
    finally:
        logger.removeHandler(file_handler)
        file_handler.close()
        for h, level in zip(consoles, old_levels):
            h.setLevel(level)
        logger.setLevel(old_level)


def draw_label(panel, text, scale=0.7, pad=6):
    """Writes ``text`` in light letters on a darkened box in the top-left corner of ``panel`` (in place): legible on
    any photo. One thickness for the box's size and the letters: a Hershey glyph's advance grows with its thickness,
    so a thicker shadow under the same text drifts sideways and the text reads doubled."""
    import cv2
    font = cv2.FONT_HERSHEY_SIMPLEX
    (w, h), baseline = cv2.getTextSize(text, font, scale, 1)
    box = panel[:h + baseline + 2 * pad, :w + 2 * pad]
    box[:] = box // 3  # the photo stays faintly visible behind the box
    cv2.putText(panel, text, (pad, pad + h), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def evaluate(model_path, opt, data_root, out_dir):
    """SR and bicubic Y-PSNR of every validation photo; writes SR PNGs and one comparison PNG per photo."""
    import cv2
    import numpy as np
    from basicsr.metrics import calculate_psnr
    from lwsr_plugin.data.resize import bicubic_resize
    from lwsr_plugin.inference import Upscaler, load_model
    upscaler = Upscaler(load_model(opt['network_g'], model_path, 'params'))
    results = []
    hr_paths = sorted(glob.glob(os.path.join(data_root, 'val', 'HR', '*.png')))
    for hr_path in _progress(hr_paths, desc='[lwsr-demo] evaluate', unit='photo'):
        name = os.path.splitext(os.path.basename(hr_path))[0]
        hr = cv2.imread(hr_path)
        lr = cv2.imread(os.path.join(data_root, 'val', 'LR_bicubic', f'X{SCALE}', f'{name}x{SCALE}.png'))
        sr = np.ascontiguousarray(upscaler.upscale(lr))
        bic = bicubic_resize(lr, SCALE)
        psnr_sr = calculate_psnr(sr, hr, crop_border=SCALE, test_y_channel=True)
        psnr_bic = calculate_psnr(bic, hr, crop_border=SCALE, test_y_channel=True)
        cv2.imwrite(os.path.join(out_dir, f'{name}_SR_x{SCALE}.png'), sr)
        nearest = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_NEAREST)
        panels = [nearest, bic.copy(), sr.copy(), hr.copy()]  # labels are drawn on copies, not on saved images
        labels = ['LR (nearest)', f'bicubic {psnr_bic:.2f} dB', f'IMDN {psnr_sr:.2f} dB', 'HR']
        for panel, label in zip(panels, labels):
            draw_label(panel, label)
        cv2.imwrite(os.path.join(out_dir, f'{name}_comparison.png'), np.concatenate(panels, axis=1))
        results.append((name, psnr_sr, psnr_bic))
    return results


def _positive(kind, what, example):

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f'{text!r} is not {what}; give e.g. {example}')
        return value

    return parse


def parse_args(argv=None):
    # --help shows what the demo does; the measurements behind its settings stay in the source
    parser = argparse.ArgumentParser(prog='lwsr-demo', description=__doc__.partition('\n\nWhy the settings')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: parser.exit(2, f'lwsr-demo: {message}\n')  # one line, not usage + message
    parser.add_argument('--output', default='lwsr_demo', help='folder for data, experiments and images '
                        '(default: lwsr_demo; must not hold an earlier demo run)')
    parser.add_argument('--minutes', type=_positive(float, 'a number of minutes', '--minutes 5'),
                        default=DEFAULT_MINUTES,
                        help=f'wall-time budget of the whole demo (default: {DEFAULT_MINUTES:g}; at least '
                        f'{MIN_MINUTES:g}). Training stops when the time left is what evaluation needs '
                        f'({FINISH_RESERVE_S:.0f} s)')
    parser.add_argument('--iters', type=_positive(int, 'a positive iteration count', '--iters 2000'), default=None,
                        help='also stop after this many training iterations (default: none, the time budget decides)')
    parser.add_argument('--threads', type=_positive(int, 'a positive thread count', '--threads 1'), default=None,
                        help='torch CPU threads for training (default: the faster of 1 and all cores, timed at '
                        'start: on a busy machine, threads that wait on each other can make all cores 10x slower)')
    parser.add_argument('--num_feat', type=_positive(int, 'a positive channel count', '--num_feat 32'), default=32,
                        help='IMDN channels (default: 32)')
    parser.add_argument('--num_block', type=_positive(int, 'a positive block count', '--num_block 3'), default=3,
                        help='IMDN information multi-distillation blocks (default: 3)')
    args = parser.parse_args(argv)
    if args.minutes < MIN_MINUTES:
        sys.exit(f'lwsr-demo: --minutes {args.minutes:g} is too short: start-up and data alone take about half a '
                 f'minute on 2 cores; give --minutes {MIN_MINUTES:g} or more.')
    return args


def main(argv=None):
    start = time.time()  # the budget counts from here: importing torch and BasicSR is part of the demo's time
    args = parse_args(argv)
    out = os.path.abspath(args.output)
    if os.path.exists(os.path.join(out, 'experiments')):
        sys.exit(f'lwsr-demo: {out} already holds a demo run; pass another --output or remove that folder.')
    budget_end = start + args.minutes * 60
    print(f'[lwsr-demo] time budget {args.minutes:g} min; loading torch and BasicSR', flush=True)
    import yaml

    import basicsr.train
    data_root = build_dataset(os.path.join(out, 'data'))
    print(f'[lwsr-demo] training set: {len(TRAIN_PHOTOS)} scikit-image photos, validation: {VAL_PHOTOS} '
          f'({time.time() - start:.1f} s)', flush=True)
    deadline = budget_end - FINISH_RESERVE_S
    opt = demo_options(data_root, args.iters or NO_ITER_CAP, args.num_feat, args.num_block)
    opt_path = os.path.join(out, f'{NAME}.yml')
    with open(opt_path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    threads, timings = pick_threads(opt, args.threads)
    if timings:
        print(f'[lwsr-demo] torch threads: {threads} (seconds per training step: ' +
              ', '.join(f'{n} thread{"s" * (n > 1)} {t:.2f}' for n, t in sorted(timings.items())) + ')', flush=True)
    log_path = os.path.join(out, f'train_{NAME}.log')
    print(f'[lwsr-demo] training IMDN x4 with BasicSR for the next {deadline - time.time():.0f} s '
          f'({FINISH_RESERVE_S:.0f} s kept for evaluation); BasicSR log: {log_path}', flush=True)
    argv_saved = sys.argv
    sys.argv = [argv_saved[0], '-opt', opt_path]  # BasicSR's parse_options reads the command line
    try:
        with basicsr_log_to_file(log_path), training_budget(deadline, args.iters):
            basicsr.train.train_pipeline(out)
    finally:
        sys.argv = argv_saved
    images = os.path.join(out, 'images')
    os.makedirs(images, exist_ok=True)
    results = evaluate(os.path.join(out, 'experiments', NAME, 'models', 'net_g_latest.pth'), opt, data_root, images)
    print(f'[lwsr-demo] finished in {time.time() - start:.0f} s; images in {images}')
    ok = True
    for img, psnr_sr, psnr_bic in results:
        print(f'[lwsr-demo] {img}: SR (IMDN x4) Y-PSNR {psnr_sr:.2f} dB | bicubic Y-PSNR {psnr_bic:.2f} dB '
              f'| gain {psnr_sr - psnr_bic:+.2f} dB')
        ok &= psnr_sr > psnr_bic
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
