"""The data manifest and scripts/get_test_data.py: ../shared verifies as it is, the manifest is what its generator makes
from ../shared (and agrees with SHA256SUMS and the anchors' PROVENANCE.md), a changed or missing file is named with
its fix, downloads are checked before they are renamed into place, and a test whose data is absent is skipped."""
import os
import shutil
import sys

import cv2
import pytest

from _utils import PY, run
from conftest import REPO, SHARED, shared_path

sys.path.insert(0, os.path.join(REPO, 'scripts'))
import get_test_data  # noqa: E402

from lwsr_plugin.data import manifest  # noqa: E402

SCRIPT = os.path.join(REPO, 'scripts', 'get_test_data.py')


def test_shared_verifies_as_it_is():
    shared_path('datasets')
    proc = run([PY, SCRIPT, '--verify-only', '--dest', SHARED], cwd=REPO)
    count = len(manifest.load(get_test_data.MANIFEST)['files'])
    assert proc.stdout.strip() == f'get_test_data: {count} of {count} files verify under {os.path.abspath(SHARED)}.'


def test_manifest_is_generated_from_shared_and_agrees_with_its_published_hashes():
    shared_path('datasets')
    built = get_test_data.build_manifest(SHARED)
    assert built == manifest.load(get_test_data.MANIFEST)
    in_sums, in_provenance = get_test_data.check_published_hashes(SHARED, built['files'])
    assert len(in_sums) == 777 and len(in_provenance) == 10  # every PNG; the IMDN/IDN/s-LWSR files they list
    assert all(e['licence'] in built['licences'] for e in built['files'].values())
    assert all(e['url'] or e['derived'] for e in built['files'].values())


def test_a_changed_and_a_missing_file_are_named_with_the_fix(tmp_path):
    shutil.copytree(shared_path('datasets', 'Set5', 'HR'), tmp_path / 'datasets' / 'Set5' / 'HR')
    bird = tmp_path / 'datasets' / 'Set5' / 'HR' / 'bird.png'
    data = bytearray(bird.read_bytes())
    data[len(data) // 2] ^= 1
    bird.write_bytes(bytes(data))
    (tmp_path / 'datasets' / 'Set5' / 'HR' / 'woman.png').unlink()
    proc = run([PY, SCRIPT, '--verify-only', '--dest', str(tmp_path), '--only', 'datasets/Set5/HR',
                '--only', 'anchors/slwsr/ref_bird_x4_sr_rgb0to255_float.npy'], cwd=REPO, check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and len(lines) == 4, proc.stdout
    assert lines[0].startswith('anchors/slwsr/ref_bird_x4_sr_rgb0to255_float.npy: absent; a reference output')
    assert lines[1].startswith("datasets/Set5/HR/bird.png: its SHA-256 is not the manifest's")
    assert lines[2].startswith('datasets/Set5/HR/woman.png: missing. Fix: run `python scripts/get_test_data.py '
                               f'--dest {tmp_path}` (source: https://raw.githubusercontent.com/JingyunLiang/SwinIR/')
    assert lines[3] == (f'get_test_data: 3 of 6 files verify under {tmp_path}; 1 missing, 1 wrong; 1 derived '
                        'reference outputs absent (the tests that read them skip).')


def test_downloads_are_checked_before_they_are_renamed_into_place(tmp_path):
    files = manifest.load(get_test_data.MANIFEST)['files']
    baby = dict(files['datasets/Set5/HR/baby.png'], url='file://' + shared_path('datasets', 'Set5', 'HR', 'baby.png'))
    assert get_test_data.fetch(str(tmp_path), 'datasets/Set5/HR/baby.png', baby) is None
    assert manifest.problem(str(tmp_path), 'datasets/Set5/HR/baby.png', baby) is None
    wrong = dict(files['datasets/Set5/HR/bird.png'], url=baby['url'])
    assert 'not the manifest' in get_test_data.fetch(str(tmp_path), 'datasets/Set5/HR/bird.png', wrong)
    assert os.listdir(tmp_path / 'datasets' / 'Set5' / 'HR') == ['baby.png']
    # T91 is published as BMP: the download is checked by its git blob, the PNG written from it by its pixels
    bmp = tmp_path / 't1.bmp'
    cv2.imwrite(str(bmp), cv2.imread(shared_path('datasets', 'T91', 't1.png')))
    t1 = dict(files['datasets/T91/t1.png'], url=f'file://{bmp}', source_git_blob=manifest.git_blob_id(bmp.read_bytes()))
    assert get_test_data.fetch(str(tmp_path), 'datasets/T91/t1.png', t1) is None
    assert manifest.problem(str(tmp_path), 'datasets/T91/t1.png', t1) is None


def test_a_test_whose_data_is_absent_is_skipped_with_the_command():
    with pytest.raises(pytest.skip.Exception, match=r'no_such_file is missing: fetch the test data with '
                       r'`python scripts/get_test_data.py --dest '):
        shared_path('datasets', 'no_such_file')
