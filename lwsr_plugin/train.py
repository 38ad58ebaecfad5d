"""``lwsr-train`` / ``python -m lwsr_plugin.train``: BasicSR's own ``train_pipeline`` with the plugin registered.

Outputs (``experiments/``, ``tb_logger/``) go under the current working directory (or ``path.root`` / ``LWSR_ROOT``),
never into site-packages. Works with ``torchrun --nproc_per_node=N -m lwsr_plugin.train -opt X.yml --launcher
pytorch`` on GPUs (nccl) and on CPU-only machines (gloo). See :mod:`lwsr_plugin.entry`.
"""
import sys

import lwsr_plugin  # noqa: F401  (cheap; spawned DataLoader workers re-import this module)


def main(argv=None):
    from lwsr_plugin.entry import run
    return run('train', argv, prog='lwsr-train')


if __name__ == '__main__':
    sys.exit(main())
