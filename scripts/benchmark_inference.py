"""Inference speed of every arch's paths against its baseline, side by side in one run.

Baselines: IMDN's is the official release's forward (NCHW fp32, op for op: its CCA computes the std with
sum/pow/sum and the mean with adaptive_avg_pool2d, ``torch.cat`` of the block outputs), run here on the same
weights; every other arch's is its plain module, NCHW fp32 (IMDN_RTC's and s-LWSR's modules are their official
graphs, op for op; IDN's official release is Caffe, DRN has none). Every path runs round by round, interleaved, so
load from other processes hits all alike; median and min times, their ratios to the baseline's, max |difference| to
its output. Also timed in the same rounds: "conv floor", only the network's convolutions (channels_last fp32, fresh
inputs), and one 64->64 3x3 channels_last fp32 conv on a map of the LR size, whose GMAC/s is the reference the
network's rates are given against ("% conv": MACs of the network's convolutions / time / that rate).

    python scripts/benchmark_inference.py                          # IMDN x4, 1280x720 output
    python scripts/benchmark_inference.py --all-archs --repeats 3  # every arch and scale of the fast forms
    python scripts/benchmark_inference.py --archs DRN SLWSR64 --size 160x90 --repeats 3   # smaller LR input
    python scripts/benchmark_inference.py --compile                # adds torch.compile paths (C++ compiler needed)
    python scripts/benchmark_inference.py --device cuda            # GPU: fp16, CUDA graphs, frames/s, peak memory

Weights: the official checkpoints in ../shared/anchors when present (IMDN x2/x3/x4, IMDN_RTC, IDN caffemodels,
s-LWSR32's 1-epoch release checkpoint); random weights otherwise (speed does not depend on the values).
"""
import argparse
import copy
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from lwsr_plugin.ops.device import bf16_native, machine_line
from lwsr_plugin.inference import Upscaler, _in_channels, load_model, network_options

HERE = os.path.dirname(os.path.abspath(__file__))
ANCHORS = os.path.join(HERE, '..', '..', 'shared', 'anchors')
# label: (arch, kwargs, scale, checkpoint under ANCHORS or None)
CASES = {
    'IMDN_x2': ('IMDN', {}, 2, 'imdn/checkpoints/IMDN_x2.pth'),
    'IMDN_x3': ('IMDN', {}, 3, 'imdn/checkpoints/IMDN_x3.pth'),
    'IMDN_x4': ('IMDN', {}, 4, 'imdn/checkpoints/IMDN_x4.pth'),
    'IMDN_RTC_x2': ('IMDN_RTC', {}, 2, 'imdn/checkpoints/model_RTC.pth'),
    'IDN_x2': ('IDN', {}, 2, 'idn/IDN_x2.caffemodel'),
    'IDN_x3': ('IDN', {}, 3, 'idn/IDN_x3.caffemodel'),
    'IDN_x4': ('IDN', {}, 4, 'idn/IDN_x4.caffemodel'),
    'DRN_x4': ('DRN', {}, 4, None),
    'SLWSR16_x4': ('SLWSR', {'variant': 'slwsr16'}, 4, None),
    'SLWSR32_x4': ('SLWSR', {'variant': 'slwsr32'}, 4, 'slwsr/slwsr32_x4_repo_1epoch_model_best.pt'),
    'SLWSR64_x4': ('SLWSR', {'variant': 'slwsr64'}, 4, None),
}
ALIASES = {'IMDN': 'IMDN_x4', 'IMDN_RTC': 'IMDN_RTC_x2', 'IDN': 'IDN_x4', 'DRN': 'DRN_x4', 'SLWSR': 'SLWSR32_x4',
           'SLWSR16': 'SLWSR16_x4', 'SLWSR32': 'SLWSR32_x4', 'SLWSR64': 'SLWSR64_x4'}
BASE = 'baseline'
CONV = 'one 64->64 3x3 conv'


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


def conv_macs(net, x):
    """MACs of the network's Conv2d / ConvTranspose2d calls on ``x``, and a closure replaying the convs alone
    (channels_last fp32, pre-made random inputs)."""
    calls, macs = [], [0]

    def hook(m, inputs, out):
        inp = inputs[0]
        if isinstance(m, torch.nn.ConvTranspose2d):
            macs[0] += inp.numel() * m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            calls.append((F.conv_transpose2d, m, torch.rand(inp.shape).contiguous(memory_format=torch.channels_last)))
        else:
            macs[0] += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            calls.append((F.conv2d, m, torch.rand(inp.shape).contiguous(memory_format=torch.channels_last)))

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            net(x)
    finally:
        for h in handles:
            h.remove()
    prepared = [(fn, m.weight.float().contiguous(memory_format=torch.channels_last),
                 None if m.bias is None else m.bias.float(), m.stride, m.padding, m.dilation, m.groups, inp)
                for fn, m, inp in calls]

    def replay():
        for fn, w, b, stride, padding, dilation, groups, inp in prepared:
            if fn is F.conv2d:
                fn(inp, w, b, stride, padding, dilation, groups)
            else:
                fn(inp, w, b, stride, padding, 0, groups, dilation)

    return replay, macs[0]


