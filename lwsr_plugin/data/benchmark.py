"""A benchmark set (Set5, Set14, ...) from its HR images alone: ``HR/`` mod-cropped and ``LR_bicubic/X<s>/``.

Writes the layout the test YAMLs read (``<out>/HR/<name>.png``, ``<out>/LR_bicubic/X<s>/<name>x<s>.png``). HR is
mod-cropped by ``--hr-mod`` (default: the largest scale); LR of scale ``s`` is MATLAB bicubic of that HR mod-cropped
by ``s``, which is how the shipped sets were made: with the default ``--resize matlab`` the result reproduces
``Set5/LR_bicubic`` within 1 grey level. The whole folder is built under :func:`lwsr_plugin.fileio.temp_name` and
published (:func:`lwsr_plugin.fileio.publish`) when done.

Run: ``python -m lwsr_plugin.data.benchmark --hr my_set/HR --out datasets/MySet``.
"""
import os
import time
from functools import partial

from .images import DataPrepError, check_keys, list_images, mod_crop, read_image, scan_sizes
from .lmdb_io import check_targets, refuse_existing, refuse_output_on_input
from .pipeline import _import_pixel_modules, add_lmdb_args, add_skip_small_arg, base_parser, cli, keep_large_enough, \
    report_throughput, run_jobs


def _write_png(path, img, compress_level):
    import cv2
    if not cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level]):
        raise DataPrepError(f'{path}: cannot write (disk full or not writable)')


def process_image(job, out_dir, scales, hr_mod, resize, compress_level):
    """Write one image's HR and LR files into the (temporary) output folder; returns the number of files."""
    from .resize import bicubic_downscale  # NumPy/torch/BasicSR: loaded by the pipeline before it starts workers
    key, path = job
    hr = mod_crop(read_image(path), hr_mod)
    if min(hr.shape[:2]) < max(scales):  # the size scan excludes this unless a header disagrees with the pixels
        raise DataPrepError(f'{path}: image {hr.shape[1]}x{hr.shape[0]} is smaller than scale {max(scales)}')
    _write_png(os.path.join(out_dir, 'HR', f'{key}.png'), hr, compress_level)
    for s in scales:
        lr = bicubic_downscale(mod_crop(hr, s), 1 / s, resize)
        _write_png(os.path.join(out_dir, 'LR_bicubic', f'X{s}', f'{key}x{s}.png'), lr, compress_level)
    return 1 + len(scales)


def parse_args(argv=None):
    parser = base_parser('Benchmark set from HR images: HR/ (mod-cropped) and LR_bicubic/X<s>/ by MATLAB bicubic.')
    parser.add_argument('--hr', required=True, help='folder of HR images')
    parser.add_argument('--out', required=True, help='output set folder (gets HR/ and LR_bicubic/)')
    parser.add_argument('--hr-mod', type=int, default=0, help='mod-crop of HR (0 = largest scale)')
    add_skip_small_arg(parser, 'the largest scale after the mod-crop')
    add_lmdb_args(parser, resize_default='matlab')
    return parser.parse_args(argv)


def run(argv=None):
    """Entry point body."""
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    refuse_output_on_input([out], [args.hr])
    refuse_existing([out], args.overwrite)
    keys = check_keys(list_images(args.hr))
    if args.hr_mod < 0:
        raise DataPrepError(f'--hr-mod {args.hr_mod}: must be 0 (the largest scale) or positive')
    hr_mod = args.hr_mod or max(args.scales)
    # HR mod-cropped by hr_mod must keep at least max(scales) pixels a side for every LR to have one
    min_side = -(-max(args.scales) // hr_mod) * hr_mod
    kept = set(keep_large_enough(scan_sizes(list(keys.values()), 'benchmark: reading sizes'), min_side,
                                 args.skip_small, f'scale {max(args.scales)} after the mod-crop by {hr_mod}',
                                 'fewer or smaller --scales (or a smaller --hr-mod)', 'benchmark'))
    keys = {key: path for key, path in keys.items() if path in kept}
    _import_pixel_modules()
    from lwsr_plugin import fileio
    check_targets([out], args.overwrite)
    tmp = fileio.temp_name(out)
    fileio.remove_path(tmp)
    for sub in ['HR'] + [os.path.join('LR_bicubic', f'X{s}') for s in args.scales]:
        os.makedirs(os.path.join(tmp, sub))
    func = partial(process_image, out_dir=tmp, scales=args.scales, hr_mod=hr_mod,
                   resize=args.resize, compress_level=args.compress_level)
    start = time.time()
    results = run_jobs(func, list(keys.items()), args.workers, 'benchmark')
    try:
        n_files = sum(results)
        fileio.publish(tmp, out)
    except BaseException:
        results.close()
        fileio.remove_path(tmp)
        raise
    report_throughput('benchmark', len(keys), n_files, time.time() - start)
    print(f'  wrote {out}')


def main(argv=None):
    """Console command ``lwsr-prepare-benchmark``."""
    return cli(run, argv)


if __name__ == '__main__':
    raise SystemExit(main())
