"""DIV2K -> BasicSR LMDBs: HR sub-images and the matching LR sub-images for every scale, under identical keys.

Input ``<root>/DIV2K_train_HR/0001.png`` (and ``DIV2K_valid_HR``), optionally ``<root>/DIV2K_<split>_LR_bicubic/
X<s>/0001x<s>.png`` (or ``.../X<s>/0001.png``). Scales whose LR folder is missing are made from HR with MATLAB
bicubic. Train images are cut as BasicSR's ``extract_subimages.py`` does (480 crop, 240 step, threshold 0; keys
``0001_s001``...); valid images are stored whole (key ``0001``). Outputs, in ``--out`` (default ``<root>``):
``DIV2K_train_HR_sub.lmdb``, ``DIV2K_train_LR_bicubic_X<s>_sub.lmdb``, ``DIV2K_valid_HR.lmdb``,
``DIV2K_valid_LR_bicubic_X<s>.lmdb``.

Run: ``python -m lwsr_plugin.data.div2k --root datasets/DIV2K``.
"""
import math
import os
from functools import partial

from .images import (DataPrepError, check_keys, crop_positions, encode_png, list_images, mod_crop,
                     read_image)
from .pipeline import add_lmdb_args, base_parser, cli, write_lmdbs
from .resize import bicubic_downscale


def find_lr_image(lr_dir, key, scale):
    """Path of the LR image for ``key`` in ``lr_dir`` in either layout (``0001x4.png`` or ``0001.png``)."""
    for name in (f'{key}x{scale}', key):
        for ext in ('.png', '.jpg', '.bmp'):
            path = os.path.join(lr_dir, name + ext)
            if os.path.isfile(path):
                return path
    raise DataPrepError(f'{lr_dir}: no LR image for HR "{key}" (expected {key}x{scale}.png or {key}.png)')


def read_lr(path, hr_shape, scale):
    """Read a given LR image and check its size is HR/scale (floor or MATLAB's ceil)."""
    lr = read_image(path)
    h, w = hr_shape[:2]
    allowed = {(h // scale, w // scale), (-(-h // scale), -(-w // scale))}
    if lr.shape[:2] not in allowed:
        raise DataPrepError(f'{path}: LR size {lr.shape[1]}x{lr.shape[0]} is not HR size {w}x{h} / {scale}')
    return lr


def process_image(job, scales, crop, step, thresh_size, resize, compress_level):
    """One HR image (and its LR images where given) -> {'HR': records, scale: records}.

    HR is first mod-cropped to the lcm of the scales so one HR crop grid maps onto every LR grid exactly.
    """
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
        if h < crop or w < crop:
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


def prepare_split(root, out_dir, split, args):
    """Write the LMDBs of one DIV2K split (train: sub-images; valid: whole images)."""
    hr_dir = os.path.join(root, f'DIV2K_{split}_HR')
    keys = check_keys(list_images(hr_dir))
    crop = args.crop_size if split == 'train' else 0
    mod = math.lcm(*args.scales)
    if crop and (crop % mod or args.step % mod):
        raise DataPrepError(f'--crop-size {crop} and --step {args.step} must be multiples of {mod} '
                            f'(lcm of scales {args.scales}) so HR and LR crops align')
    lr_dirs = {s: os.path.join(root, f'DIV2K_{split}_LR_bicubic', f'X{s}') for s in args.scales}
    lr_dirs = {s: d for s, d in lr_dirs.items() if os.path.isdir(d) and not args.generate_lr}
    jobs = [(key, path, {s: find_lr_image(d, key, s) for s, d in lr_dirs.items()}) for key, path in keys.items()]
    made = [s for s in args.scales if s not in lr_dirs]
    print(f'DIV2K {split}: {len(jobs)} HR images; LR read for X{sorted(lr_dirs)}, made by bicubic for X{made}')
    suffix = '_sub' if crop else ''
    outputs = {'HR': os.path.join(out_dir, f'DIV2K_{split}_HR{suffix}.lmdb')}
    outputs.update({s: os.path.join(out_dir, f'DIV2K_{split}_LR_bicubic_X{s}{suffix}.lmdb') for s in args.scales})
    func = partial(process_image, scales=args.scales, crop=crop, step=args.step, thresh_size=args.thresh_size,
                   resize=args.resize, compress_level=args.compress_level)
    return write_lmdbs(outputs, func, jobs, args.workers, args.overwrite, args.compress_level, f'DIV2K {split}')


def parse_args(argv=None):
    parser = base_parser('DIV2K HR (+ LR when present) -> BasicSR HR/LR sub-image LMDBs for all scales.')
    parser.add_argument('--root', required=True, help='folder holding DIV2K_train_HR/ (and DIV2K_valid_HR/, LR)')
    parser.add_argument('--out', help='output folder (default: --root)')
    parser.add_argument('--splits', nargs='+', default=['train', 'valid'], choices=['train', 'valid'],
                        help='splits to convert; a split whose HR folder is absent is skipped')
    parser.add_argument('--crop-size', type=int, default=480, help='HR sub-image size (train)')
    parser.add_argument('--step', type=int, default=240, help='HR sliding-window step (train)')
    parser.add_argument('--thresh-size', type=int, default=0, help='add a border window when more remains')
    parser.add_argument('--generate-lr', action='store_true', help='ignore LR folders, make every LR from HR')
    add_lmdb_args(parser)
    return parser.parse_args(argv)


def run(argv=None):
    """Entry point body: converts every requested split present under ``--root``."""
    args = parse_args(argv)
    out_dir = args.out or args.root
    splits = [s for s in args.splits if os.path.isdir(os.path.join(args.root, f'DIV2K_{s}_HR'))]
    if not splits:
        raise DataPrepError(f'{args.root}: no DIV2K_train_HR/ or DIV2K_valid_HR/ folder')
    for split in splits:
        prepare_split(args.root, out_dir, split, args)


def main(argv=None):
    """Console command ``lwsr-prepare-div2k``."""
    return cli(run, argv)


if __name__ == '__main__':
    raise SystemExit(main())
