"""A user module (``LWSR_USER_MODULES=scripts/resume_kill_hook.py``) that SIGKILLs a training process at a chosen
moment, for the kill/resume checks of scripts/check_resume.py and tests/test_resume.py.

``LWSR_KILL_AT=<iter>``: killed just before iteration ``<iter>`` trains (after the checkpoint of the one before).
``LWSR_KILL_AT=save:<n>``: killed while the ``n``-th file ``torch.save`` writes in the run is being written, with
half the bytes on disk (odd ``n``: a network file; even: a training state, as BasicSR writes the weights first).
``LWSR_KILL_RANK=<r>``: only global rank ``r`` dies (torchrun then stops the others); default every process that gets
there. Without ``LWSR_KILL_AT`` the module does nothing.
"""
import io
import os
import signal

import torch

from basicsr.models import base_model

SPEC = os.environ.get('LWSR_KILL_AT', '')


def _die():
    if os.environ.get('LWSR_KILL_RANK') in (None, os.environ.get('RANK', '0')):
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_in_save(target):
    original = torch.save
    calls = [0]

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):  # files only: collectives may pickle objects into buffers
            calls[0] += 1
        if calls[0] == target and isinstance(f, (str, os.PathLike)):
            buffer = io.BytesIO()
            original(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(f, 'wb') as out:
                out.write(data[:len(data) // 2])
                out.flush()
                os.fsync(out.fileno())
            _die()
        return original(obj, f, *args, **kwargs)

    torch.save = save


def _kill_before_iter(at):
    original = base_model.BaseModel.update_learning_rate

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        if current_iter == at:
            _die()
        return original(self, current_iter, warmup_iter)

    base_model.BaseModel.update_learning_rate = update_learning_rate


if SPEC.startswith('save:'):
    _kill_in_save(int(SPEC[len('save:'):]))
elif SPEC:
    _kill_before_iter(int(SPEC))
