"""``lwsr-upscale``: upscale image files or folders with any registered arch.

Examples::

    lwsr-upscale LR/ -o SR/ --arch IMDN --scale 4 --ckpt IMDN_x4.pth
    lwsr-upscale big.png -o SR/ --opt options/train_IMDN_x4.yml --ckpt net_g_latest.pth --tile 256 --bf16
    lwsr-upscale photo.png -o SR/ --arch IMDN_AS --ckpt IMDN_AS.pth --outscale 3.5
    lwsr-upscale LR/ -o SR/ --arch IDN --scale 4 --ckpt IDN_x4.pth      # Y-only: Y by IDN, CbCr bicubic

Outputs are PNG files named after the inputs, same bit depth and channels (grey, RGB, RGBA). A file that cannot be
read, or whose output exists without ``--overwrite``, is reported and skipped; the exit status is 1 if any failed.
"""
import argparse
import contextlib
import logging
import os
import sys

# Module-level imports stay light (no torch, cv2, numpy, BasicSR): `lwsr-upscale --help` and argument errors answer
# at once; the heavy ones are imported by the functions that use them.


def _parse_kwargs(items):
    import yaml
    kwargs = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep:
            raise SystemExit(f'lwsr-upscale: --arch-kwarg {item!r} must be key=value.')
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def collect_inputs(inputs):
    """(image paths, problems): folders are listed (hidden files skipped), files are taken as given."""
    paths, problems = [], []
    for item in inputs:
        if os.path.isdir(item):
            for name in sorted(os.listdir(item)):
                full = os.path.join(item, name)
                if not name.startswith('.') and os.path.isfile(full):
                    paths.append(full)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            problems.append(f'{item}: no such file or folder')
    return paths, problems


def read_any(path):
    """cv2 image as stored (grey / BGR / BGRA, 8 or 16 bit); InferenceError with the cause otherwise."""
    import cv2
    import numpy as np

    from lwsr_plugin.data.images import IMG_EXTS
    from lwsr_plugin.inference import InferenceError
    if not path.lower().endswith(IMG_EXTS):
        raise InferenceError(f'unsupported format (expected one of {", ".join(IMG_EXTS)})')
    if not os.path.isfile(path):
        raise InferenceError('no such file')
    if os.path.getsize(path) == 0:
        raise InferenceError('empty file (0 bytes)')
    try:
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise InferenceError(f'cannot decode image ({err})') from None
    if img is None:
        raise InferenceError('unreadable or corrupt image')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        raise InferenceError(f'{img.shape[2]} channels (grey, RGB or RGBA only)')
    if img.dtype not in (np.uint8, np.uint16):
        raise InferenceError(f'unsupported pixel type {img.dtype} (8- or 16-bit images only)')
    return img


def write_image(path, img):
    """``img`` written to ``path`` in the format its extension names (cv2), under a temporary name with the same
    extension, renamed when complete (no half-written output under the final name)."""
    import cv2

    from lwsr_plugin.fileio import atomic_target
    with atomic_target(path, suffix=os.path.splitext(path)[1] or '.png') as tmp:
        if not cv2.imwrite(tmp, img):
            raise OSError(f'cannot write {path}')


MAX_INPUT_PIXELS = 2**28  # 268 M pixels (16384 x 16384): past this even decoding the input costs GBs
MAX_OUTPUT_PIXELS = 2**31  # an 8-bit RGB output of 2 G pixels is 6 GB (a tiled image streams into it)
AUTO_TILE = 256  # LR tile side chosen when a whole-image forward would not fit


def usage_problem(args):
    """One line for a command line that cannot give a useful result, or None."""
    if args.outscale is not None and not 0 < args.outscale <= 64:
        return f'--outscale {args.outscale:g}: must be > 0 and at most 64 (the final size factor, e.g. 3.5).'
    if args.tile < 0 or args.tile_overlap < 0 or (args.tile_batch is not None and args.tile_batch < 1):
        return (f'--tile {args.tile} / --tile-overlap {args.tile_overlap} / --tile-batch {args.tile_batch}: tile and '
                'overlap must be >= 0 (0 tile: whole image) and tile-batch >= 1.')
    out_real = os.path.realpath(args.output)
    for item in args.inputs:
        folder = item if os.path.isdir(item) else os.path.dirname(item) or '.'
        if os.path.realpath(folder) == out_real:  # realpath: a symlink or '..' route to the input folder counts
            return (f'output folder {args.output} is the input folder {item} (directly or through a link); choose '
                    'another -o so that inputs are never overwritten.')
    parent = out_real
    while not os.path.exists(parent):  # the folder that -o would be created in must be a writable folder
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        return f'-o {args.output}: {parent} is not a writable folder. Choose a writable output folder.'
    return None


