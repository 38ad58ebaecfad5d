"""What this machine's devices can run, one answer for training and for inference: native bf16
(:func:`bf16_native`), the CPU's model and vector ISA (:func:`cpu_name`, and :func:`machine_line`, the line naming
the machine above a measured table), whether a precision or ``torch.compile`` runs on a device and why not
(:func:`limitation`, the one answer both ``train.amp`` / ``train.compile`` and the inference flags use), and the
inference flags checked against it (:func:`check_runtime`, one line naming the flag and the fix).
"""
import logging
import platform
import shutil
from typing import NamedTuple

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


def machine_line(argv=None, gpu=None):
    """The one line that heads a measured table: the CPU's model and ISA (:func:`cpu_name`), the cores visible,
    torch's CPU threads and version, the GPU when ``gpu`` (a CUDA device index or name) is given, and the command
    that measured it, from ``argv`` (``sys.argv``'s form: a script path, shown as ``python <path relative to the
    working directory>``, or a command name), e.g. "Machine: AMD EPYC 7B13 (AVX2), 16 CPU cores visible, 16 torch
    threads, torch 2.5.1. Command: `python scripts/benchmark_startup.py --repeats 5`." (no command without ``argv``).
    """
    import os
    import shlex
    threads = torch.get_num_threads()
    line = (f'Machine: {cpu_name()}, {os.cpu_count()} CPU cores visible, {threads} torch thread'
            f'{"" if threads == 1 else "s"}, torch {torch.__version__}')
    if gpu is not None:
        line += f', GPU: {torch.cuda.get_device_name(gpu)}'
    line += '.'
    if argv:
        prog = str(argv[0])
        if prog.endswith('.py'):
            rel = os.path.relpath(prog)
            prog = 'python ' + (prog if rel.startswith('..') else rel)
        else:
            prog = os.path.basename(prog)
        line += f' Command: `{" ".join([prog] + [shlex.quote(str(a)) for a in argv[1:]])}`.'
    return line


class Limitation(NamedTuple):
    """Why a precision or ``torch.compile`` does not run at speed on a device (see :func:`limitation`)."""
    reason: str  # a clause for the caller's one-line message, which adds its own option name and fix
    slow: bool  # True: it runs, only slower than fp32, and is run with a warning; False: it is refused


def limitation(device, request):
    """What stops ``request`` -- a precision ('fp32', 'bf16', 'fp16') or 'compile' -- on ``device`` (a
    ``torch.device``): None where it runs at speed, else a :class:`Limitation`. Training (``train.amp``,
    ``train.compile``) and inference (``--bf16``, ``--half``, ``--compile``) both ask here and state the reason under
    their own option name.

    One policy for both. A request that cannot run here, or not with the result it asks for, is refused: fp16 on a
    CPU (its fp16 convolutions are slow and inexact), bf16 on a GPU without it, compile without a working compiler.
    A request that runs correctly but slower than fp32 -- bf16 on a CPU without native bf16 (AVX512-BF16 or AMX),
    which PyTorch emulates -- runs as asked, with one warning naming the option and the fix. It is run rather than
    refused because its result is the one asked for: the numerics of a bf16 recipe meant for a GPU, or the bf16
    accuracy of a fast form, can be checked on such a CPU only this way (the tests do so on AVX2 machines), and a run
    that is merely slow is not wrong; the warning says what it costs and how to get fp32's speed. Choices made for
    the user (``amp: auto``) never pick a precision this answers for.
    """
    if request == 'compile':
        problem = compile_problem(device, trial=True)
        return Limitation(problem, slow=False) if problem else None
    if request not in ('fp32', 'bf16', 'fp16'):
        raise ValueError(f'{request!r} is not a precision (fp32, bf16, fp16) or compile')
    if request == 'fp16' and device.type == 'cpu':
        return Limitation('CPU fp16 convs are slow and inexact', slow=False)
    if request == 'bf16' and not bf16_native(device):
        if device.type == 'cpu':
            return Limitation('this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 runs several times slower '
                              'than fp32 here', slow=True)
        return Limitation(f'bf16 is not supported by {torch.cuda.get_device_name(device)}', slow=False)
    return None


def check_runtime(device, precision='fp32', compile=False):
    """``torch.device`` for ``device`` ('cpu', 'cuda', 'cuda:N'), after checking that it exists and what
    :func:`limitation` says of ``precision`` and ``compile`` on it: raises :class:`RuntimeProblem` naming the flag and
    the fix for what cannot run; logs one warning line (logger ``lwsr_plugin``) for what runs, only slower."""
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
    limit = limitation(dev, precision)
    if limit and precision == 'fp16':
        raise RuntimeProblem(f'--half: float16 inference needs a CUDA device ({limit.reason}); use --bf16 on CPU, or '
                             '--device cuda.')
    if limit and not limit.slow:
        raise RuntimeProblem(f'--bf16: {limit.reason}; use --half, or --device cpu.')
    if limit:
        logging.getLogger('lwsr_plugin').warning(f'--bf16: {limit.reason}; drop --bf16 (fp32 is the fast path on '
                                                 'this CPU).')
    limit = limitation(dev, 'compile') if compile else None
    if limit:
        raise RuntimeProblem(f'--compile: {limit.reason}; drop --compile (the fast eager forms need no compiler).')
    return dev


_TRIALS = {}  # str(device) -> '' or why a compiled test function failed there


def compile_problem(dev, trial=False):
    """Why ``torch.compile`` cannot run on ``dev`` here, or None: torch.compile and TorchDynamo present, a C++
    compiler (CPU backend) or Triton (CUDA backend) found. ``trial`` also compiles and runs a tiny function, once per
    device and process (about 2 s on a CPU), which finds what those checks cannot see (a compiler that cannot build,
    missing headers); a compile request (:func:`limitation`) takes it, the fast forms' own kernels do not."""
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
    if trial and str(dev) not in _TRIALS:
        _TRIALS[str(dev)] = _compile_trial(dev)
    return (_TRIALS[str(dev)] if trial else '') or None


def _compile_trial(dev):
    """'' when a tiny compiled function runs on ``dev`` and gives the eager result, else why not."""
    try:
        fn = torch.compile(lambda x: torch.nn.functional.relu(x) * 2 + 1)
        out = fn(torch.ones(4, device=dev))
        if not torch.equal(out.cpu(), torch.full((4, ), 3.0)):
            return 'a compiled test function gave a wrong result'
    except Exception as err:  # inductor reports a missing compiler / triton in many exception types
        text = str(err).strip()
        return f'{type(err).__name__}: {text.splitlines()[0][:200] if text else ""}'
    return ''
