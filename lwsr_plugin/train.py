"""``lwsr-train`` / ``python -m lwsr_plugin.train``: BasicSR's own ``train_pipeline`` with the plugin registered.

Outputs (``experiments/``, ``tb_logger/``) go under the current working directory, never into site-packages.
Works with ``torchrun --nproc_per_node=N -m lwsr_plugin.train -opt X.yml --launcher pytorch`` on GPUs (nccl) and on
CPU-only machines (gloo). The plugin is imported at module level on purpose: spawned DataLoader workers re-import
this module and need the registrations (and the torchvision alias) too.
"""
import os

import lwsr_plugin  # noqa: F401  (compat patches + registration)
from lwsr_plugin.cli.checks import check_cli_options


def main():
    import basicsr.train
    check_cli_options()
    basicsr.train.train_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
