"""What a network costs to run, measured as ``lwsr-report`` defines it (its ``--help`` states the definitions):
parameters, multiply-accumulates of its convolutions, wall-clock and processor time per forward, and the peak
memory of the tensors a forward allocates, on the CPU and on a CUDA device.

The module imports neither torch nor BasicSR until a measurement runs: ``lwsr-report --help`` builds its parser from
the constants here without them.
"""
import os
import statistics
import sys
import time

HR_PIXELS_720P = 1280 * 720
MAC_PROBE = 24  # LR side of the MAC-counting forward; MACs per output pixel do not depend on it
LONG_FORWARD_MS = 10_000  # a first forward this long counts as a timed one (see measure_network)
MIN_SPREAD = 3  # timed forwards an interquartile range needs: the "range" of one or two samples is no spread
TIME_CAP_S = 10.0  # default seconds of timed forwards per network


def count_macs(net, lr_shape):
    """MACs of one forward on a zero input of ``lr_shape`` (N, C, H, W): Conv2d (output pixels x k_h x k_w x
    C_in/groups per output channel) and ConvTranspose2d (input pixels x k_h x k_w x C_out/groups per input channel)
    only; returns (macs, output tensor)."""
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


def planned_repeats(repeats, first_ms, cap_s):
    """Timed forwards of a network whose first (memory-measuring) forward took ``first_ms``: ``repeats`` where that
    many fit in ``cap_s`` seconds, each estimated at ``first_ms`` (the slowest forward: it bears the one-time costs);
    else as many as fit, and where that is fewer than ``MIN_SPREAD`` (of ``repeats`` >= ``MIN_SPREAD``) one: two
    samples give no spread either and would cost a slow forward more."""
    fit = max(int(cap_s * 1e3 // max(first_ms, 1e-3)), 1)
    n = min(repeats, fit)
    return 1 if n < MIN_SPREAD <= repeats else n


def time_forwards(fn, warmup, repeats, sync=None, first=None):
    """Wall-clock ``{'median', 'min', 'p25', 'p75'}`` in ms of ``repeats`` calls of ``fn`` after ``warmup`` untimed
    ones (``p25``/``p75`` None for fewer than ``MIN_SPREAD`` calls), ``'runs'``: the number of timed calls, and
    ``'cpu_time'``: the median processor time (ms) the process used per call, all its threads. ``first``: (wall ms,
    processor ms) of a call made before, counted as the first of the ``repeats``."""
    for _ in range(warmup):  # first calls at a new size build oneDNN primitives and grow the allocator's pools
        fn()
    times, cpu_times = ([first[0]], [first[1]]) if first else ([], [])
    for _ in range(repeats - len(times)):
        if sync:
            sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - start) * 1e3)
        cpu_times.append((time.process_time() - cpu_start) * 1e3)
    p25 = p75 = None
    if len(times) >= MIN_SPREAD:
        p25, _, p75 = statistics.quantiles(times, n=4, method='inclusive')
    return {'median': statistics.median(times), 'min': min(times), 'p25': p25, 'p75': p75, 'runs': len(times),
            'cpu_time': statistics.median(cpu_times)}


class _StderrFdSilenced:
    """Sends file descriptor 2 to /dev/null for the duration of a ``with`` block."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


def cpu_peak_bytes(fn):
    """Peak bytes held by tensors allocated through torch's CPU allocator while ``fn()`` runs, above what was held
    when it started (so tensors that existed before, such as weights and input, do not count; the output does)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    # kineto prints its own start/stop lines straight to fd 2 (not through Python, whatever KINETO_LOG_LEVEL says)
    with _StderrFdSilenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            events.append(event)
    if not events:
        raise RuntimeError('torch.profiler recorded no CPU allocation during the forward; cannot measure peak memory.')
    events.sort(key=lambda e: e.start_time_ns)
    live, held, peak = set(), 0, 0
    for event in events:
        size, ptr = event.extra_fields.alloc_size, event.extra_fields.ptr
        if size > 0:
            live.add(ptr)
            held += size
        elif ptr in live:  # frees of tensors allocated before fn() started are not ours to subtract
            live.discard(ptr)
            held += size
        peak = max(peak, held)
    return peak


def measure_network(net, in_ch, probe, lr_hw, warmup=0, repeats=MIN_SPREAD, gpu=False, plain=False,
                    time_cap=TIME_CAP_S):
    """The cost columns of ``lwsr-report`` for ``net`` (in eval mode): ``params``; ``macs_720p_G`` from a forward on
    a ``probe`` x ``probe`` input of ``in_ch`` channels, scaled to a 1280x720 output; then, on a random input of
    ``lr_hw`` (H, W), batch 1, fp32, through the fast inference form (``plain``: the module itself, NCHW),
    ``cpu_peak_MB`` of the first forward and ``cpu_ms*``/``cpu_runs``/``cpu_time_ms`` of :func:`planned_repeats` of
    ``repeats`` within ``time_cap`` seconds; with ``gpu``, the ``gpu_*_720p`` columns on CUDA device 0."""
    import torch

    from lwsr_plugin.archs.blocks import count_parameters
    from lwsr_plugin.fast import fast_inference_net
    macs, out = count_macs(net, (1, in_ch, probe, probe))
    row = {'params': count_parameters(net), 'macs_720p_G': macs / out[0, 0].numel() * HR_PIXELS_720P / 1e9}
    del out
    fmt = torch.contiguous_format if plain else torch.channels_last
    x = torch.rand(1, in_ch, *lr_hw, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=fmt)
    if not plain:
        net = fast_inference_net(net).to(memory_format=fmt)
    with torch.inference_mode():
        start, cpu_start = time.perf_counter(), time.process_time()
        row['cpu_peak_MB'] = cpu_peak_bytes(lambda: net(x)) / 2**20
        first = ((time.perf_counter() - start) * 1e3, (time.process_time() - cpu_start) * 1e3)
        # a forward of many seconds (DRN+ at 720p: over a minute) dwarfs its one-time costs (oneDNN primitives,
        # weight packing): the memory-measuring forward is then the first timed one, which halves the report's time
        t = time_forwards(lambda: net(x), warmup, planned_repeats(repeats, first[0], time_cap),
                          first=first if first[0] >= LONG_FORWARD_MS else None)
    row.update(cpu_ms=t['median'], cpu_ms_min=t['min'], cpu_ms_p25=t['p25'], cpu_ms_p75=t['p75'], cpu_runs=t['runs'],
               cpu_time_ms=t['cpu_time'])
    if gpu:
        net = net.cuda()
        x = x.cuda()
        with torch.inference_mode():
            t = time_forwards(lambda: net(x), max(warmup, 1), repeats, torch.cuda.synchronize)
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            net(x)
            torch.cuda.synchronize()
            row['gpu_peak_MB_720p'] = (torch.cuda.max_memory_allocated() - before) / 2**20
        row.update(gpu_ms_720p=t['median'], gpu_ms_720p_min=t['min'], gpu_ms_720p_p25=t['p25'],
                   gpu_ms_720p_p75=t['p75'], gpu_runs_720p=t['runs'])
        net.cpu()
        torch.cuda.empty_cache()
    return row
