"""Inference speed of the plugin's fast paths against the official-style forward (issue 7), side by side in one run.

For each arch: the plain forward (NCHW fp32, as the official IMDN test script runs it) against the plugin's
``Upscaler`` paths (channels_last fp32, bf16 + channels_last, optionally + ``torch.compile``), interleaved round by
round so that load from other processes hits every path alike. Prints median seconds, ratios to the plain forward
and max |difference| to its output.

    python scripts/benchmark_inference.py                          # IMDN x4 at 320x180 (-> 1280x720)
    python scripts/benchmark_inference.py --all-archs --size 96x96 --repeats 3
    python scripts/benchmark_inference.py --compile --device cuda
"""
import argparse
import copy
import time

import torch

from lwsr_plugin.inference import Upscaler, _in_channels, load_model, network_options

ARCHS = {
    'IMDN': ({}, '/work/shared/anchors/imdn/checkpoints/IMDN_x4.pth'),
    'IMDN_RTC': ({}, None),
    'IDN': ({}, None),
    'DRN': ({}, None),
    'SLWSR': ({'variant': 'slwsr32'}, None),
}


def bench(arch, kwargs, ckpt, size, repeats, device, compile_):
    net = load_model(network_options(arch, 4 if arch != 'IMDN_RTC' else 2, kwargs), ckpt)
    x = torch.rand(1, _in_channels(net), *size, device=device)
    plain = net.to(device)
    # deep copies: the same (possibly random) weights on every path; Upscaler converts its copy in place
    paths = {'channels_last fp32': Upscaler(copy.deepcopy(plain), device),
             'bf16 + channels_last': Upscaler(copy.deepcopy(plain), device, precision='bf16')}
    if compile_:
        paths['compile + channels_last fp32'] = Upscaler(copy.deepcopy(plain), device, compile=True)
    runs = {'official NCHW fp32': lambda: plain(x).clamp(0, 1)}  # clamped as the official test saves it
    runs.update({name: (lambda up=up: up.run_tensor(x)) for name, up in paths.items()})
    outputs, times = {}, {name: [] for name in runs}
    with torch.inference_mode():
        for name, fn in runs.items():  # warm-up (and compile) outside the timing
            outputs[name] = fn().float()
        for _ in range(repeats):
            for name, fn in runs.items():
                if device.startswith('cuda'):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device.startswith('cuda'):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    base = sorted(times['official NCHW fp32'])[repeats // 2]
    ref = outputs['official NCHW fp32']
    print(f'{arch} x{plain.upscale}, input {size[1]}x{size[0]}, {repeats} repeats, {torch.get_num_threads()} threads:')
    for name in runs:
        med = sorted(times[name])[repeats // 2]
        delta = (outputs[name] - ref).abs().max().item()
        print(f'  {name:30s} {med * 1e3:9.1f} ms  ratio {med / base:5.2f}  max|delta| {delta:.2e}')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', default='320x180', help='LR input WxH (default 320x180 -> 720p at x4)')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--all-archs', action='store_true', help='every arch (random weights except IMDN)')
    p.add_argument('--compile', action='store_true', help='add a torch.compile path')
    p.add_argument('--device', default='cpu')
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split('x'))
    for arch in (ARCHS if args.all_archs else ['IMDN']):
        kwargs, ckpt = ARCHS[arch]
        bench(arch, kwargs, ckpt, (h, w), args.repeats, args.device, args.compile)


if __name__ == '__main__':
    main()
