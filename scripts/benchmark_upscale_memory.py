"""Peak memory of ``lwsr-upscale`` on large photos, against the bound of its streaming tiler.

A real HR photo (Urban100 ``img_002`` by default) is resized up with cv2 to each input size; every case is a fresh
``lwsr-upscale`` process (``--tile 256``, CPU), and its peak RSS is the kernel's ``ru_maxrss`` of that process
(``os.wait4``). The bound is 1 GiB + 4 bytes per output pixel: the process, torch and the network's windows in the
first, the 8-bit RGB output (3 bytes per pixel) in the second. A watchdog reads the process's RSS every 50 ms and
stops it past ``--limit-mib`` (and its address space is capped 6 GiB above that), so that no case can take the machine's
memory. A case of the largest size whose time, estimated from the last size measured, would pass ``--max-case-s``
runs the cheaper network of ``--cheap`` instead, and its row says so.

Prints a Markdown table (case, output MP, peak RSS MiB, target MiB, within target, seconds) after one line naming the
machine and the command.

    python scripts/benchmark_upscale_memory.py                       # 12, 48 and 384 MP outputs
    python scripts/benchmark_upscale_memory.py --sizes 1000x750 --precisions fp32 --stats image
"""
import argparse
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('LWSR_SHARED', os.path.join(os.path.dirname(REPO), 'shared'))
MIB = 2**20
# the three outputs of the table at x4: 12, 48 and 384 MP
DEFAULT_SIZES = '1000x750,2000x1500,6000x4000'
# same family and attention layers as IMDN (so --tile-stats image still runs two passes), a quarter of its width
# and one block: for output sizes that the full network would take hours to compute on a small CPU
CHEAP = '--arch IMDN --scale 4 --arch-kwarg num_feat=16 --arch-kwarg num_block=1'


def target_mib(out_pixels):
    """The bound: 1 GiB + 4 bytes per output pixel, in MiB."""
    return 1024 + 4 * out_pixels / MIB


