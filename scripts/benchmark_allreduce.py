"""All-reduce time of the real gradient sizes (IMDN x4, DRN+ x4) on gloo loopback, and a model of the scaling
efficiency of data-parallel training on 8 and 64 GPUs (docs/distributed.md, "Beyond one machine").

Measured: P processes on this machine (gloo over 127.0.0.1) all-reduce float32 gradients of each network's parameter
count, split into buckets of ``--bucket-mb`` MiB as DistributedDataParallel does (its default ``bucket_cap_mb`` is
25). Per repeat the time is the slowest rank's; printed: median (min-max), the algorithm bandwidth (bytes / time) and
the bus bandwidth (2 (P-1)/P x bytes / time, NCCL's convention; the number to compare with a link's bandwidth).

Modelled (assumptions are flags, printed with the table): ring all-reduce time
``2 (N-1)/N x bytes / bandwidth + 2 (N-1) x latency``; the per-GPU step time of the network at ``--batch`` samples of
``--lr-size`` LR patches per GPU is ``--step-overhead-ms`` + 3 x 2 x forward MACs / ``--gpu-tflops`` (forward +
backward = 3 forwards; the MACs are counted on the real network). Speed-up: samples/s of N GPUs over one GPU
training the recipe's batch; scaling efficiency = speed-up / N. Weak scaling keeps ``--batch`` per GPU (the global
batch grows N-fold: a different recipe), strong scaling splits the recipe's global batch over the N GPUs. Each is
given without overlap (all-reduce after the backward pass: the lower bound) .. with the all-reduce hidden behind the
backward pass (DDP's bucketed overlap, up to 2/3 of the step: the upper bound).

    python scripts/benchmark_allreduce.py                    # 2 and 4 processes, IMDN x4 and DRN+ x4
    python scripts/benchmark_allreduce.py --procs 2 --repeats 5 --model-only
"""
import argparse
import os
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

NETWORKS = {  # label: network_g options (built through BasicSR's registry)
    'IMDN x4': {'type': 'IMDN', 'upscale': 4},
    'DRN+ x4': {'type': 'DRN', 'variant': 'DRN+', 'upscale': 4},
}
# (label, GPUs, ring bandwidth GB/s, latency us per ring step). NVLink: NCCL's bus bandwidth on 8 GPUs of an NVLink
# node is 130-450 GB/s by generation (V100 .. H100); 150 is the low end. 8 nodes x 8 GPUs with one 100 Gb/s NIC per
# node: the ring crosses each node through that NIC, so 12.5 GB/s bounds it.
INTERCONNECTS = [
    ('8 GPUs, 1 node, NVLink', 8, 150.0, 5.0),
    ('64 GPUs, 8 nodes, 100 Gb/s IB', 64, 12.5, 10.0),
]
MAC_PROBE = 12  # LR side of the MAC-counting forward; conv MACs scale with the pixel count


def network_sizes(lr_size):
    """{label: (parameters, forward MACs of one LR patch of lr_size x lr_size)} of the real networks."""
    import torch

    import lwsr_plugin  # noqa: F401  (registration)
    from basicsr.archs import build_network
    from lwsr_plugin.metrics.model_cost import count_macs
    sizes = {}
    for label, opt in NETWORKS.items():
        net = build_network(dict(opt)).eval()
        params = sum(p.numel() for p in net.parameters())
        with torch.no_grad():
            macs, _ = count_macs(net, (1, 3, MAC_PROBE, MAC_PROBE))
        sizes[label] = (params, macs * (lr_size / MAC_PROBE) ** 2)
        del net
    return sizes


def _worker(rank, world, port, numels, bucket_numel, warmup, repeats, queue):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    results = {}
    for label, numel in numels.items():
        buckets = [torch.randn(min(bucket_numel, numel - start)) for start in range(0, numel, bucket_numel)]
        times = []
        for i in range(warmup + repeats):
            dist.barrier()
            start = time.perf_counter()
            for bucket in buckets:
                dist.all_reduce(bucket)
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the step waits for the slowest rank
            if i >= warmup:
                times.append(elapsed.item())
        results[label] = times
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def measure(world, numels, bucket_mb, warmup, repeats):
    """{label: [seconds per all-reduce of all buckets]} with ``world`` gloo processes on loopback."""
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    ctx = mp.get_context('spawn')
    queue = ctx.SimpleQueue()
    bucket_numel = int(bucket_mb * 2**20) // 4
    mp.start_processes(_worker, args=(world, port, numels, bucket_numel, warmup, repeats, queue), nprocs=world,
                       join=True, start_method='spawn')
    return queue.get()


