"""Shared test fixtures: the real data in ../shared (datasets, papers' reference checkpoints)."""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('LWSR_SHARED', os.path.join(os.path.dirname(REPO), 'shared'))


def shared_path(*parts):
    """Path under ../shared; fails (never skips) when it is missing: CI always has ../shared beside the clone."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.fail(f'{path} is missing: tests need ../shared beside the repository (or LWSR_SHARED=<dir>).')
    return path


@pytest.fixture(scope='session')
def shared():
    return shared_path


@pytest.fixture(scope='session')
def datasets_dir():
    return shared_path('datasets')
