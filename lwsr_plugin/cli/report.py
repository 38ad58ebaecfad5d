"""``lwsr-report``: parameters, MACs, latency and memory of every plugin arch/variant/scale, beside the papers' numbers;
``lwsr-report --plot results.csv``: a PSNR-vs-parameters figure (IMDN Fig. 6 style) from a results file.

- **Parameters**: trainable and non-trainable parameters of the network (buffers excluded).
- **MACs**: multiply-accumulates of every ``Conv2d`` (output pixels x k_h x k_w x C_in/groups per output channel) and
  ``ConvTranspose2d`` (input pixels x k_h x k_w x C_out/groups per input channel), counted with forward hooks on a
  24x24 LR input and scaled to a 1280x720 output (the convention of IMDN Table 7 and s-LWSR's Multi-Adds; conv MACs
  are linear in the output pixel count). Not counted: bias adds, activations, element-wise additions and
  multiplications (residuals, CCA scaling), pooling/statistics (CCA's mean and std), pixel shuffle, mean shift and
  IDN's bicubic skip.
- **CPU latency**: median of ``--repeats`` forwards (after one warm-up) on a ``--lr-size`` square LR input with
  ``--threads`` torch threads; **CPU peak memory**: growth of the process' peak resident set during those forwards
  (each model is measured in a fresh subprocess so the numbers do not mix).
- **GPU** (when CUDA is present): median latency (synchronised) and ``torch.cuda.max_memory_allocated`` for a
  1280x720 output.
"""
import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HR_PIXELS_720P = 1280 * 720
MAC_PROBE = 24  # LR side of the MAC-counting forward; MACs per output pixel do not depend on it

# key: (label, network_g options without upscale, scales, paper params per scale, paper MACs (G) at 720p per scale)
# Paper params: IMDN §4 / Table 3, IDN (IMDN Table 7 compares 553K), s-LWSR Table II. Paper MACs: IMDN Table 7
# (per-HR-pixel K x 1280 x 720), s-LWSR Table II Multi-Adds (x4 only). DRN gives neither.
MODELS = {
    'IMDN': ('IMDN', {'type': 'IMDN'}, (2, 3, 4), {2: 694e3, 3: 703e3, 4: 715e3},
             {s: k * 1e3 * HR_PIXELS_720P / 1e9 for s, k in ((2, 173), (3, 78), (4, 45))}),
    'IMDN_AS': ('IMDN_AS (any scale, x4 input size)', {'type': 'IMDN_AS'}, (4, ), {}, {}),
    'IMDN_RTC': ('IMDN_RTC', {'type': 'IMDN_RTC'}, (2, ), {}, {}),
    'IDN': ('IDN (Y)', {'type': 'IDN'}, (2, 3, 4), {2: 553e3, 3: 553e3, 4: 553e3},
            {s: k * 1e3 * HR_PIXELS_720P / 1e9 for s, k in ((2, 175), (3, 75), (4, 51))}),
    'DRN': ('DRN', {'type': 'DRN', 'variant': 'DRN'}, (2, 3, 4), {}, {}),
    'DRN+': ('DRN+', {'type': 'DRN', 'variant': 'DRN+'}, (2, 3, 4), {}, {}),
    'sLWSR16': ('s-LWSR16', {'type': 'SLWSR', 'variant': 'slwsr16'}, (2, 3, 4), {4: 144e3}, {4: 8.3}),
    'sLWSR32': ('s-LWSR32', {'type': 'SLWSR', 'variant': 'slwsr32'}, (2, 3, 4), {4: 571e3}, {4: 32.9}),
    'sLWSR64': ('s-LWSR64', {'type': 'SLWSR', 'variant': 'slwsr64'}, (2, 3, 4), {4: 2277e3}, {4: 131.1}),
    'sLWSR32C': ('s-LWSR32C', {'type': 'SLWSR', 'variant': 'slwsr32c'}, (4, ), {4: 124e3}, {}),
}

