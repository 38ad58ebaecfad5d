"""The 291 training set (91 images of Yang et al. + 200 BSD images) with IDN's offline augmentation -> LMDBs.

IDN (Hui et al., CVPR 2018, §4.1.1) augments every image by rotation 0/90/180/270, horizontal flip and downscaling
by 1.0/0.9/0.8/0.7/0.6: 4 x 2 x 5 = 40 versions per image, 11,640 for 291 images. Each version is mod-cropped to
the lcm of the scales and its LR is MATLAB bicubic of that very HR record, so ``LR = imresize(HR, 1/s)`` holds
record by record. ``--y-only`` stores the Y channel (IDN trains on Y) as 1-channel PNGs.

Outputs in ``--out``: ``<name>_HR.lmdb`` and ``<name>_LR_bicubic_X<s>.lmdb`` (``<name>`` = ``291`` or
``291_Y``, as the IDN option files expect), keys ``<stem>_d<10*factor>_r<deg>_f<0|1>`` (e.g. ``t1_d09_r090_f1``).

Run: ``python -m lwsr_plugin.data.set291 --input datasets/T91 datasets/BSD200 --out datasets/291``.
"""
import math
import os
from functools import partial

from .images import DataPrepError, check_keys, encode_png, list_images, mod_crop, read_image, scan_sizes, to_y
from .lmdb_io import refuse_existing, refuse_output_on_input
from .pipeline import add_lmdb_args, add_skip_small_arg, base_parser, cli, keep_large_enough, spaced, \
    write_lmdbs

FACTORS = (1.0, 0.9, 0.8, 0.7, 0.6)
ROTATIONS = (0, 90, 180, 270)


def version_side(side, factor, mod):
    """Length of an image side in the version downscaled by ``factor`` and mod-cropped by ``mod``: the resize
    gives ceil(side * factor) pixels, as MATLAB's and BasicSR's imresize compute it."""
    length = side if factor == 1.0 else math.ceil(side * factor)
    return length - length % mod


def required_side(min_side, factor, mod):
    """The smallest source side whose version at ``factor`` keeps at least ``min_side`` pixels."""
    side = min_side
    while version_side(side, factor, mod) < min_side:
        side += 1
    return side


