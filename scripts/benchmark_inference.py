"""Inference speed of the plugin's paths against the official-style forward (issue 7), side by side in one run.

IMDN: the baseline is the official release's forward (NCHW fp32, op for op: its CCA computes the std with
sum/pow/sum and the mean with adaptive_avg_pool2d, ``torch.cat`` of the block outputs), run here on the same
weights. Other archs: the plain module, NCHW fp32. Every path runs round by round, interleaved, so load from other
processes hits all alike; median and min seconds, their ratios to the baseline's, max |difference| to its output.
The "conv floor" row replays only the network's convolutions (channels_last fp32) on pre-made inputs, and the
"single 3x3 conv" line gives the GMAC/s one 64->64 channels_last conv reaches: what fp32 can approach at best.

    python scripts/benchmark_inference.py                          # IMDN x4 at 320x180 (-> 1280x720)
    python scripts/benchmark_inference.py --all-archs --repeats 5  # every arch, table for the README
    python scripts/benchmark_inference.py --archs DRN SLWSR --size 160x90 --repeats 3   # the heavy ones, smaller
    python scripts/benchmark_inference.py --compile                # adds torch.compile paths (C++ compiler needed)
    python scripts/benchmark_inference.py --device cuda            # GPU: adds fp16, frames/s and peak memory

Checkpoint: ``--ckpt`` or the official IMDN_x4.pth in ../shared/anchors when present; random weights otherwise
(speed does not depend on the values).
"""
import argparse
import copy
import os
import time

import torch
import torch.nn.functional as F

from lwsr_plugin.inference import Upscaler, _in_channels, load_model, network_options

HERE = os.path.dirname(os.path.abspath(__file__))
IMDN_CKPT = os.path.join(HERE, '..', '..', 'shared', 'anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth')
ARCHS = {  # arch: (kwargs, scale)
    'IMDN': ({}, 4),
    'IMDN_RTC': ({}, 2),
    'IDN': ({}, 4),
    'DRN': ({}, 4),
    'SLWSR': ({'variant': 'slwsr32'}, 4),
}


def _conv(m, x):
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding)


def official_imdn_forward(net, x):
    """The official IMDN test-time forward, op for op, on this plugin's IMDN weights (NCHW fp32)."""

    def cca(layer, t):
        n = t.size(2) * t.size(3)
        mean = t.sum(3, keepdim=True).sum(2, keepdim=True) / n
        std = ((t - mean).pow(2).sum(3, keepdim=True).sum(2, keepdim=True) / n).pow(0.5)
        du = layer.conv_du
        gate = torch.sigmoid(_conv(du[2], F.relu(_conv(du[0], std + F.adaptive_avg_pool2d(t, 1)))))
        return t * gate

    def block(b, t):
        split = (b.distilled, b.remaining)
        d1, r = torch.split(F.leaky_relu(_conv(b.c1, t), 0.05, inplace=True), split, 1)
        d2, r = torch.split(F.leaky_relu(_conv(b.c2, r), 0.05, inplace=True), split, 1)
        d3, r = torch.split(F.leaky_relu(_conv(b.c3, r), 0.05, inplace=True), split, 1)
        return _conv(b.c5, cca(b.cca, torch.cat([d1, d2, d3, _conv(b.c4, r)], 1))) + t

    fea = _conv(net.fea_conv, x)
    outs, out = [], fea
    for i in range(1, net.num_block + 1):
        out = block(getattr(net, f'IMDB{i}'), out)
        outs.append(out)
    trunk = F.leaky_relu(_conv(net.c[0], torch.cat(outs, 1)), 0.05, inplace=True)
    return F.pixel_shuffle(_conv(net.upsampler[0], _conv(net.LR_conv, trunk) + fea), net.upscale)


