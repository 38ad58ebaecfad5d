"""``lwsr-export``: write a network as ONNX with dynamic batch/height/width, check it with onnxruntime, time both.

Examples::

    lwsr-export --arch IMDN --scale 4 --ckpt IMDN_x4.pth -o imdn_x4.onnx
    lwsr-export --arch IDN --scale 4 --ckpt IDN_x4.pth -o idn_x4.onnx --check-image Set5/LR_bicubic/X4/babyx4.png

The check runs the ONNX model under onnxruntime (CPU) on ``--check-image`` (or a random 64x64 input) and reports the
max |difference| to PyTorch and the median latency of each. Inputs are NCHW float32 in [0, 1] (RGB, or Y for IDN).
"""
import argparse
import os
import sys
import time

# Module-level imports stay light (no torch, onnx, numpy, BasicSR): `lwsr-export --help` answers at once.
from lwsr_plugin.cli.upscale import _parse_kwargs, add_model_arguments, read_any


def export_onnx(net, path, in_ch, opset=17, sample_hw=(32, 32)):
    """TorchScript-trace export with dynamic N/H/W axes (the traced graph reads sizes from the input), written under a
    temporary name and renamed when complete (a failed or killed export leaves no half-written ``path``)."""
    import torch
    sample = torch.rand(1, in_ch, *sample_hw)
    axes = {0: 'batch', 2: 'height', 3: 'width'}
    from lwsr_plugin.fileio import atomic_target
    with atomic_target(path, suffix='.onnx', fsync=False) as tmp:  # _check_complete fsyncs before it parses
        torch.onnx.export(net, (sample, ), tmp, input_names=['input'], output_names=['output'], opset_version=opset,
                          dynamic_axes={'input': axes, 'output': axes}, dynamo=False)
        _check_complete(tmp)
    return path


def _check_complete(path):
    """fsync ``path`` and parse it back: a disk that filled up during the export must not pass as a model."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    import onnx  # present: torch's exporter has just written the file through it
    try:
        onnx.load_model(path, load_external_data=False)
    except Exception as err:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise OSError(28, f'the written file does not parse back ({type(err).__name__}); disk full?') from None


def _same_file(a, b):
    """True when path ``b`` is, or resolves to (symlink, ``..``, hard link), the existing file ``a``."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def median_time(fn, repeats=5):
    fn()  # warm-up: allocators, oneDNN primitive caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def onnx_session(path):
    import onnxruntime as ort
    return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


def check_onnx(net, path, x, repeats=5, session=None):
    """(max |ORT - PyTorch|, PyTorch seconds, onnxruntime seconds) on input ``x`` (NCHW float32); ``session``: an
    ``onnx_session(path)`` to reuse across inputs."""
    import numpy as np
    import torch
    sess = session or onnx_session(path)
    feed = {'input': x.numpy()}
    with torch.inference_mode():
        ref = net(x).numpy()
        t_torch = median_time(lambda: net(x), repeats)
    out = sess.run(None, feed)[0]
    t_ort = median_time(lambda: sess.run(None, feed), repeats)
    return float(np.abs(out - ref).max()), t_torch, t_ort


def image_tensor(path, in_ch):
    """An image file (8- or 16-bit) as the network's input, as ``lwsr-upscale`` feeds it: RGB [0, 1], or its Y channel
    for 1-channel models; a grey image is luma (its own Y; R = G = B for an RGB model), docs/evaluation.md."""
    import numpy as np
    import torch

    from basicsr.utils.color_util import bgr2ycbcr
    img = read_any(path)
    img = img.astype(np.float32) / np.iinfo(img.dtype).max
    if img.ndim == 2:
        planes = img[..., None] if in_ch == 1 else np.repeat(img[..., None], 3, axis=2)
    else:
        img = img[..., :3]
        planes = bgr2ycbcr(img, y_only=True)[..., None] if in_ch == 1 else img[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None]


def build_parser():
    """The argument parser of ``lwsr-export`` (imports nothing heavy)."""
    p = argparse.ArgumentParser(prog='lwsr-export', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-o', '--output', required=True, help='ONNX file to write (its folder is created)')
    add_model_arguments(p)
    p.add_argument('--opset', type=int, default=17, help='ONNX opset (default 17)')
    p.add_argument('--check-image', action='append', help='image(s) for the onnxruntime parity check')
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime check')
    p.add_argument('--tolerance', type=float, default=1e-4, help='max |ORT - PyTorch| accepted (default 1e-4)')
    return p


def missing_packages(check=True):
    """The packages ``lwsr-export`` needs that do not import here: onnx (torch's exporter writes through it) and,
    with ``check``, onnxruntime (the parity check)."""
    missing = []
    for name in ('onnx', 'onnxruntime') if check else ('onnx', ):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def main(argv=None):
    args = build_parser().parse_args(argv)
    for label, item in [('--ckpt', args.ckpt), ('--opt', args.opt)] + [('--check-image', p) for p in
                                                                       args.check_image or []]:
        if item and _same_file(item, args.output):
            print(f'lwsr-export: -o {args.output} is (or leads to) the input {label} {item}; writing it would destroy '
                  'the input. Give another output name, e.g. model.onnx.', file=sys.stderr)
            return 2
    missing = missing_packages(check=not args.no_check)
    if missing:  # before the model is built: a missing package must not surface as torch's traceback mid-export
        print(f'lwsr-export: {" and ".join(missing)} {"is" if len(missing) == 1 else "are"} not installed; install '
              'what the command needs with: pip install "lwsr_plugin[onnx]"', file=sys.stderr)
        return 2
    import torch

    from lwsr_plugin.inference import InferenceError, _in_channels, load_model, network_options
    try:
        net = load_model(network_options(args.arch, args.scale, _parse_kwargs(args.arch_kwarg), args.opt), args.ckpt,
                         args.param_key)
    except (InferenceError, KeyError, TypeError, ValueError) as err:
        print(f'lwsr-export: {err}', file=sys.stderr)
        return 2
    in_ch = _in_channels(net)
    inputs = []
    for path in [] if args.no_check else args.check_image or []:  # read before exporting: a bad file costs nothing
        try:
            inputs.append(image_tensor(path, in_ch))
        except InferenceError as err:
            print(f'lwsr-export: --check-image {path}: {err}', file=sys.stderr)
            return 2
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        export_onnx(net, args.output, in_ch, args.opset)
    except OSError as err:  # full disk, unwritable folder: the temporary file is gone, no partial .onnx remains
        print(f'lwsr-export: cannot write {args.output} ({err.strerror or err}); nothing was written under that name. '
              'Free disk space or choose a writable path.', file=sys.stderr)
        return 1
    print(f'lwsr-export: wrote {args.output} ({type(net).__name__}, input N x {in_ch} x H x W, dynamic H/W)')
    if args.no_check:
        return 0
    inputs = inputs or [torch.rand(1, in_ch, 64, 64)]
    worst, session = 0., onnx_session(args.output)
    for i, x in enumerate(inputs):
        err, t_torch, t_ort = check_onnx(net, args.output, x, session=session)
        worst = max(worst, err)
        name = args.check_image[i] if args.check_image else 'random 64x64'
        print(f'  {name} {tuple(x.shape[2:])}: max|ORT-PyTorch| {err:.2e}; latency PyTorch {t_torch * 1e3:.1f} ms, '
              f'onnxruntime {t_ort * 1e3:.1f} ms ({t_ort / t_torch:.2f}x)')
    if worst > args.tolerance:
        print(f'lwsr-export: parity check failed: {worst:.2e} > {args.tolerance:.0e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
