"""``lwsr-compare``: a visual-comparison figure like the papers' (IMDN Fig. 8, IDN Fig. 6): for each image, the HR
with the crop box, then zoomed crops of bicubic, every model and the ground truth, with Y-PSNR/SSIM (whole image,
border shaved by the scale) in each caption.

    lwsr-compare --hr datasets/Set5/HR/butterfly.png --lr datasets/Set5/LR_bicubic/X4/butterflyx4.png --scale 4 \\
        --model IMDN=IMDN:IMDN_x4.pth --model IDN=IDN:IDN_x4.pth --crop 100,60,64,64 -o butterfly_x4.png

``--model LABEL=ARCH:CKPT`` (repeatable); without ``--lr`` the LR image is made from the HR by MATLAB bicubic.
"""
import argparse
import os
import sys

# Module-level imports stay light (no torch, cv2, numpy, BasicSR): `lwsr-compare --help` and argument errors answer
# at once; the heavy ones are imported by the functions that use them.


def _parse_model(text):
    """(label, arch, checkpoint or None) from ``LABEL=ARCH:CKPT``."""
    from lwsr_plugin.inference import InferenceError
    label, _, rest = text.partition('=')
    arch, _, ckpt = rest.partition(':')
    if not label or not arch:
        raise InferenceError(f'--model {text!r}: expected LABEL=ARCH:CKPT, e.g. IMDN=IMDN:IMDN_x4.pth')
    return label, arch, ckpt or None


def _metrics(sr, hr, scale):
    from basicsr.metrics import calculate_psnr, calculate_ssim
    kw = dict(crop_border=scale, test_y_channel=True)
    return calculate_psnr(sr, hr, **kw), calculate_ssim(sr, hr, **kw)


def _caption(panel, text, width):
    """Panel with a white caption strip under it (cv2 text, no font files needed)."""
    import cv2
    import numpy as np
    strip = np.full((28, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([panel, strip], axis=0)


def compare_figure(hr, lr, scale, models, crop, zoom=4):
    """The figure (uint8 BGR) and ``[(label, psnr, ssim)]`` for one image. ``models``: [(label, Upscaler)]."""
    import cv2
    import numpy as np

    from lwsr_plugin.data.resize import bicubic_resize
    from lwsr_plugin.inference import InferenceError
    h, w = lr.shape[0] * scale, lr.shape[1] * scale
    hr = hr[:h, :w]
    x, y, cw, ch = crop
    if x < 0 or y < 0 or cw <= 0 or ch <= 0 or x + cw > w or y + ch > h:
        raise InferenceError(f'--crop {x},{y},{cw},{ch} is outside the {w}x{h} HR image; choose x + w <= {w} and '
                             f'y + h <= {h}.')
    bicubic = bicubic_resize(lr, scale)
    results = [('Bicubic', bicubic)] + [(label, up.upscale(lr)) for label, up in models] + [('HR', hr)]
    panels, scores = [], []
    size = (cw * zoom, ch * zoom)
    for label, img in results:
        zoomed = cv2.resize(img[y:y + ch, x:x + cw], size, interpolation=cv2.INTER_NEAREST)
        if label == 'HR':
            text = 'HR (PSNR/SSIM)'
        else:
            psnr, ssim = _metrics(img, hr, scale)
            scores.append((label, psnr, ssim))
            text = f'{label} {psnr:.2f}/{ssim:.4f}'
        panels.append(_caption(zoomed, text, size[0]))
    overview = hr.copy()
    cv2.rectangle(overview, (x, y), (x + cw - 1, y + ch - 1), (0, 0, 255), 2)
    oh = panels[0].shape[0]
    overview = cv2.resize(overview, (max(1, round(w * oh / h)), oh), interpolation=cv2.INTER_AREA)
    gap = np.full((oh, 6, 3), 255, np.uint8)
    row = [overview]
    for panel in panels:
        row += [gap, panel]
    return np.concatenate(row, axis=1), scores


def build_parser():
    """The argument parser of ``lwsr-compare`` (imports nothing heavy)."""
    p = argparse.ArgumentParser(prog='lwsr-compare', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--hr', required=True, help='ground-truth image')
    p.add_argument('--lr', help='LR image (default: MATLAB bicubic downscale of --hr)')
    p.add_argument('--scale', type=int, required=True, help='upscaling factor of the models')
    p.add_argument('--model', action='append', required=True, help='LABEL=ARCH:CKPT (repeatable)')
    p.add_argument('--crop', required=True, help='x,y,w,h of the zoomed HR region')
    p.add_argument('--zoom', type=int, default=4, help='magnification of the crops (default 4)')
    p.add_argument('--param-key', default='params_ema', help='key in the checkpoints (falls back to params)')
    p.add_argument('-o', '--output', required=True, help='figure PNG (its folder is created)')
    return p


def _parse_crop(parser, text):
    try:
        crop = tuple(int(v) for v in text.split(','))
    except ValueError:
        crop = ()
    if len(crop) != 4:
        parser.error(f'--crop {text!r}: expected four integers x,y,w,h (e.g. 100,60,64,64).')
    return crop


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    crop = _parse_crop(parser, args.crop)
    for name in ('scale', 'zoom'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} {getattr(args, name)}: must be a positive integer.')
    for name in ('hr', 'lr'):
        path = getattr(args, name)
        if path and not os.path.isfile(path):
            parser.error(f'--{name} {path}: no such file; give the path of an image.')
    import cv2

    from lwsr_plugin.cli.upscale import write_image
    from lwsr_plugin.data.resize import bicubic_resize
    from lwsr_plugin.inference import InferenceError, Upscaler, load_model, network_options
    try:
        hr = cv2.imread(args.hr, cv2.IMREAD_COLOR)
        if hr is None:
            raise InferenceError(f'--hr {args.hr}: not a readable image.')
        if args.lr:
            lr = cv2.imread(args.lr, cv2.IMREAD_COLOR)
            if lr is None:
                raise InferenceError(f'--lr {args.lr}: not a readable image.')
        else:
            h, w = hr.shape[0] - hr.shape[0] % args.scale, hr.shape[1] - hr.shape[1] % args.scale
            lr = bicubic_resize(hr[:h, :w], 1 / args.scale)
        if lr.shape[0] * args.scale > hr.shape[0] or lr.shape[1] * args.scale > hr.shape[1]:
            raise InferenceError(f'--lr is {lr.shape[1]}x{lr.shape[0]}: times {args.scale} it exceeds the HR '
                                 f'{hr.shape[1]}x{hr.shape[0]}; wrong --scale?')
        models = []
        for text in args.model:
            label, arch, ckpt = _parse_model(text)
            net = load_model(network_options(arch, args.scale), ckpt, args.param_key)
            models.append((label, Upscaler(net)))
        figure, scores = compare_figure(hr, lr, args.scale, models, crop, args.zoom)
    except (InferenceError, ValueError) as err:
        sys.exit(f'lwsr-compare: {err}')
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    try:
        write_image(args.output, figure)
    except (OSError, cv2.error) as err:
        sys.exit(f'lwsr-compare: -o {args.output}: {err}; give a writable path ending in .png.')
    for label, psnr, ssim in scores:
        print(f'{label}: Y-PSNR {psnr:.4f} dB, SSIM {ssim:.4f}')
    print(f'wrote {args.output} ({figure.shape[1]}x{figure.shape[0]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
