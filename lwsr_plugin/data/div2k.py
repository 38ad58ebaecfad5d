"""DIV2K -> BasicSR LMDBs: HR sub-images and the matching LR sub-images for every scale, under identical keys.

Input ``<root>/DIV2K_train_HR/0001.png`` (and ``DIV2K_valid_HR``), optionally ``<root>/DIV2K_<split>_LR_bicubic/
X<s>/0001x<s>.png`` (or ``.../X<s>/0001.png``). Scales whose LR folder is missing are made from HR with MATLAB
bicubic. Train images are cut as BasicSR's ``extract_subimages.py`` does (480 crop, 240 step, threshold 0; keys
``0001_s001``...); valid images are stored whole (key ``0001``). Outputs, in ``--out`` (default ``<root>``):
``DIV2K_train_HR_sub.lmdb``, ``DIV2K_train_LR_bicubic_X<s>_sub.lmdb``, ``DIV2K_valid_HR.lmdb``,
``DIV2K_valid_LR_bicubic_X<s>.lmdb``.

``-opt <train option file>`` derives the crop, step and scales from the file's ``datasets.train.gt_size`` and
``scale`` (see :func:`derive_grid`). Every input's size is read from its header before any work: images too small for
the crop are listed all at once, or left out with ``--skip-small``.

Run: ``python -m lwsr_plugin.data.div2k --root datasets/DIV2K``.
"""
import math
import os
from functools import partial

from .images import DataPrepError, check_keys, crop_positions, encode_png, list_images, mod_crop, read_image, \
    scan_sizes
from .lmdb_io import refuse_existing, refuse_output_on_input
from .pipeline import add_lmdb_args, add_skip_small_arg, base_parser, cli, keep_large_enough, positive_int, \
    spaced, write_lmdbs

BASICSR_CROP = 480  # BasicSR's extract_subimages.py: 480x480 sub-images every 240 px
LR_EXTS = ('.png', '.jpg', '.bmp')


def find_lr_image(lr_dir, key, scale):
    """Path of the LR image for ``key`` in ``lr_dir`` in either layout (``0001x4.png`` or ``0001.png``)."""
    for name in (f'{key}x{scale}', key):
        for ext in LR_EXTS:
            path = os.path.join(lr_dir, name + ext)
            if os.path.isfile(path):
                return path
    raise DataPrepError(f'{lr_dir}: no LR image for HR "{key}" (expected {key}x{scale}.png or {key}.png)')


