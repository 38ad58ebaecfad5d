"""Fuzzing of the readers of user-supplied files (.caffemodel, .pth, .safetensors, .state): a seeded sample of
scripts/fuzz_readers.py's mutations (byte flips, truncations, insertions). Every mutated file is accepted or answered
with the reader's one-line error naming the file: no other exception (a traceback), no time-out, no hang, no crash.
The script runs 200 per reader (docs/reliability.md has the numbers)."""
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'scripts'))
import fuzz_readers  # noqa: E402

N_PER_READER = 30


@pytest.fixture(scope='module')
def sources(tmp_path_factory, shared):
    shared('anchors', 'idn', 'IDN_x2.caffemodel')  # fails (not skips) without ../shared
    return fuzz_readers.make_sources(str(tmp_path_factory.mktemp('fuzz_sources')))


def test_mutations_are_deterministic_and_varied():
    data = bytes(range(256)) * 40
    first = [fuzz_readers.mutation(data, 7, i) for i in range(30)]
    assert first == [fuzz_readers.mutation(data, 7, i) for i in range(30)]
    kinds = {desc.split()[0] for _, desc in first}
    assert kinds == {'flip', 'truncate', 'insert'}
    assert all(m != data for m, _ in first)


@pytest.mark.slow
def test_readers_survive_mutated_files(sources, tmp_path):
    def one(reader):
        work = tmp_path / reader
        work.mkdir()
        return reader, fuzz_readers.fuzz(reader, sources[reader], N_PER_READER, 13, str(work))

    with ThreadPoolExecutor(2) as pool:  # each reader in its own worker process
        results = dict(pool.map(one, fuzz_readers.READERS))
    for reader, res in results.items():
        row = fuzz_readers.summarize(reader, res)
        assert row['files'] == N_PER_READER, row
        bad = {i: r for i, r in res.items() if r['outcome'] not in ('accepted', 'error')}
        assert not bad, (reader, bad)
        assert row['error'] >= N_PER_READER // 3, row  # the sample reached the readers' error paths