FIELDS = ['model', 'scale', 'params', 'paper_params', 'macs_720p_G', 'paper_macs_720p_G', 'cpu_ms', 'cpu_peak_MB',
          'gpu_ms_720p', 'gpu_peak_MB_720p']


def build(key, scale):
    """The network of ``MODELS[key]`` at ``scale`` through BasicSR's ARCH_REGISTRY (as a YAML would build it)."""
    import lwsr_plugin  # noqa: F401  (registration)
    from basicsr.archs import build_network
    opt = dict(MODELS[key][1])
    if key != 'IMDN_AS':
        opt['upscale'] = scale
    return build_network(opt).eval()


def count_macs(net, lr_shape):
    """MACs of one forward on a zero input of ``lr_shape`` (N, C, H, W): Conv2d and ConvTranspose2d only (see the
    module docstring); returns (macs, output tensor)."""
    import torch
    total = [0]

    def conv_hook(m, inputs, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def deconv_hook(m, inputs, out):
        total[0] += inputs[0].numel() * (m.out_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    handles = []
    for m in net.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            handles.append(m.register_forward_hook(deconv_hook))
        elif isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
    try:
        with torch.no_grad():
            out = net(torch.zeros(lr_shape))
    finally:
        for h in handles:
            h.remove()
    return total[0], out


def _rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _timed(fn, repeats, sync=lambda: None):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def measure(key, scale, lr_size, repeats, threads):
    """One row of the report for ``MODELS[key]`` at ``scale`` (run in a fresh process by ``main``)."""
    import torch

    from lwsr_plugin.archs.blocks import count_parameters
    torch.set_num_threads(threads)
    net = build(key, scale)
    in_ch = 1 if MODELS[key][1]['type'] == 'IDN' else 3
    lr = MAC_PROBE * scale if key == 'IMDN_AS' else MAC_PROBE  # IMDN_AS takes the image at its output size
    macs, out = count_macs(net, (1, in_ch, lr, lr))
    row = {'model': MODELS[key][0], 'scale': scale, 'params': count_parameters(net),
           'paper_params': MODELS[key][3].get(scale), 'macs_720p_G': macs / out[0, 0].numel() * HR_PIXELS_720P / 1e9,
           'paper_macs_720p_G': MODELS[key][4].get(scale)}
    side = lr_size * scale if key == 'IMDN_AS' else lr_size
    x = torch.rand(1, in_ch, side, side)
    base = _rss_mb()
    with torch.no_grad():
        row['cpu_ms'] = _timed(lambda: net(x), repeats)
    row['cpu_peak_MB'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    if torch.cuda.is_available():
        net = net.cuda()
        h, w = (720, 1280) if key == 'IMDN_AS' else (-(-720 // scale), -(-1280 // scale))
        x = torch.rand(1, in_ch, h, w, device='cuda')
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            row['gpu_ms_720p'] = _timed(lambda: net(x), max(repeats, 5), torch.cuda.synchronize)
        row['gpu_peak_MB_720p'] = torch.cuda.max_memory_allocated() / 2**20
    return row


def _fmt(value, kind):
    if value is None or value == '':
        return '-'
    if kind == 'params':
        return f'{value / 1e3:,.1f}K' if value < 1e6 else f'{value / 1e6:.2f}M'
    return f'{value:,.1f}'


def markdown(rows, lr_size, repeats, threads):
    """The report as a Markdown table with a note of the machine and the measurement settings."""
    import platform

    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'
    lines = [
        f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, torch '
        f'{torch.__version__}, {threads} torch threads; GPU: {gpu}.',
        f'CPU latency: median of {repeats} forwards on a {lr_size}x{lr_size} LR input (output {lr_size}*scale '
        'square); MACs: Conv2d + ConvTranspose2d only, for a 1280x720 output.', '',
        '| model | scale | params | paper params | MACs 720p (G) | paper MACs (G) | CPU ms | CPU peak MB | GPU ms 720p '
        '| GPU peak MB 720p |', '|' + '---|' * 10]
    for r in rows:
        lines.append('| ' + ' | '.join([
            r['model'], f"x{r['scale']}", _fmt(r['params'], 'params'), _fmt(r['paper_params'], 'params'),
            _fmt(r['macs_720p_G'], 'g'), _fmt(r['paper_macs_720p_G'], 'g'), _fmt(r['cpu_ms'], 'g'),
            _fmt(r['cpu_peak_MB'], 'g'), _fmt(r.get('gpu_ms_720p'), 'g'), _fmt(r.get('gpu_peak_MB_720p'), 'g')]) + ' |')
    return '\n'.join(lines) + '\n'


def plot_results(results_csv, out_png, title='PSNR vs. parameters'):
    """Scatter of PSNR against parameters (log axis), one labelled point per row of ``results_csv``
    (columns ``name, params, psnr``; ``params`` as a count, e.g. 715176)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    with open(results_csv, newline='', encoding='utf-8') as f:
        rows = [r for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f'{results_csv}: no rows (expected columns name, params, psnr).')
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in rows:
        x, y = float(r['params']) / 1e3, float(r['psnr'])
        ax.scatter(x, y, s=36)
        ax.annotate(r['name'], (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax.set_xscale('log')
    ax.set_xlabel('parameters (K)')
    ax.set_ylabel('PSNR (dB)')
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='results/model_report', help='folder for report.md and report.csv')
    parser.add_argument('--models', default=','.join(MODELS), help=f'comma-separated subset of {",".join(MODELS)}')
    parser.add_argument('--scales', default='2,3,4', help='comma-separated scales')
    parser.add_argument('--lr-size', type=int, default=32, help='LR side of the CPU latency input')
    parser.add_argument('--repeats', type=int, default=3, help='timed forwards per model (median)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--plot', metavar='RESULTS_CSV', help='only draw PSNR vs params from a CSV (name,params,psnr)')
    parser.add_argument('--plot-out', default=None, help='PNG path for --plot (default: <out>/psnr_vs_params.png)')
    parser.add_argument('--one', help=argparse.SUPPRESS)  # internal: KEY:SCALE, measured in this process
    args = parser.parse_args(argv)

    if args.one:
        key, scale = args.one.rsplit(':', 1)
        print(json.dumps(measure(key, int(scale), args.lr_size, args.repeats, args.threads)))
        return
    os.makedirs(args.out, exist_ok=True)
    if args.plot:
        png = plot_results(args.plot, args.plot_out or os.path.join(args.out, 'psnr_vs_params.png'))
        print(f'wrote {png}')
        return

    from tqdm import tqdm
    keys = [k for k in args.models.split(',') if k]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f'unknown models {unknown}; choose from {list(MODELS)}')
    scales = {int(s) for s in args.scales.split(',')}
    jobs = [(k, s) for k in keys for s in MODELS[k][2] if s in scales]
    rows = []
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for key, scale in tqdm(jobs, desc='lwsr-report', unit='model'):
        cmd = [sys.executable, '-m', 'lwsr_plugin.cli.report', '--one', f'{key}:{scale}', '--lr-size',
               str(args.lr_size), '--repeats', str(args.repeats), '--threads', str(args.threads)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f'{key} x{scale} failed:\n{proc.stderr[-3000:]}')
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    with open(os.path.join(args.out, 'report.csv'), 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in FIELDS} for r in rows)
    md = markdown(rows, args.lr_size, args.repeats, args.threads)
    md += f'\nGenerated by `lwsr-report` in {time.time() - start:.0f} s.\n'
    with open(os.path.join(args.out, 'report.md'), 'w', encoding='utf-8') as f:
        f.write(md)
    print(md)


if __name__ == '__main__':
    main()