def ring_time(nbytes, gpus, bandwidth_gbs, latency_us):
    return 2 * (gpus - 1) / gpus * nbytes / (bandwidth_gbs * 1e9) + 2 * (gpus - 1) * latency_us * 1e-6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--procs', default='2,4', help='comma-separated process counts to measure (default 2,4)')
    p.add_argument('--repeats', type=int, default=10, help='timed all-reduces per size (default 10)')
    p.add_argument('--warmup', type=int, default=2, help='untimed all-reduces first (default 2)')
    p.add_argument('--bucket-mb', type=float, default=25.0, help="DDP's bucket size in MiB (default 25)")
    p.add_argument('--model-only', action='store_true', help='skip the gloo measurement; print the model only')
    p.add_argument('--batch', type=int, default=16, help='samples per GPU per step in the model (default 16)')
    p.add_argument('--lr-size', type=int, default=48, help='LR patch side in the model (default 48: gt_size 192)')
    p.add_argument('--gpu-tflops', type=float, default=30.0,
                   help='achieved training throughput per GPU, TFLOP/s (default 30: assumed, bf16, small convs)')
    p.add_argument('--step-overhead-ms', type=float, default=2.0,
                   help='fixed per-step GPU time (kernel launches, optimizer, loader hand-off), ms (default 2)')
    args = p.parse_args(argv)

    import torch
    sizes = network_sizes(args.lr_size)
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, gloo on 127.0.0.1, float32 gradients in '
          f'{args.bucket_mb:g} MiB buckets, {args.repeats} repeats after {args.warmup} warm-up; time = slowest rank\n')
    if not args.model_only:
        print('| network | parameters | MB | processes | all-reduce ms median (min-max) | algbw GB/s | busbw GB/s |')
        print('|---|---|---|---|---|---|---|')
        numels = {label: params for label, (params, _) in sizes.items()}
        for world in [int(x) for x in args.procs.split(',')]:
            results = measure(world, numels, args.bucket_mb, args.warmup, args.repeats)
            for label, times in results.items():
                nbytes = numels[label] * 4
                med = statistics.median(times)
                print(f'| {label} | {numels[label]:,} | {nbytes / 1e6:.2f} | {world} | {med * 1e3:,.2f} '
                      f'({min(times) * 1e3:,.2f}-{max(times) * 1e3:,.2f}) | {nbytes / med / 1e9:.2f} | '
                      f'{2 * (world - 1) / world * nbytes / med / 1e9:.2f} |')
        print()

    print(f'Model: per-GPU step = {args.step_overhead_ms:g} ms + 6 x MACs x batch / {args.gpu_tflops:g} TFLOP/s '
          f'(LR patch {args.lr_size}x{args.lr_size}); ring all-reduce = 2(N-1)/N x bytes / bandwidth + 2(N-1) x '
          'latency; without overlap .. with the all-reduce hidden behind the backward pass (2/3 of the step).\n')
    print('| network | scaling | interconnect | batch per GPU | step ms | all-reduce ms | speed-up vs 1 GPU | '
          'scaling efficiency |')
    print('|---|---|---|---|---|---|---|---|')
    for label, (params, macs) in sizes.items():
        def step(batch):
            return args.step_overhead_ms * 1e-3 + 6 * macs * batch / (args.gpu_tflops * 1e12)
        one_gpu = step(args.batch)  # the recipe's batch on one GPU
        for name, gpus, bandwidth, latency in INTERCONNECTS:
            allreduce = ring_time(params * 4, gpus, bandwidth, latency)
            for scaling, batch in ((f'weak: {args.batch}/GPU, global {args.batch * gpus}', args.batch),
                                   (f'strong: global {args.batch}', args.batch / gpus)):
                if batch < 1:
                    print(f'| {label} | {scaling} | {name} | {batch:g} | - | - | - | none: < 1 sample per GPU |')
                    continue
                t = step(batch)
                # samples per second of N GPUs over those of one GPU at the recipe's batch
                speedups = [gpus * batch / (t + exposed) / (args.batch / one_gpu)
                            for exposed in (allreduce, max(0.0, allreduce - t * 2 / 3))]
                print(f'| {label} | {scaling} | {name} | {batch:g} | {t * 1e3:.2f} | {allreduce * 1e3:.2f} | '
                      f'{speedups[0]:.1f}x .. {speedups[1]:.1f}x | {speedups[0] / gpus:.0%} .. '
                      f'{speedups[1] / gpus:.0%} |')
    print('\nForward MACs per LR patch: ' + ', '.join(f'{label} {macs / 1e9:.2f} G' for label, (_, macs) in
                                                       sizes.items()))


if __name__ == '__main__':
    main()
