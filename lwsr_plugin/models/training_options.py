"""Training options shared by every plugin model (``LWSRModel``, ``TwoStageSRModel`` and models derived from them):
mixed precision, channels_last, ``torch.compile``, gradient clipping, TF32 and the non-finite guard.

Option keys, under ``train`` (all optional; the defaults train exactly as BasicSR's SRModel does)::

    amp: false            # bf16 | fp16 | auto | false. Autocast of the forward pass; losses are computed in fp32.
                          # fp16 (CUDA only) uses a GradScaler whose state is saved in the .state file.
                          # auto = bf16 where the device runs it natively (CUDA with bf16, CPU with AVX512-BF16
                          # or AMX), else false. bf16 on a CPU without native bf16 runs emulated, slower than fp32,
                          # with a warning (the policy of lwsr_plugin.ops.device.limitation).
    channels_last: false  # network weights and batches in channels_last (NHWC) memory format
    compile: false        # false | true | default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs:
                          # torch.compile of the training forward; validation, saving and loading use the plain
                          # module, so state-dict keys never gain ``_orig_mod.``
    grad_clip: ~          # max L2 norm of all gradients together (off when ~ or 0)
    tf32: true            # TF32 matmul/convolutions on CUDA GPUs (Ampere and later); false = full fp32
    max_nonfinite_steps: 10   # stop after this many non-finite steps in a row
    accumulate: 1         # gradient accumulation: each iteration loads accumulate x batch_size_per_gpu samples per
                          # process and runs that many forward/backward passes of batch_size_per_gpu before one
                          # optimizer step (global batch = processes x batch_size_per_gpu x accumulate); iterations,
                          # total_iter and the learning-rate schedule count optimizer steps
    deterministic: false  # deterministic kernels (torch.use_deterministic_algorithms, cudnn.benchmark off): on a GPU
                          # a resumed run then equals the uninterrupted one; CPU kernels are deterministic already

and under ``val``: ``amp: false`` (validation in fp32 so PSNR is comparable; true = the training precision).
The accepted values and the defaults are declared once, in :mod:`lwsr_plugin.options.keys` (which the option-file
schema is made from); this module parses them.

The non-finite guard: a step whose loss or gradients are not finite leaves the weights and the optimizer state as
they were (the optimizer does not step); it is counted and logged. Gradients are checked after DDP has averaged
them, so every rank takes the same decision. After ``max_nonfinite_steps`` such steps in a row the run stops with a
message naming the iteration and the likely causes.
"""
import contextlib
import logging
import math

import torch

from basicsr.utils import get_root_logger

from lwsr_plugin.ops.device import limitation
from lwsr_plugin.options import keys
from lwsr_plugin.options.keys import COMPILE_MODES

AMP_VALUES = keys.allowed('train.amp')


_WARNED = set()