def check_image_size(path, factor):
    """Refuse, from the header alone, an image too large to decode or upscale in memory."""
    from lwsr_plugin.data.images import DataPrepError, image_size
    from lwsr_plugin.inference import InferenceError
    try:
        w, h = image_size(path)
    except (DataPrepError, OSError):
        return  # undecodable files are reported by read_any
    if w * h > MAX_INPUT_PIXELS or w * h * factor * factor > MAX_OUTPUT_PIXELS:
        raise InferenceError(f'{w}x{h} pixels (x{factor:g} output {round(w * factor)}x{round(h * factor)}) is more '
                             f'than this command holds in memory (input <= {MAX_INPUT_PIXELS:,} px, output <= '
                             f'{MAX_OUTPUT_PIXELS:,} px); cut the image into parts first')


def memory_budget(device):
    """Bytes a forward pass may use: half the free memory of the device (GPU) or of the machine (CPU)."""
    import torch
    if str(device).startswith('cuda'):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free // 2
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // 2
    except (ValueError, OSError):
        return 2**32


class auto_tile:
    """While active, ``up`` runs tiles of ``AUTO_TILE`` px when no ``--tile`` was given and a whole-image forward of an
    ``hw`` network input would need more than ``memory_budget`` (estimate: 64 float32 feature maps at LR size, 4 alive
    at once, plus the output), instead of running out of memory."""

    def __init__(self, up, hw, tile, device):
        self.up, self.saved = up, up.tile
        need = hw[0] * hw[1] * (64 * 4 * 4 + 3 * 4 * up.scale ** 2)
        self.tile = AUTO_TILE if not tile and need > memory_budget(device) else up.tile

    def __enter__(self):
        if self.tile != self.up.tile:
            print(f'lwsr-upscale: image too large for one pass in memory; tiling it ({self.tile} px tiles).',
                  file=sys.stderr)
        self.up.tile = self.tile

    def __exit__(self, *exc):
        self.up.tile = self.saved


@contextlib.contextmanager
def tile_progress(up, hw, path):
    """While active, a progress bar of ``path``'s tile forwards (both passes with whole-image statistics), with its
    ETA, when ``up`` tiles a network input of ``hw`` px; yields its ``update`` (``Upscaler.upscale``'s
    ``progress``), or None for an untiled image."""
    from tqdm import tqdm
    total = up.tile_forwards(hw)
    if not total:
        yield None
        return
    with tqdm(total=total, desc=os.path.basename(path), unit='tile', leave=False, file=sys.stderr) as bar:
        yield bar.update