def make_input(photo, w, h, folder):
    """The photo resized (cv2 bicubic) to ``w`` x ``h``, written once as PNG under ``folder``."""
    import cv2
    path = os.path.join(folder, f'photo_{w}x{h}.png')
    if not os.path.exists(path):
        img = cv2.imread(photo, cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f'cannot read {photo}')
        cv2.imwrite(path, cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return path


def rss_kib(pid):
    """Resident set of a running process (KiB), 0 once it is gone."""
    try:
        with open(f'/proc/{pid}/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))
    except (OSError, StopIteration, ValueError):
        return 0


def run_case(cmd, limit_mib, timeout_s):
    """Runs ``cmd``; returns (peak RSS MiB, seconds, why it stopped early or None, last stderr line)."""
    def cap():  # address space: the RSS limit + 6 GiB (torch maps about 3.5 GB that it never touches)
        resource.setrlimit(resource.RLIMIT_AS, ((limit_mib + 6144) * MIB,) * 2)

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=cap)
    stopped = []

    def watch():
        while proc.poll() is None:
            if rss_kib(proc.pid) > limit_mib * 1024:
                stopped.append(f'stopped at {limit_mib} MiB RSS')
                proc.kill()
                return
            if time.perf_counter() - start > timeout_s:
                stopped.append(f'stopped after {timeout_s} s')
                proc.kill()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    err = proc.stderr.read().decode(errors='replace')  # the progress bars: read as they come, never blocking
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    watcher.join()
    last = err.replace('\r', '\n').strip().splitlines()[-1:] or ['']
    if not stopped and proc.returncode != 0:
        stopped.append(f'exit {proc.returncode}')
    return usage.ru_maxrss / 1024, seconds, (stopped or [None])[0], last[0]


def idle_torch_mib():
    """Peak RSS of a process that only imports torch (the floor under every case)."""
    proc = subprocess.Popen([sys.executable, '-c', 'import torch'])
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--photo', default=os.path.join(SHARED, 'datasets', 'Urban100', 'HR', 'img_002.png'))
    p.add_argument('--sizes', default=DEFAULT_SIZES, help='input sizes WxH, comma-separated, ascending')
    p.add_argument('--precisions', default='fp32,bf16')
    p.add_argument('--stats', default='image,tile', help='--tile-stats values')
    p.add_argument('--model', default='--arch IMDN --scale 4 --ckpt '
                   + os.path.join(SHARED, 'anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth'))
    p.add_argument('--scale', type=int, default=4, help='the scale of --model and --cheap')
    p.add_argument('--cheap', default=CHEAP, help='network for the largest size when estimated past --max-case-s')
    p.add_argument('--tile', type=int, default=256)
    p.add_argument('--tile-batch', type=int, default=None,
                   help="windows per forward (default: the command's own choice, one 272x272 window on a CPU)")
    p.add_argument('--max-case-s', type=float, default=600, help='longest estimated case for --model')
    p.add_argument('--limit-mib', type=int, default=6144, help='watchdog: stop a case past this RSS')
    p.add_argument('--timeout-s', type=int, default=3600)
    p.add_argument('--work', help='folder for inputs and outputs (default: a temporary one)')
    args = p.parse_args(argv)

    import cv2

    from lwsr_plugin.ops.device import machine_line
    exe = os.path.join(os.path.dirname(sys.executable), 'lwsr-upscale')
    base = [exe] if os.path.exists(exe) else [sys.executable, '-m', 'lwsr_plugin.cli.upscale']
    work = args.work or tempfile.mkdtemp(prefix='upscale_memory_')
    os.makedirs(work, exist_ok=True)
    sizes = [tuple(int(v) for v in s.lower().split('x')) for s in args.sizes.split(',')]
    common = ['--tile', str(args.tile)] + (['--tile-batch', str(args.tile_batch)] if args.tile_batch else [])
    common += ['--device', 'cpu', '--overwrite']
    # the floors: a process that only imports torch, and the command on a 32x32 crop (untiled, no output to speak of)
    tiny = os.path.join(work, 'photo_32x32_crop.png')
    cv2.imwrite(tiny, cv2.imread(args.photo, cv2.IMREAD_COLOR)[:32, :32])
    idle_cmd, _, _, _ = run_case(base + [tiny, '-o', os.path.join(work, 'out_tiny')] + shlex.split(args.model) + common,
                                 args.limit_mib, args.timeout_s)
    print(f'{machine_line(sys.argv if argv is None else [__file__] + list(argv))} Each case: '
          f'`lwsr-upscale <photo WxH> -o <dir> {args.model} {" ".join(common)} [--bf16] --tile-stats <s>`; '
          f'peak RSS = ru_maxrss of the process; floors: `import torch` alone {idle_torch_mib():.0f} MiB, the '
          f'command on a 32x32 image {idle_cmd:.0f} MiB.')
    print()
    print('| case | output MP | peak RSS MiB | target MiB | within target | seconds |')
    print('|---|---:|---:|---:|---|---:|')
    seconds_per_mp = {}  # (precision, stats) -> seconds per output MP of the last size measured with --model
    for w, h in sizes:
        photo = make_input(args.photo, w, h, work)
        for precision in args.precisions.split(','):
            for stats in args.stats.split(','):
                out_mp = w * h * args.scale**2 / 1e6
                model, label = args.model, ''
                rate = seconds_per_mp.get((precision, stats))
                if (w, h) == sizes[-1] and rate is not None and rate * out_mp > args.max_case_s:
                    model = args.cheap
                    label = f', cheaper net `{args.cheap}` (est. {rate * out_mp / 60:.0f} min with the full one)'
                cmd = base + [photo, '-o', os.path.join(work, f'out_{precision}_{stats}')] + shlex.split(model)
                cmd += common + (['--bf16'] if precision == 'bf16' else []) + ['--tile-stats', stats]
                peak, seconds, stopped, last = run_case(cmd, args.limit_mib, args.timeout_s)
                if model == args.model and stopped is None:
                    seconds_per_mp[(precision, stats)] = seconds / out_mp
                bound = target_mib(w * h * args.scale**2)
                within = stopped or ('yes' if peak <= bound else 'NO')
                case = f'{w}x{h} x{args.scale}, {precision}, --tile-stats {stats}{label}'
                print(f'| {case} | {out_mp:.0f} | {peak:.0f} | {bound:.0f} | {within} | {seconds:.0f} |', flush=True)
                if stopped:
                    print(f'<!-- {stopped}: {last} -->', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