def lr_size_ok(lr_size, hr_size, scale):
    """True when an LR (width, height) is HR / scale, rounded down or (as MATLAB's imresize) up."""
    (w, h), (lw, lh) = hr_size, lr_size
    return (lw, lh) in {(w // scale, h // scale), (-(-w // scale), -(-h // scale))}


def read_lr(path, hr_shape, scale):
    """Read a given LR image and check its size is HR/scale (floor or MATLAB's ceil)."""
    lr = read_image(path)
    h, w = hr_shape[:2]
    # the header scan checked this already; the decoded pixels are what counts
    if not lr_size_ok((lr.shape[1], lr.shape[0]), (w, h), scale):
        raise DataPrepError(f'{path}: LR size {lr.shape[1]}x{lr.shape[0]} is not HR size {w}x{h} / {scale}')
    return lr


def process_image(job, scales, crop, step, thresh_size, resize, compress_level):
    """One HR image (and its LR images where given) -> {'HR': records, scale: records}.

    HR is first mod-cropped to the lcm of the scales so one HR crop grid maps onto every LR grid exactly.
    """
    from .resize import bicubic_downscale  # NumPy/torch/BasicSR: loaded by the pipeline before it starts workers
    key, hr_path, lr_paths = job
    hr_full = read_image(hr_path)
    mod = math.lcm(*scales)
    hr = mod_crop(hr_full, mod)
    h, w = hr.shape[:2]
    lrs = {}
    for s in scales:
        if lr_paths.get(s):
            lrs[s] = read_lr(lr_paths[s], hr_full.shape, s)[:h // s, :w // s]
        else:
            lrs[s] = bicubic_downscale(hr, 1 / s, resize)
    if crop:
        if h < crop or w < crop:  # the size scan excludes this unless a header disagrees with the pixels
            raise DataPrepError(f'{hr_path}: HR {w}x{h} (after mod-crop by {mod}) is smaller than the crop size {crop}')
        boxes = [(y, x) for y in crop_positions(h, crop, step, thresh_size)
                 for x in crop_positions(w, crop, step, thresh_size)]
        names = [f'{key}_s{i:03d}' for i in range(1, len(boxes) + 1)]
    else:
        boxes, names = [(0, 0)], [key]
    out = {'HR': [], **{s: [] for s in scales}}
    for name, (y, x) in zip(names, boxes):
        size_h, size_w = (crop, crop) if crop else (h, w)
        out['HR'].append((name, *encode_png(hr[y:y + size_h, x:x + size_w], compress_level)))
        for s in scales:
            patch = lrs[s][y // s:(y + size_h) // s, x // s:(x + size_w) // s]
            out[s].append((name, *encode_png(patch, compress_level)))
    return out


# ------------------------------------------------------------------------------------- crop grid from train options
def read_train_options(paths):
    """(largest ``datasets.train.gt_size``, sorted set of ``scale``) of BasicSR train option files."""
    import yaml
    gt_sizes, scales = [], set()
    for path in paths:
        try:
            with open(path, encoding='utf-8') as f:
                opt = yaml.safe_load(f)
        except OSError as err:
            raise DataPrepError(f'-opt {path}: cannot read ({err.strerror})') from None
        except yaml.YAMLError as err:
            raise DataPrepError(f'-opt {path}: not valid YAML ({" ".join(str(err).split())})') from None
        train = ((opt or {}).get('datasets') or {}).get('train') if isinstance(opt, dict) else None
        if not isinstance(train, dict) or not isinstance(train.get('gt_size'), int) or train['gt_size'] < 1:
            raise DataPrepError(f'-opt {path}: no datasets.train.gt_size (a positive integer); pass a BasicSR train '
                                'option file, or --crop-size and --step')
        if not isinstance(opt.get('scale'), int) or opt['scale'] < 1:
            raise DataPrepError(f'-opt {path}: no top-level "scale" (a positive integer); pass a BasicSR train '
                                'option file, or --scales')
        gt_sizes.append(train['gt_size'])
        scales.add(opt['scale'])
    return max(gt_sizes), sorted(scales)


def derive_grid(gt_size, scales):
    """(crop, step) for sub-images that training with HR patches of ``gt_size`` can use at every scale.

    BasicSR's ``paired_random_crop`` cuts a ``gt_size`` HR patch (``gt_size/scale`` LR) out of each sub-image, so
    the crop must be at least ``gt_size``; it must also be a multiple of every scale (of their lcm) for the LR
    sub-images to align. BasicSR's 480 crop is kept whenever it qualifies; otherwise the crop is the smallest
    multiple of the lcm that holds ``gt_size``. The step is half the crop (BasicSR: 240 for 480), as a multiple of
    the lcm.
    """
    mod = math.lcm(*scales)
    crop = BASICSR_CROP // mod * mod
    if crop < gt_size:
        crop = -(-gt_size // mod) * mod
    return crop, default_step(crop, mod)


def default_step(crop, mod):
    """Half the crop, rounded down to a multiple of ``mod`` (at least ``mod``)."""
    return max(mod, crop // 2 // mod * mod)


def resolve_grid(args):
    """Set ``args.scales``, ``args.crop_size``, ``args.step`` (and ``args.gt_size``, None without ``-opt``) from the
    explicit options, ``-opt`` and the defaults, explicit options first, and check them. Returns the line that
    states the values used and where they come from."""
    args.gt_size, opt_names, why = None, '', []
    if args.opt:
        args.gt_size, opt_scales = read_train_options(args.opt)
        opt_names = ', '.join(args.opt)
        why.append(f'-opt {opt_names}: gt_size {args.gt_size}, scale {spaced(opt_scales)}')
        if args.scales is None:
            args.scales = opt_scales
        elif not set(opt_scales) <= set(args.scales):
            missing = spaced(s for s in opt_scales if s not in args.scales)
            raise DataPrepError(f'--scales {spaced(args.scales)} leaves out scale {missing}, which -opt {opt_names} '
                                'trains on; add it to --scales or leave --scales out')
    if args.scales is None:
        args.scales = [2, 3, 4]
    gt_size, mod = args.gt_size, math.lcm(*args.scales)
    if args.crop_size is None and gt_size:
        args.crop_size = derive_grid(gt_size, args.scales)[0]
        why.append(f"BasicSR's {BASICSR_CROP} crop holds gt_size and is a multiple of {mod}"
                   if args.crop_size == BASICSR_CROP else f'crop = the smallest multiple of {mod} >= gt_size')
    elif args.crop_size is None:
        args.crop_size = BASICSR_CROP
    elif gt_size and args.crop_size < gt_size:
        raise DataPrepError(f'--crop-size {args.crop_size} is smaller than gt_size {gt_size} of -opt {opt_names}: '
                            f"BasicSR's paired_random_crop cannot cut a {gt_size} px patch from it; use --crop-size "
                            f'{derive_grid(gt_size, args.scales)[0]} (or any multiple of {mod} from '
                            f'{-(-gt_size // mod) * mod}), or leave it out')
    if args.step is None:
        args.step = default_step(args.crop_size, mod)
        why.append('step = half the crop')
    if args.crop_size % mod or args.step % mod:
        crop = max(mod, args.crop_size // mod * mod)
        raise DataPrepError(f'--crop-size {args.crop_size} and --step {args.step} must be multiples of {mod} (the lcm '
                            f'of --scales {spaced(args.scales)}) so HR and LR crops align; e.g. --crop-size {crop} '
                            f'--step {default_step(crop, mod)}')
    return (f'DIV2K: --crop-size {args.crop_size} --step {args.step} --scales {spaced(args.scales)}'
            + (f' ({"; ".join(why)})' if why else ''))


# ------------------------------------------------------------------------------------------------------ the splits
def plan_split(root, out_dir, split, args):
    """Check one split's inputs and return its jobs and outputs for ``write_lmdbs``. Only image headers are read
    and nothing is written; DataPrepError names every too-small HR image (unless ``--skip-small``) and every
    missing or wrongly sized LR image."""
    hr_dir = os.path.join(root, f'DIV2K_{split}_HR')
    keys = check_keys(list_images(hr_dir))
    crop = args.crop_size if split == 'train' else 0
    mod = math.lcm(*args.scales)
    lr_dirs = {s: os.path.join(root, f'DIV2K_{split}_LR_bicubic', f'X{s}') for s in args.scales}
    lr_dirs = {s: d for s, d in lr_dirs.items() if os.path.isdir(d) and not args.generate_lr}
    desc = f'DIV2K {split}'
    sizes = scan_sizes(list(keys.values()), f'{desc}: reading HR sizes')
    min_side = crop or mod
    if crop:
        context = f'the {crop}x{crop} crop (--crop-size) of DIV2K train'
        largest = min(min(size) for size in sizes.values()) // mod * mod  # the largest crop every image holds
        if largest < mod:
            fix = None
        elif args.gt_size and largest < args.gt_size:
            fix = (f'lower gt_size in the -opt file to {largest} or less and pass --crop-size {largest} (the largest '
                   f'crop all of them hold; a crop below gt_size {args.gt_size} gives training nothing to cut)')
        else:
            fix = f'--crop-size {largest} or less (a multiple of {mod}) to keep them all'
    else:
        context = f'DIV2K {split}: whole images, mod-cropped by {mod} (the lcm of the scales)'
        fix = 'fewer or other --scales'
    kept = set(keep_large_enough(sizes, min_side, args.skip_small, context, fix, desc))
    jobs, problems = [], []
    for key, path in keys.items():
        if path not in kept:
            continue
        lr_paths = {}
        for s, d in lr_dirs.items():
            try:
                lr_paths[s] = find_lr_image(d, key, s)
            except DataPrepError as err:
                problems.append(str(err))
        jobs.append((key, path, lr_paths))
    lr_sizes = scan_sizes([p for _, _, lr_paths in jobs for p in lr_paths.values()], f'{desc}: reading LR sizes')
    for _, path, lr_paths in jobs:
        w, h = sizes[path]
        for s, lr_path in lr_paths.items():
            if not lr_size_ok(lr_sizes[lr_path], (w, h), s):
                lw, lh = lr_sizes[lr_path]
                problems.append(f'{lr_path}: LR size {lw}x{lh} is not HR size {w}x{h} / {s}')
    if problems:
        raise DataPrepError(problems[0] if len(problems) == 1 else
                            f'{len(problems)} problems with the {desc} LR images; nothing was written:\n  '
                            + '\n  '.join(problems))
    made = [s for s in args.scales if s not in lr_dirs]
    grid = f'{crop}x{crop} sub-images every {args.step} px' if crop else 'whole images'
    print(f'{desc}: {len(jobs)} HR images -> {grid}; LR read for X{sorted(lr_dirs)}, made by bicubic for X{made}')
    suffix = '_sub' if crop else ''
    outputs = {'HR': os.path.join(out_dir, f'DIV2K_{split}_HR{suffix}.lmdb')}
    outputs.update({s: os.path.join(out_dir, f'DIV2K_{split}_LR_bicubic_X{s}{suffix}.lmdb') for s in args.scales})
    func = partial(process_image, scales=args.scales, crop=crop, step=args.step, thresh_size=args.thresh_size,
                   resize=args.resize, compress_level=args.compress_level)
    return {'desc': desc, 'jobs': jobs, 'outputs': outputs, 'func': func}


def parse_args(argv=None):
    parser = base_parser('DIV2K HR (+ LR when present) -> BasicSR HR/LR sub-image LMDBs for all scales.')
    parser.add_argument('--root', required=True, help='folder holding DIV2K_train_HR/ (and DIV2K_valid_HR/, LR)')
    parser.add_argument('--out', help='output folder (default: --root)')
    parser.add_argument('--splits', nargs='+', default=['train', 'valid'], choices=['train', 'valid'],
                        help='splits to convert; a split whose HR folder is absent is skipped')
    parser.add_argument('-opt', '--opt', nargs='+', metavar='YML',
                        help='BasicSR train option file(s): crop, step and scales are derived from their '
                        'datasets.train.gt_size and scale (explicit --crop-size/--step/--scales win)')
    parser.add_argument('--crop-size', type=positive_int,
                        help=f'HR sub-image size (train); default {BASICSR_CROP} (BasicSR), or derived from -opt: '
                        'at least gt_size and a multiple of the lcm of the scales')
    parser.add_argument('--step', type=positive_int,
                        help='HR sliding-window step (train); default half the crop (240 for 480)')
    parser.add_argument('--thresh-size', type=int, default=0, help='add a border window when more remains')
    parser.add_argument('--generate-lr', action='store_true', help='ignore LR folders, make every LR from HR')
    add_skip_small_arg(parser, 'the crop (train) or the lcm of the scales (valid)')
    add_lmdb_args(parser, scales_default=None)
    return parser.parse_args(argv)


def run(argv=None):
    """Entry point body: checks every requested split present under ``--root``, then converts them."""
    args = parse_args(argv)
    print(resolve_grid(args))
    out_dir = args.out or args.root
    splits = [s for s in args.splits if os.path.isdir(os.path.join(args.root, f'DIV2K_{s}_HR'))]
    if not splits:
        raise DataPrepError(f'{args.root}: no DIV2K_train_HR/ or DIV2K_valid_HR/ folder')
    plans = [plan_split(args.root, out_dir, split, args) for split in splits]
    outputs = [path for plan in plans for path in plan['outputs'].values()]
    refuse_output_on_input(outputs, [os.path.join(args.root, f'DIV2K_{s}_{kind}') for s in splits
                                     for kind in ('HR', 'LR_bicubic')])
    refuse_existing(outputs, args.overwrite)
    for plan in plans:
        write_lmdbs(plan['outputs'], plan['func'], plan['jobs'], args.workers, args.overwrite, args.compress_level,
                    plan['desc'])


def main(argv=None):
    """Console command ``lwsr-prepare-div2k``."""
    return cli(run, argv)


if __name__ == '__main__':
    raise SystemExit(main())