def conv_floor(net, x):
    """The network's convolutions alone (channels_last fp32, fresh input per conv): a closure that replays them."""
    calls, orig, macs = [], F.conv2d, [0]

    def record(inp, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        out = orig(inp, weight, bias, stride, padding, dilation, groups)
        calls.append((torch.rand(inp.shape).contiguous(memory_format=torch.channels_last),
                      weight.float().contiguous(memory_format=torch.channels_last),
                      None if bias is None else bias.float(), stride, padding, dilation, groups))
        macs[0] += out.shape[0] * weight.numel() * out.shape[2] * out.shape[3]
        return out

    F.conv2d = record
    try:
        with torch.inference_mode():
            net(x)
    finally:
        F.conv2d = orig

    def replay():
        for c in calls:
            orig(*c)

    return replay, macs[0]


def single_conv_gmacs(size, repeats):
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.rand(1, 64, *size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x)
        best = min(_timed(lambda: conv(x), 'cpu') for _ in range(repeats))
    return 64 * 64 * 9 * size[0] * size[1] / best / 1e9


def _timed(fn, device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(arch, size, repeats, device, compile_, ckpt):
    kwargs, scale = ARCHS[arch]
    net = load_model(network_options(arch, scale, kwargs), ckpt if arch == 'IMDN' else None)
    x = torch.rand(1, _in_channels(net), *size)
    plain = copy.deepcopy(net).to(device)
    xd = x.to(device)
    base_name = 'official NCHW fp32' if arch == 'IMDN' else 'module NCHW fp32'
    runs = {base_name: (lambda: official_imdn_forward(plain, xd).clamp(0, 1)) if arch == 'IMDN' else
            (lambda: plain(xd).clamp(0, 1))}
    paths = {'channels_last fp32 (module)': Upscaler(copy.deepcopy(net), device, fast=False)}
    if arch == 'IMDN':
        paths['channels_last fp32 (FastIMDN)'] = Upscaler(copy.deepcopy(net), device)
    paths['bf16 + channels_last'] = Upscaler(copy.deepcopy(net), device, precision='bf16')
    if device.startswith('cuda'):
        paths['fp16 + channels_last'] = Upscaler(copy.deepcopy(net), device, precision='fp16')
    if compile_:
        paths['compile fp32'] = Upscaler(copy.deepcopy(net), device, compile=True)
        paths['compile bf16'] = Upscaler(copy.deepcopy(net), device, precision='bf16', compile=True)
    runs.update({name: (lambda up=up: up.run_tensor(xd)) for name, up in paths.items()})
    macs = None
    if device == 'cpu':
        replay, macs = conv_floor(net, x)
        runs['conv floor (convs only, fp32)'] = replay
    outputs, times = {}, {name: [] for name in runs}
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for name, fn in runs.items():  # warm-up (and compile) outside the timing
            outputs[name] = fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(_timed(fn, device))
    base = sorted(times[base_name])[repeats // 2]
    base_min = min(times[base_name])
    ref = outputs[base_name].float()
    print(f'{arch} x{scale}, input {size[1]}x{size[0]}, {repeats} rounds, {torch.get_num_threads()} threads, {device}'
          + (f', {macs / 1e9:.1f} GMACs of convs' if macs else '') + ':')
    print(f'  {"path":32s} {"median":>9s} {"min":>9s}  {"ratio":>5s} {"(min)":>5s}  max|delta|'
          + ('  GMAC/s' if macs else ''))
    for name in runs:
        ts = sorted(times[name])
        med = ts[repeats // 2]
        out = outputs[name]
        delta = f'{(out.float() - ref).abs().max().item():.2e}' if isinstance(out, torch.Tensor) else '       -'
        rate = f'   {macs / med / 1e9:6.1f}' if macs else ''
        print(f'  {name:32s} {med * 1e3:7.1f}ms {ts[0] * 1e3:7.1f}ms  {med / base:5.2f} {ts[0] / base_min:5.2f}  '
              f'{delta}{rate}')
        if device.startswith('cuda'):
            print(f'  {"":32s} {1 / med:7.1f} frames/s')
    if device.startswith('cuda'):
        print(f'  peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', default='320x180', help='LR input WxH (default 320x180 -> 720p at x4)')
    p.add_argument('--repeats', type=int, default=7, help='interleaved rounds (median reported)')
    p.add_argument('--all-archs', action='store_true', help='every arch (random weights except IMDN)')
    p.add_argument('--archs', nargs='+', choices=sorted(ARCHS), help='these archs')
    p.add_argument('--compile', action='store_true', help='add torch.compile paths')
    p.add_argument('--device', default='cpu')
    p.add_argument('--ckpt', default=IMDN_CKPT if os.path.isfile(IMDN_CKPT) else None, help='IMDN x4 checkpoint')
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split('x'))
    if args.device == 'cpu':
        print(f'single 64->64 3x3 conv, channels_last fp32, {w}x{h}: {single_conv_gmacs((h, w), args.repeats):.1f} '
              'GMAC/s (best of rounds)')
    for arch in (ARCHS if args.all_archs else args.archs or ['IMDN']):
        bench(arch, (h, w), args.repeats, args.device, args.compile, args.ckpt)


if __name__ == '__main__':
    main()