def augment_versions(img, factors=FACTORS, resize='basicsr'):
    """Yield (suffix, image) for the 40 IDN versions: downscale x rotation (counter-clockwise) x horizontal flip."""
    import numpy as np
    from .resize import bicubic_downscale
    for factor in factors:
        base = img if factor == 1.0 else bicubic_downscale(img, factor, resize)
        for deg in ROTATIONS:
            rotated = np.rot90(base, deg // 90)
            for flip in (0, 1):
                version = rotated[:, ::-1] if flip else rotated
                yield f'd{round(factor * 10):02d}_r{deg:03d}_f{flip}', np.ascontiguousarray(version)


def process_image(job, scales, y_only, factors, resize, compress_level, min_size=0):
    """One source image -> {'HR': 40 records, scale: 40 records}; versions whose HR side is below ``min_size`` are
    left out (IDN's Caffe patch extraction yields nothing from an image smaller than its patch, and BasicSR's random
    crop would stop the run on one)."""
    from .resize import bicubic_downscale  # NumPy/torch/BasicSR: loaded by the pipeline before it starts workers
    key, path = job
    img = read_image(path)
    if y_only:
        img = to_y(img)
    mod = math.lcm(*scales)
    out = {'HR': [], **{s: [] for s in scales}}
    for suffix, version in augment_versions(img, factors, resize):
        hr = mod_crop(version, mod)
        if min(hr.shape[:2]) < max(min_size, mod):  # counted up front by plan_versions
            continue
        name = f'{key}_{suffix}'
        out['HR'].append((name, *encode_png(hr, compress_level)))
        for s in scales:
            out[s].append((name, *encode_png(bicubic_downscale(hr, 1 / s, resize), compress_level)))
    return out


def parse_args(argv=None):
    parser = base_parser("IDN's augmented 291 set (T91 + BSD200 folders) -> BasicSR HR/LR LMDBs.")
    parser.add_argument('--input', nargs='+', required=True, help='image folders (e.g. T91 BSD200)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--name', default='291', help='output name prefix')
    parser.add_argument('--y-only', action='store_true', help='store the Y channel only (1-channel records)')
    parser.add_argument('--factors', type=float, nargs='+', default=list(FACTORS), help='downscale factors')
    parser.add_argument('--min-size', type=int, default=0,
                        help='leave out versions whose HR side is below this (e.g. 78: the largest IDN Table 1 patch, '
                        'so that every record can give a training patch; an image with no such version is left out '
                        'and named); default 0 keeps all 40 per image. Versions smaller than the lcm of the scales are '
                        'always left out')
    add_skip_small_arg(parser, 'the lcm of the scales even in their largest version (they can give no LR)')
    add_lmdb_args(parser)
    return parser.parse_args(argv)


def plan_versions(sizes, args):
    """Check the source images against the scales and ``--min-size`` before any work, from their sizes
    ({path: (w, h)}); returns (kept paths, number of HR records that will be written).

    A version is kept when both its sides are at least ``max(--min-size, lcm of the scales)``. An image whose
    largest version is under the lcm cannot give any LR: it is too small, listed with the others (the command
    stops) or left out by ``--skip-small``. An image whose largest version is under ``--min-size`` is left out, as
    that option asks, and named in the output.
    """
    mod = math.lcm(*args.scales)
    largest = max(args.factors)  # rotations only swap the sides: the shorter side of the largest version decides
    kept = keep_large_enough(sizes, required_side(mod, largest, mod), args.skip_small,
                             f'the scales {spaced(args.scales)} (even their largest version would be under {mod} '
                             'px, the lcm of the scales)', 'fewer or smaller --scales', '291')
    if args.min_size > mod:
        best = version_side(min(min(sizes[path]) for path in kept), largest, mod)
        kept = keep_large_enough({path: sizes[path] for path in kept}, required_side(args.min_size, largest, mod),
                                 True, None, f'--min-size {best} or less', '291',
                                 skipped_by=f'--min-size {args.min_size}')
    need = max(args.min_size, mod)
    n_records = sum(len(ROTATIONS) * 2 for path in kept for factor in args.factors
                    if min(version_side(side, factor, mod) for side in sizes[path]) >= need)
    return kept, n_records


def run(argv=None):
    """Entry point body."""
    args = parse_args(argv)
    if not args.factors or any(not 0 < f <= 1 for f in args.factors):
        raise DataPrepError(f'--factors {spaced(args.factors)}: every factor must be in (0, 1]')
    paths = [p for folder in args.input for p in list_images(folder)]
    keys = check_keys(paths)
    name = args.name + ('_Y' if args.y_only else '')
    outputs = {'HR': os.path.join(args.out, f'{name}_HR.lmdb')}
    outputs.update({s: os.path.join(args.out, f'{name}_LR_bicubic_X{s}.lmdb') for s in args.scales})
    kept, n_records = plan_versions(scan_sizes(list(keys.values()), '291: reading sizes'), args)
    refuse_output_on_input(outputs.values(), args.input)
    refuse_existing(outputs.values(), args.overwrite)
    n_versions = len(args.factors) * len(ROTATIONS) * 2
    left_out = len(kept) * n_versions - n_records
    need = max(args.min_size, math.lcm(*args.scales))
    skipped = f'; {left_out} versions under {need} px left out -> {n_records} records' if left_out else ''
    print(f'291: {len(kept)} images x {n_versions} versions = {len(kept) * n_versions} HR records{skipped}, '
          f'scales {args.scales}')
    func = partial(process_image, scales=args.scales, y_only=args.y_only, factors=args.factors, resize=args.resize,
                   compress_level=args.compress_level, min_size=args.min_size)
    kept = set(kept)
    jobs = [(key, path) for key, path in keys.items() if path in kept]
    write_lmdbs(outputs, func, jobs, args.workers, args.overwrite, args.compress_level, name)


def main(argv=None):
    """Console command ``lwsr-prepare-291``."""
    return cli(run, argv)


if __name__ == '__main__':
    raise SystemExit(main())