@contextlib.contextmanager
def engine_warnings():
    """While active, the warnings of the engine (logger ``lwsr_plugin``, e.g. ``--bf16`` on a CPU where bf16 runs
    slower than fp32) are ``lwsr-upscale: ...`` lines on stderr, as this command's other messages."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('lwsr-upscale: %(message)s'))
    logger = logging.getLogger('lwsr_plugin')
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def add_model_arguments(p):
    """The arguments that choose the network and its weights, shared by the inference commands."""
    p.add_argument('--arch', help='registered arch (IMDN, IMDN_AS, IMDN_RTC, IDN, DRN, SLWSR)')
    p.add_argument('--arch-kwarg', action='append', metavar='KEY=VALUE', help='arch argument, e.g. variant=DRN+')
    p.add_argument('--scale', type=int, help='model scale (sets network_g.upscale)')
    p.add_argument('--opt', help='BasicSR option file whose network_g builds the model')
    p.add_argument('--ckpt', help='checkpoint: BasicSR .pth (params/params_ema) or an official state dict')
    p.add_argument('--param-key', default='params_ema', help='key in the checkpoint (falls back to params)')


def build_parser():
    """The argument parser of ``lwsr-upscale`` (imports nothing heavy)."""
    p = argparse.ArgumentParser(prog='lwsr-upscale', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('inputs', nargs='+', help='image files and/or folders')
    p.add_argument('-o', '--output', required=True, help='output folder (created; must differ from input folders)')
    add_model_arguments(p)
    p.add_argument('--outscale', type=float, help='final scale (any value; IMDN_AS resizes its input to it)')
    p.add_argument('--tile', type=int, default=0, help='LR tile side for memory-bounded inference (0: whole image)')
    p.add_argument('--tile-overlap', type=int, default=8, help='LR context pixels around each tile')
    p.add_argument('--tile-batch', type=int, default=None,
                   help='tiles per forward pass (default: 4 on CUDA; on a CPU as many as make 65536 LR px with their '
                        'context, at most 4: one for --tile 256, whose window keeps the cores busy alone while each '
                        'more window costs its feature maps in memory)')
    p.add_argument('--tile-stats', choices=('image', 'tile'), default='image',
                   help="image (default): layers that pool their input (IMDN's attention) get the whole image's "
                        "statistics, by one extra pass over the tiles; tile: each tile's own, one pass")
    p.add_argument('--ensemble', action='store_true', help='x8 self-ensemble (flips x rotations)')
    prec = p.add_mutually_exclusive_group()
    prec.add_argument('--bf16', action='store_true', help='bfloat16 weights and activations')
    prec.add_argument('--half', action='store_true', help='float16 weights and activations (GPU)')
    p.add_argument('--no-channels-last', action='store_true', help='keep NCHW memory format')
    p.add_argument('--compile', action='store_true', help='torch.compile the network')
    p.add_argument('--no-fast', action='store_true',
                   help="run the plain module instead of the arch's fast inference form (same output)")
    p.add_argument('--no-cuda-graphs', action='store_true', help='on CUDA, launch kernels one by one instead of '
                   'replaying a captured graph per tile shape')
    p.add_argument('--device', default='auto', help="'cpu', 'cuda', 'cuda:N' or auto (default)")
    p.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch
    from tqdm import tqdm

    from lwsr_plugin.inference import InferenceError, Upscaler, load_model, network_options
    out_dir = os.path.abspath(args.output)
    problem = usage_problem(args)
    if problem:
        print(f'lwsr-upscale: {problem}', file=sys.stderr)
        return 2
    device = args.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cpu') and not args.tile:
        # whole-image forwards: large activations reuse this process's memory instead of page-faulting anew. Tiled
        # forwards reuse their window buffers anyway (fast forms), and kept memory only fragments around them: a
        # 1000x750 photo at x4 in 256 px tiles peaked 40 MiB higher with it, in the same time
        from lwsr_plugin.fast.kernels import keep_freed_memory
        keep_freed_memory()
    try:
        net_opt = network_options(args.arch, args.scale, _parse_kwargs(args.arch_kwarg), args.opt)
        net = load_model(net_opt, args.ckpt, args.param_key)
        precision = 'bf16' if args.bf16 else 'fp16' if args.half else 'fp32'
        with engine_warnings():
            up = Upscaler(net, device=device, tile=args.tile, tile_overlap=args.tile_overlap,
                          tile_batch=args.tile_batch, tile_stats=args.tile_stats, ensemble=args.ensemble,
                          precision=precision, channels_last=not args.no_channels_last, compile=args.compile,
                          fast=not args.no_fast, cuda_graphs=not args.no_cuda_graphs)
    except (InferenceError, KeyError, TypeError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f'lwsr-upscale: {msg}', file=sys.stderr)
        return 2
    if up.scale == 1 and args.outscale is None:
        print(f'lwsr-upscale: {up.name} upscales to any size; give --outscale (e.g. 3.5).', file=sys.stderr)
        return 2
    paths, failures = collect_inputs(args.inputs)
    if not paths:
        print(f'lwsr-upscale: no image files in {" ".join(args.inputs)}; give image files or folders that hold '
              'some.', file=sys.stderr)
        return 2
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        print(f'lwsr-upscale: -o {args.output}: cannot create the output folder ({err.strerror}). Choose a writable '
              'folder.', file=sys.stderr)
        return 2
    for msg in failures:
        tqdm.write(f'lwsr-upscale: {msg}', file=sys.stderr)
    done = 0
    for path in tqdm(paths, desc=f'{up.name} x{args.outscale or up.scale}', unit='img'):
        target = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + '.png')
        img = result = None  # the last image and its output go before this one's are made, not after
        try:
            if os.path.exists(target) and not args.overwrite:
                raise InferenceError(f'{target} exists; pass --overwrite to replace it')
            check_image_size(path, args.outscale or up.scale)
            img = read_any(path)
            lr_hw = img.shape[:2] if up.scale != 1 else [round(n * args.outscale) for n in img.shape[:2]]
            with auto_tile(up, lr_hw, args.tile, device), tile_progress(up, lr_hw, path) as progress:
                result = up.upscale(img, args.outscale, progress=progress)
                tiled = progress is not None
            write_image(target, result)
            done += 1
            if tiled:
                up.release_memory()  # a large image's window buffers go back before the next image and the exit
        except (InferenceError, OSError, RuntimeError) as err:
            failures.append(f'{path}: {err}')
            tqdm.write(f'lwsr-upscale: {path}: {err}', file=sys.stderr)
    print(f'lwsr-upscale: {done} written to {out_dir}, {len(failures)} failed.')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
