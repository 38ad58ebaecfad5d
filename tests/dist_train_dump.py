"""Run by ``torchrun`` in test_training.py: BasicSR's train_pipeline, then each rank saves its own net_g weights.

With ``LWSR_TEST_KILL_RANK=r`` and ``LWSR_TEST_KILL_ITER=n``, rank ``r`` sends itself SIGKILL when iteration ``n``
starts, in the first attempt of an elastic job only (``TORCHELASTIC_RESTART_COUNT`` 0): a worker lost mid-run.

It registers ``IMDNWithBuffer`` (IMDN + a registered buffer) because rank-0-only validation through a DDP wrapper
broadcasts buffers from rank 0 alone and desyncs the ranks; the plugin must validate on the bare network.
"""
import os
import signal

import torch

import lwsr_plugin  # noqa: F401
from basicsr.utils.registry import ARCH_REGISTRY
from lwsr_plugin.archs.imdn_arch import IMDN


@ARCH_REGISTRY.register()
class IMDNWithBuffer(IMDN):

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer('gain', torch.ones(1))

    def forward(self, x):
        return super().forward(x) * self.gain


if __name__ == '__main__':
    import basicsr.train
    models = []
    build_model = basicsr.train.build_model

    def capture(opt):
        models.append(build_model(opt))
        return models[-1]

    def kill_at(model, rank, iteration):
        optimize = model.optimize_parameters

        def optimize_parameters(current_iter):
            if current_iter == iteration and os.environ['RANK'] == rank:
                print(f'rank {rank}: SIGKILL at iteration {iteration}', flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return optimize(current_iter)

        model.optimize_parameters = optimize_parameters
        return model

    if os.environ.get('LWSR_TEST_KILL_RANK') and os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0':
        basicsr.train.build_model = lambda opt: kill_at(capture(opt), os.environ['LWSR_TEST_KILL_RANK'],
                                                        int(os.environ['LWSR_TEST_KILL_ITER']))
    else:
        basicsr.train.build_model = capture

    basicsr.train.train_pipeline(os.getcwd())
    model = models[0]
    torch.save(model.get_bare_model(model.net_g).state_dict(), f'rank{os.environ["RANK"]}_net_g.pth')
    print(f'rank {os.environ["RANK"]} done, DDP={type(model.net_g).__name__}', flush=True)