def _timed(fn, cuda):
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def load_case(label):
    arch, kwargs, scale, ckpt = CASES[label]
    path = os.path.join(ANCHORS, ckpt) if ckpt else None
    if path and not os.path.isfile(path):
        path = None
    if path and path.endswith('.caffemodel'):
        from lwsr_plugin.convert.caffe_idn import convert_idn_caffemodel
        state, extra = convert_idn_caffemodel(path, scale)
        net = load_model(network_options(arch, scale, dict(kwargs, **extra)))
        net.load_state_dict(state, strict=True)
        return net.eval(), path
    return load_model(network_options(arch, scale, kwargs), path), path


def lr_size(label, size):
    """(H, W) of the LR input: ``size`` ('WxH') or the one whose output is 1280x720 (rounded up)."""
    if size:
        w, h = (int(v) for v in size.split('x'))
        return h, w
    scale = CASES[label][2]
    return -(-720 // scale), -(-1280 // scale)


def bench(label, size, repeats, device, compile_):
    net, ckpt = load_case(label)
    arch, _, scale, _ = CASES[label]
    cuda = device.startswith('cuda')
    h, w = lr_size(label, size)
    x = torch.rand(1, _in_channels(net), h, w, generator=torch.Generator().manual_seed(0))
    xd = x.to(device)
    plain = copy.deepcopy(net).to(device)
    runs = {BASE: (lambda: official_imdn_forward(plain, xd).clamp(0, 1)) if arch == 'IMDN' else
            (lambda: plain(xd).clamp(0, 1))}
    graphs = dict(cuda_graphs=False)
    bf16 = bf16_native(torch.device(device))  # elsewhere bf16 is emulated, slower than fp32: no bf16 column
    paths = {'module, channels_last fp32': Upscaler(copy.deepcopy(net), device, fast=False, **graphs),
             'fast, channels_last fp32': Upscaler(copy.deepcopy(net), device, **graphs)}
    if bf16:
        paths['fast, bf16 + channels_last'] = Upscaler(copy.deepcopy(net), device, precision='bf16', **graphs)
    if cuda:
        paths['fast, fp16 + channels_last'] = Upscaler(copy.deepcopy(net), device, precision='fp16', **graphs)
        if bf16:
            paths['fast, bf16 + CUDA graphs'] = Upscaler(copy.deepcopy(net), device, precision='bf16')
        paths['fast, fp16 + CUDA graphs'] = Upscaler(copy.deepcopy(net), device, precision='fp16')
    if compile_:
        paths['compile fp32'] = Upscaler(copy.deepcopy(net), device, compile=True)
        if bf16:
            paths['compile bf16'] = Upscaler(copy.deepcopy(net), device, precision='bf16', compile=True)
    runs.update({name: (lambda up=up: up.run_tensor(xd)) for name, up in paths.items()})
    replay, macs = conv_macs(net, x)
    single_macs = 64 * 64 * 9 * h * w
    if not cuda:
        runs['conv floor (convs only, fp32)'] = replay
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
        fmap = torch.rand(1, 64, h, w).contiguous(memory_format=torch.channels_last)
        runs[CONV] = lambda: conv(fmap)
    outputs, times, peaks = {}, {name: [] for name in runs}, {}
    with torch.inference_mode():
        for name, fn in runs.items():  # warm-up (and compile / graph capture) outside the timing
            outputs[name] = fn()
            if cuda:
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fn()
                torch.cuda.synchronize()
                peaks[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(_timed(fn, cuda))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    low = {name: min(ts) for name, ts in times.items()}
    single_rate = single_macs / med[CONV] / 1e9 if CONV in med else None
    ref = outputs[BASE].float()
    out_h, out_w = ref.shape[-2:]
    print(f'\n{label} ({arch} x{scale}), LR {w}x{h} -> {out_w}x{out_h}, {repeats} rounds, {torch.get_num_threads()} '
          f'threads, {device}, {macs / 1e9:.1f} GMACs of convs, weights: '
          + (os.path.basename(ckpt) if ckpt else 'random'))
    print(f'  {"path":32s} {"median":>9s} {"min":>9s}  {"ratio":>5s} {"(min)":>5s}  max|delta|  GMAC/s  % conv'
          + ('  frames/s  peak MiB' if cuda else ''))
    rows = {}
    for name in runs:
        if name == CONV:
            print(f'  {name:32s} {med[name] * 1e3:7.1f}ms {low[name] * 1e3:7.1f}ms  {"":5s} {"":5s}  {"-":>10s}  '
                  f'{single_rate:6.1f}  (reference)')
            continue
        rate = macs / med[name] / 1e9
        share = f'{100 * rate / single_rate:5.0f}%' if single_rate else '     -'
        out = outputs[name]
        delta = f'{(out.float() - ref).abs().max().item():.2e}' if isinstance(out, torch.Tensor) else '         -'
        ratio, ratio_min = med[name] / med[BASE], low[name] / low[BASE]
        extra = f'  {1 / med[name]:8.1f}  {peaks[name]:9.0f}' if cuda else ''
        print(f'  {name:32s} {med[name] * 1e3:7.1f}ms {low[name] * 1e3:7.1f}ms  {ratio:5.2f} {ratio_min:5.2f}  '
              f'{delta:>10s}  {rate:6.1f}  {share}{extra}')
        rows[name] = dict(ms=med[name] * 1e3, ratio=ratio, ratio_min=ratio_min, rate=rate, share=share.strip(),
                          delta=delta, fps=1 / med[name], peak=peaks.get(name))
    return dict(label=label, arch=arch, scale=scale, lr=(w, h), out=(out_w, out_h), rows=rows,
                single_rate=single_rate, weights='official' if ckpt else 'random')


def markdown(results, device, repeats, keep_memory=False):
    """The README table: one row per case, ratios of medians to the baseline (of minimums in brackets)."""
    cuda = device.startswith('cuda')
    lines = [machine_line([__file__] + sys.argv[1:], gpu=device if cuda else None)
             + f' Device {device}; {repeats} interleaved rounds'
             + ('; glibc keeps freed memory (--keep-memory)' if keep_memory else '')
             + ('' if bf16_native(torch.device(device)) else '; no native bf16 here (bf16 slower than fp32), no bf16 column')
             + '.', '']
    if cuda:
        lines += ['| arch | baseline | fast fp32 | fast bf16 | fast fp16 | bf16 + graphs fps | fp16 + graphs fps '
                  '| peak MiB (fp16 graphs) |', '|---|---|---|---|---|---|---|---|']
    else:
        lines += ['| arch (LR -> output) | baseline | module channels_last | **fast fp32** (max abs diff) | '
                  '**fast bf16** | convs alone | fast fp32 GMAC/s (% of one 64->64 conv) |',
                  '|---|---|---|---|---|---|---|']
    for r in results:
        rows = r['rows']

        def ratio(name):
            row = rows.get(name)
            return '-' if row is None else f"{row['ratio']:.2f} ({row['ratio_min']:.2f})"

        head = f"{r['label']} ({r['lr'][0]}x{r['lr'][1]} -> {r['out'][0]}x{r['out'][1]}, {r['weights']} weights)"
        base = f"{rows[BASE]['ms']:.0f} ms" + (' official fwd' if r['arch'] == 'IMDN' else '')
        if cuda:
            g16, gb = rows.get('fast, fp16 + CUDA graphs'), rows.get('fast, bf16 + CUDA graphs')
            gb_fps = f"{gb['fps']:.0f}" if gb else '-'
            lines.append(f"| {head} | {base} | {ratio('fast, channels_last fp32')} | "
                         f"{ratio('fast, bf16 + channels_last')} | {ratio('fast, fp16 + channels_last')} | "
                         f"{gb_fps} | {g16['fps']:.0f} | {g16['peak']:.0f} |")
        else:
            fast = rows['fast, channels_last fp32']
            lines.append(f"| {head} | {base} | {ratio('module, channels_last fp32')} | "
                         f"{ratio('fast, channels_last fp32')} ({fast['delta']}) | "
                         f"{ratio('fast, bf16 + channels_last')} | {ratio('conv floor (convs only, fp32)')} | "
                         f"{fast['rate']:.1f} ({fast['share']} of {r['single_rate']:.1f}) |")
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', help='LR input WxH for every case (default: the input of a 1280x720 output)')
    p.add_argument('--repeats', type=int, default=5, help='interleaved rounds (median reported)')
    p.add_argument('--all-archs', action='store_true', help='every case: ' + ', '.join(CASES))
    p.add_argument('--archs', nargs='+', choices=sorted(set(CASES) | set(ALIASES)), help='these cases')
    p.add_argument('--compile', action='store_true', help='add torch.compile paths')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--keep-memory', action='store_true',
                   help='glibc keeps freed memory (lwsr-upscale\'s CPU setting; every path, baseline included): '
                        'no page faults on large activations')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_memory:
        from lwsr_plugin.fast.kernels import keep_freed_memory
        print(f'keep_freed_memory: {keep_freed_memory()}')
    labels = list(CASES) if args.all_archs else [ALIASES.get(a, a) for a in (args.archs or ['IMDN_x4'])]
    results = [bench(label, args.size, args.repeats, args.device, args.compile) for label in labels]
    print('\n' + markdown(results, args.device, args.repeats, args.keep_memory))


if __name__ == '__main__':
    main()
