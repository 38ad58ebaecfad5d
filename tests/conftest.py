"""Shared test fixtures: the real data in ../shared (datasets, papers' reference checkpoints)."""
import os

# One torch/OpenMP thread per process, here and in every command a test starts: on a machine loaded by other jobs two
# threads spin-wait on each other and a step takes 10-30x longer (measured), while one thread costs ~1.5x when idle.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('LWSR_SHARED', os.path.join(os.path.dirname(REPO), 'shared'))


def shared_path(*parts):
    """Path under ../shared (the test data and reference weights, docs/data_sources.md); the test is skipped with
    one line naming the path and the command that fetches it when it is missing."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        dest = '../shared' if 'LWSR_SHARED' not in os.environ else SHARED
        pytest.skip(f'{path} is missing: fetch the test data with `python scripts/get_test_data.py --dest {dest}` '
                    '(docs/data_sources.md), or point LWSR_SHARED at a copy.')
    return path


@pytest.fixture(scope='session')
def shared():
    return shared_path


@pytest.fixture(scope='session')
def datasets_dir():
    return shared_path('datasets')


def bf16_upscaler(net, **kwargs):
    """``Upscaler(net, precision='bf16')``, as ``lwsr-upscale --bf16`` runs it (on a CPU without native bf16 through
    the emulated bf16 kernels, after a warning, so its bf16 arithmetic is still checked)."""
    from lwsr_plugin.inference import Upscaler
    return Upscaler(net, precision='bf16', **kwargs)
