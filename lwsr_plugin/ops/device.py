"""What this machine's devices can run, one answer for training and for inference: native bf16
(:func:`bf16_native`), the CPU's model and vector ISA (:func:`cpu_name`), whether a device / precision / compile
request works here (:func:`check_runtime`, one line naming the flag and the fix otherwise).
"""
import platform
import shutil

import torch


class RuntimeProblem(ValueError):
    """A device / precision / compile request that cannot run on this machine; the message names the flag."""


def bf16_native(device):
    """True where bf16 runs at speed: CUDA GPUs that support it, CPUs with AVX512-BF16 or AMX. Elsewhere bf16 is
    emulated and slower than fp32 (an AVX2 CPU, one side-by-side run on a loaded machine: a 64->64 3x3 conv at
    320x180 took 343 ms in bf16 against 50 ms in fp32, channels_last; 3443 against 38 ms NCHW)."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, 'cpu', None)
    checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def cpu_name():
    """The CPU's model name and the vector ISA torch's kernels use here, with AMX where oneDNN has it (e.g.
    'AMD EPYC (AVX2)', 'Intel(R) Xeon(R) Processor (AVX512 + AMX)')."""
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    isa = getattr(getattr(torch.backends, 'cpu', None), 'get_cpu_capability', lambda: '')()
    # torch's own kernels stop at AVX512, but oneDNN's bf16 convs run on AMX tiles where there are some (a 64->64
    # 3x3 conv at 640x360: 8 ms bf16 against 65 ms fp32 on such a CPU), which changes what the bf16 column means
    if isa and getattr(getattr(torch, 'cpu', None), '_is_amx_tile_supported', lambda: False)():
        isa += ' + AMX'
    return f'{name} ({isa})' if isa else name


def check_runtime(device, precision='fp32', compile=False):
    """``torch.device`` for ``device`` ('cpu', 'cuda', 'cuda:N'), after checking that it exists and that
    ``precision`` and ``compile`` work on it; raises :class:`RuntimeProblem` naming the flag and the fix."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RuntimeProblem(f"--device {device}: not a device name; use cpu, cuda or cuda:N.") from None
    if dev.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RuntimeProblem(f'--device {device}: no CUDA device on this machine; use --device cpu.')
        if dev.index is not None and dev.index >= count:
            raise RuntimeProblem(f'--device {device}: this machine has {count} CUDA device(s) (cuda:0 to '
                                 f'cuda:{count - 1}); use one of those or --device cpu.')
    elif dev.type != 'cpu':
        raise RuntimeProblem(f'--device {device}: only cpu and cuda devices are supported; use cpu or cuda:N.')
    if precision == 'fp16' and dev.type == 'cpu':
        raise RuntimeProblem('--half: float16 inference needs a CUDA device (CPU fp16 convs are slow and '
                             'inexact); use --bf16 on CPU, or --device cuda.')
    if precision == 'bf16' and dev.type == 'cpu' and not bf16_native(dev):
        raise RuntimeProblem('--bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 runs several times '
                             'slower than fp32 here; drop --bf16 (fp32 is the fast path on this CPU).')
    if compile:
        problem = compile_problem(dev)
        if problem:
            raise RuntimeProblem(f'--compile: {problem}; drop --compile (the fast eager forms need no compiler).')
    return dev


def compile_problem(dev):
    """Why ``torch.compile`` cannot run on ``dev`` here, or None."""
    if not hasattr(torch, 'compile'):
        return f'this PyTorch ({torch.__version__}) has no torch.compile'
    try:
        from torch import _dynamo
        if not _dynamo.is_dynamo_supported():
            return 'torch.compile does not support this Python version'
    except Exception as err:  # a broken install: the reason is in the exception
        return f'torch.compile cannot start ({type(err).__name__}: {err})'
    if dev.type == 'cpu':
        from torch._inductor import config
        compiler = getattr(getattr(config, 'cpp', None), 'cxx', (None, 'g++'))
        names = [c for c in (compiler if isinstance(compiler, (tuple, list)) else (compiler, )) if c]
        if not any(shutil.which(c) for c in names + ['g++', 'c++', 'clang++']):
            return 'no C++ compiler found for its CPU backend (install g++)'
    else:
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return 'its CUDA backend needs Triton, which this PyTorch cannot find'
        if not has_triton():
            return 'its CUDA backend needs Triton (pip install triton)'
    return None