def _warn_once(msg):
    """``msg`` on BasicSR's logger, once per process. Not through ``get_root_logger``: the options are parsed before
    train.py sets the logger up with its log file, and a first ``get_root_logger()`` call would set it up without."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        logging.getLogger('basicsr').warning(msg)


class TrainingOptionError(ValueError):
    """A training option that cannot work here; the message names the option and the fix."""


class NonFiniteTrainingError(SystemExit):
    """Raised after ``train.max_nonfinite_steps`` non-finite steps in a row; ends the run with its message."""


def _normalise_amp(value):
    try:
        return keys.parse('train.amp', value)
    except ValueError:
        raise TrainingOptionError(f'train.amp: {value!r} is not a precision. Use bf16, fp16 (CUDA only), auto or '
                                  'false.') from None


def _normalise_compile(value):
    try:
        return keys.parse('train.compile', value)
    except ValueError:
        raise TrainingOptionError(f'train.compile: {value!r} is not a torch.compile mode. Use false, true or one of '
                                  f'{list(COMPILE_MODES)}.') from None


def accumulate_steps(train_opt):
    """``train.accumulate`` as an int >= 1; TrainingOptionError naming the option otherwise."""
    value = train_opt.get('accumulate', keys.default('train.accumulate'))
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainingOptionError(f'train.accumulate: {value!r} must be a whole number >= 1 (micro-batches per '
                                  'optimizer step; 1 = no accumulation).')
    return value


class TrainingOptions:
    """The parsed ``train`` keys above, and the pieces of a training step that depend on them."""

    def __init__(self, opt, device):
        train_opt = opt.get('train') or {}
        val_opt = opt.get('val') or {}
        self.device = device
        amp = _normalise_amp(train_opt.get('amp', keys.default('train.amp')))
        if amp == 'auto':
            amp = 'bf16' if limitation(device, 'bf16') is None else False
        limit = limitation(device, amp) if amp else None
        if limit and amp == 'fp16':
            raise TrainingOptionError('train.amp: fp16 needs a CUDA GPU (float16 autocast + GradScaler); on CPU use '
                                      '`amp: bf16` (or `amp: false`).')
        if limit and not limit.slow:
            raise TrainingOptionError(f'train.amp: {limit.reason}. Use `amp: fp16` (or `amp: false`).')
        if limit:
            _warn_once(f'train.amp: bf16: {limit.reason}; `amp: auto` (or false) trains in fp32.')
        self.amp = amp
        self.dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp)
        self.channels_last = bool(train_opt.get('channels_last', keys.default('train.channels_last')))
        self.compile = _normalise_compile(train_opt.get('compile', keys.default('train.compile')))
        clip = train_opt.get('grad_clip', keys.default('train.grad_clip'))
        try:
            self.grad_clip = float(clip) if clip not in (None, False) else 0.0
        except (TypeError, ValueError):
            raise TrainingOptionError(f'train.grad_clip: {clip!r} is not a number. Give the max gradient norm, '
                                      'e.g. `grad_clip: 1.0`, or ~ to turn clipping off.') from None
        if self.grad_clip < 0 or math.isnan(self.grad_clip):
            raise TrainingOptionError(f'train.grad_clip: {clip} must be >= 0 (0 or ~ = off).')
        self.tf32 = bool(train_opt.get('tf32', keys.default('train.tf32')))
        self.max_nonfinite = int(train_opt.get('max_nonfinite_steps', keys.default('train.max_nonfinite_steps')))
        if self.max_nonfinite < 1:
            raise TrainingOptionError('train.max_nonfinite_steps must be >= 1.')
        self.val_amp = bool(val_opt.get('amp', keys.default('val.amp')))
        self.accumulate = accumulate_steps(train_opt)
        self.deterministic = bool(train_opt.get('deterministic', keys.default('train.deterministic')))
        self.scaler = torch.amp.GradScaler('cuda') if amp == 'fp16' else None
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0

    def describe(self):
        return (f'amp={self.amp or "off"}, channels_last={self.channels_last}, compile={self.compile or "off"}, '
                f'grad_clip={self.grad_clip or "off"}, tf32={self.tf32 if self.device.type == "cuda" else "n/a"}, '
                f'max_nonfinite_steps={self.max_nonfinite}, accumulate={self.accumulate}, '
                f'deterministic={self.deterministic}')

    # ----------------------------------------------------------------------------------------------- set-up
    def apply_backend_flags(self):
        if self.device.type == 'cuda':
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
        if self.deterministic:
            import os
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # cuBLAS' condition for reproducible GEMMs
            torch.backends.cudnn.benchmark = False  # BasicSR's train.py turns it on; autotuning picks kernels per run
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True)

    def prepare_network(self, net):
        """Memory format of a bare network, before BasicSR wraps it in DDP (whose gradient buckets follow the
        parameters' strides)."""
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def prepare_batch(self, tensor):
        return tensor.contiguous(memory_format=torch.channels_last) if self.channels_last and tensor.dim() == 4 \
            else tensor

    def training_forward(self, net):
        """The callable that runs the training forward: ``net`` itself or its compiled version."""
        if not self.compile:
            return net
        limit = limitation(self.device, 'compile')
        if limit:
            raise TrainingOptionError(f'train.compile: torch.compile cannot compile on this machine ({limit.reason}). '
                                      'Install a C++ compiler (CPU) or triton (GPU), or set `compile: false`.')
        return torch.compile(net, mode=None if self.compile == 'default' else self.compile)

    def autocast(self, training=True):
        enabled = self.dtype is not None and (training or self.val_amp)
        if not enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # --------------------------------------------------------------------------------------------- the step
    def backward_and_step(self, loss, optimizer, params, current_iter):
        """Backward, unscale, clip, and step unless the loss or any gradient is not finite.

        Returns True when the optimizer stepped. Raises :class:`NonFiniteTrainingError` after too many skipped
        steps in a row."""
        self.backward(loss)
        return self.step(loss, optimizer, params, current_iter)

    def backward(self, loss):
        """Backward of one (micro-)batch loss, scaled by the GradScaler when there is one; gradients add up."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, loss, optimizer, params, current_iter):
        """Unscale, clip, and step on the gradients gathered by :meth:`backward`, unless ``loss`` (the step's total)
        or any gradient is not finite. Returns True when the optimizer stepped."""
        params = [p for p in params if p.grad is not None or p.requires_grad]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grads = [p for p in params if p.grad is not None]
        # one fused norm over all gradients: it is not finite when any gradient is not
        norm = torch.nn.utils.clip_grad_norm_(grads, self.grad_clip if self.grad_clip > 0 else float('inf'),
                                              error_if_nonfinite=False, foreach=True) if grads else torch.zeros(())
        finite = bool(torch.isfinite(loss.detach()).item()) and bool(torch.isfinite(norm).item())
        if finite:
            if self.scaler is not None:
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                optimizer.step()
            self.nonfinite_in_row = 0
            return True
        if self.scaler is not None:
            self.scaler.update()  # lowers the scale; the step itself is skipped below
        optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        get_root_logger().warning(
            f'Non-finite step skipped at iter {current_iter} (loss {loss.detach().float().item():.4g}, gradient norm '
            f'{norm.float().item():.4g}); weights and optimizer state unchanged; {self.nonfinite_in_row} in a row, '
            f'{self.nonfinite_total} in this run.')
        if self.nonfinite_in_row >= self.max_nonfinite:
            message = (f'lwsr_plugin: training stopped at iter {current_iter}: {self.nonfinite_in_row} non-finite '
                       f'steps in a row (train.max_nonfinite_steps: {self.max_nonfinite}). Likely causes: a learning '
                       'rate too high (train.optim_g.lr), corrupt or unnormalised training data (NaN/Inf pixels, '
                       'wrong mean/std), or fp16 overflow (use amp: bf16 or false). Checkpoints on disk hold the last '
                       'finite weights; fix the cause and resume.')
            get_root_logger().error(message)
            raise NonFiniteTrainingError(message)
        return False

    # ------------------------------------------------------------------------------------------ persistence
    def state_dict(self):
        return {'scaler': self.scaler.state_dict() if self.scaler is not None else None,
                'nonfinite_total': self.nonfinite_total, 'amp': self.amp}

    def load_state_dict(self, state):
        if not state:
            return
        self.nonfinite_total = int(state.get('nonfinite_total', 0))
        if self.scaler is not None and state.get('scaler'):
            self.scaler.load_state_dict(state['scaler'])

