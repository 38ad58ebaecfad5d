"""Reliability suite: every bad input is refused with one line naming the file or option, what
is wrong and the fix; exit status 2 for usage errors; no traceback; nothing the user had changes (files hashed before
and after). Writers never leave a half-written file under its final name, and a full disk stops a run with a message.

The option-file cases call ``lwsr_plugin.train.main`` in this process (the check runs before BasicSR starts); cases
whose exit status or traceback-freedom only the real command shows run as subprocesses, in parallel batches. Together
with tests/test_bad_input.py they form the >= 40 cases of docs/reliability.md."""
import glob
import hashlib
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch
import yaml

from _utils import BIN, PY, TINY, write_options
from conftest import REPO

MARKER = 'pwned-marker'


# ------------------------------------------------------------------------------------------------------- helpers
def digest(root):
    """{relative path: sha256} of every regular file under ``root`` (links to ../shared are not followed)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with open(path, 'rb') as f:
                    out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


class Evil:
    """A pickle that would create ``MARKER`` in the working directory if anything unpickled it with code allowed."""

    def __reduce__(self):
        return (os.system, (f'touch {MARKER}', ))


def save_evil(path):
    torch.save({'params': Evil()}, path)


def tiny_state_dict(**kwargs):
    from lwsr_plugin.archs.imdn_arch import IMDN
    torch.manual_seed(0)
    return IMDN(**dict(dict(num_feat=8, num_block=1, upscale=4), **kwargs)).state_dict()


@pytest.fixture
def work(tmp_path, datasets_dir):
    """A working folder: ``datasets`` -> ../shared/datasets, ``data/HR`` + ``data/LR`` (two Set5 pairs, x4) and the
    tiny IMDN option file reading them (``opt.yml``), and a valid ``net.pth``."""
    os.symlink(datasets_dir, tmp_path / 'datasets')
    for sub in ('HR', 'LR'):
        (tmp_path / 'data' / sub).mkdir(parents=True)
    for name in ('baby', 'bird'):
        shutil.copy(os.path.join(datasets_dir, 'Set5', 'HR', f'{name}.png'), tmp_path / 'data' / 'HR')
        shutil.copy(os.path.join(datasets_dir, 'Set5', 'LR_bicubic', 'X4', f'{name}x4.png'), tmp_path / 'data' / 'LR')
    torch.save({'params': tiny_state_dict()}, tmp_path / 'net.pth')
    return tmp_path


def options(work, filename='opt.yml', **updates):
    """TINY reading ``data/`` with dotted-key updates; the value ``DELETE`` removes a key."""
    base = {'datasets.train.dataroot_gt': 'data/HR', 'datasets.train.dataroot_lq': 'data/LR',
            'datasets.train.dataset_enlarge_ratio': 10, 'datasets.val.dataroot_gt': 'data/HR',
            'datasets.val.dataroot_lq': 'data/LR'}
    base.update(updates)
    deletes = [k for k, v in base.items() if v == 'DELETE']
    path = write_options(work / filename, **{k: v for k, v in base.items() if v != 'DELETE'})
    if deletes:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
        for dotted in deletes:
            node = opt
            keys = dotted.split('.')
            for k in keys[:-1]:
                node = node[k]
            del node[keys[-1]]
        with open(path, 'w', encoding='utf-8') as f:
            yaml.safe_dump(opt, f, sort_keys=False)
    return path


def refused(monkeypatch, capsys, work, opt, entry='train', env=None):
    """Run ``lwsr-train``/``lwsr-test`` in this process on ``opt``; assert status 2, one ``lwsr_plugin`` line, no
    traceback, no experiments/results folder and no changed file. Returns the line."""
    import importlib
    main = importlib.import_module(f'lwsr_plugin.{entry}').main
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, 'argv', [f'lwsr-{entry}'])
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    before = digest(work)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(['-opt', str(opt)])
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.startswith('lwsr_plugin')]
    assert exc.value.code == 2, out
    assert len(lines) == 1 and 'Traceback' not in out.err + out.out, out
    assert not os.path.exists(work / 'experiments') and not os.path.exists(work / 'results')
    assert digest(work) == before
    assert not os.path.exists(work / MARKER)
    return lines[0]


def run_all(jobs):
    """Run ``(cmd, cwd, env)`` subprocesses two at a time; returns CompletedProcess objects in order."""
    def one(job):
        cmd, cwd, env = job
        full = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', **(env or {}))
        return subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=900)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, jobs))


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ''


# ------------------------------------------------------------------------------- option files and training data
def _truncate(path, keep=0.5):
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])


TRAIN_CASES = {
    # case: (setup(work) -> option updates, expected part of the line (cause and fix))
    'yaml_not_mapping': (lambda w: 'LIST', 'not a BasicSR option file (no top-level `name:`)'),
    'missing_scale': (lambda w: {'scale': 'DELETE'}, 'scale: missing. Add `scale: 4` at the top level'),
    'missing_total_iter': (lambda w: {'train.total_iter': 'DELETE'}, 'train.total_iter: missing. Add the number'),
    'total_iter_not_number': (lambda w: {'train.total_iter': 'many'},
                              "train.total_iter: 'many' is not a positive whole number"),
    'missing_gt_size': (lambda w: {'datasets.train.gt_size': 'DELETE'},
                        'datasets.train.gt_size: missing (PairedImageDataset needs it for training). Add'),
    'missing_optim_g': (lambda w: {'train.optim_g': 'DELETE'}, 'train.optim_g: missing (or without `type`). Add'),
    'unsupported_optimizer': (lambda w: {'train.optim_g.type': 'SGD'},
                              "train.optim_g.type: 'SGD' is not supported by BasicSR 1.4.2 (Adam only). Use"),
    'missing_loss': (lambda w: {'train.pixel_opt': 'DELETE'}, 'train.pixel_opt: missing (and no perceptual_opt)'),
    'unknown_loss': (lambda w: {'train.pixel_opt.type': 'L2Loss'},
                     "train.pixel_opt.type: 'L2Loss' is not registered in BasicSR's LOSS_REGISTRY; did you mean"),
    'unknown_loss_kwarg': (lambda w: {'train.pixel_opt.weight': 1.0},
                           "train.pixel_opt: ['weight'] not accepted by L1Loss. It takes"),
    'unknown_dataset_type': (lambda w: {'datasets.train.type': 'PairedDataset'},
                             "datasets.train.type: 'PairedDataset' is not registered"),
    'unknown_metric': (lambda w: {'val.metrics.psnr.type': 'psnr'},
                       "val.metrics.psnr.type: 'psnr' is not registered in BasicSR's METRIC_REGISTRY"),
    'unknown_io_backend': (lambda w: {'datasets.train.io_backend': {'type': 'zip'}},
                           "datasets.train.io_backend.type: 'zip' is not a BasicSR backend. Use `disk`"),
    'cosine_shorter_than_run': (lambda w: {'train.scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [3],
                                                               'restart_weights': [1]}},
                                'train.scheduler.periods: [3] sum to 3, less than train.total_iter 6'),
    'no_train_set': (lambda w: {'datasets.train': 'DELETE'}, 'datasets.train: missing; lwsr-train needs a training'),
    'unknown_phase': (lambda w: {'datasets.training': dict(TINY['datasets']['val'])},
                      'datasets.training: lwsr-train knows the phases `train` and `val*` only'),
    'missing_use_tb_logger': (lambda w: {'logger.use_tb_logger': 'DELETE'}, 'logger.use_tb_logger: missing'),
    'lr_folder_of_other_scale': (lambda w: {'datasets.train.dataroot_lq': 'datasets/Set5/LR_bicubic/X2',
                                            'datasets.train.dataroot_gt': 'datasets/Set5/HR',
                                            'datasets.train.filename_tmpl': '{}x2'},
                                 'not GT / scale 4 (the LR image looks like x2). Point dataroot_lq to the LR folder'),
    'empty_dataset_folder': (lambda w: (os.makedirs(w / 'empty'), {'datasets.train.dataroot_gt': 'empty'})[1],
                             'holds no images. Point it to the folder of the HR (GT) images'),
    'non_image_in_folder': (lambda w: ((w / 'data' / 'HR' / 'notes.txt').write_text('x'), {})[1],
                            'data/HR/notes.txt is not an image (BasicSR would pair it with an LR file). Move it out'),
    'truncated_png_in_folder': (lambda w: (_truncate(w / 'data' / 'HR' / 'bird.png'), {})[1],
                                'data/HR/bird.png is a truncated PNG (no IEND chunk at its end). Replace the file'),
    'empty_png_in_folder': (lambda w: ((w / 'data' / 'LR' / 'birdx4.png').write_bytes(b''), {})[1],
                            'data/LR/birdx4.png is empty (0 bytes). Replace the file'),
    'lr_partner_missing': (lambda w: {'datasets.train.filename_tmpl': '{}_x4'},
                           "no LR image", ),
    'stale_meta_info_file': (lambda w: ((w / 'meta.txt').write_text('baby.png (512,512,3)\nzebra.png (8,8,3)\n'),
                                        {'datasets.train.meta_info_file': 'meta.txt'})[1],
                             'lists zebra.png, which is not in'),
    'gt_size_not_multiple': (lambda w: {'datasets.train.gt_size': 30},
                             'datasets.train.gt_size: 30 is not a multiple of scale 4, so the LR patch would be '
                             '7.5 px. '
                             'Use 28 or 32'),
    'gt_size_above_smallest': (lambda w: {'datasets.train.gt_size': 300},
                               'datasets.train.gt_size: 300 is larger than the smallest training image (bird.png: '
                               '288x288). Use gt_size 288 or less'),
    'batch_larger_than_set': (lambda w: {'datasets.train.batch_size_per_gpu': 32},
                              'a batch of 32 is larger than the training set (2 pairs x dataset_enlarge_ratio 10)'),
    'accumulated_batch_larger_than_set': (lambda w: {'model_type': 'LWSRModel', 'train.accumulate': 4,
                                                     'datasets.train.batch_size_per_gpu': 8},
                                          'a batch of 32 (4 micro-batches, train.accumulate) is larger than the '
                                          'training set'),
    'bad_on_corrupt': (lambda w: {'datasets.train.on_corrupt': 'ignore'}, "on_corrupt: 'ignore' is not `stop` or"),
    'pretrain_random_bytes': (lambda w: ((w / 'junk.pth').write_bytes(os.urandom(5000)),
                                         {'path.pretrain_network_g': 'junk.pth'})[1],
                              'junk.pth: not a readable weights-only checkpoint'),
    'pretrain_truncated_pth': (lambda w: (_truncate(w / 'net.pth'), {'path.pretrain_network_g': 'net.pth'})[1],
                               'net.pth: not a readable weights-only checkpoint'),
    'pretrain_truncated_safetensors': (
        lambda w: (_save_st(w / 'net.safetensors', truncate=True), {'path.pretrain_network_g': 'net.safetensors'})[1],
        'net.safetensors: damaged: its bytes no longer match the SHA-256'),
    'pretrain_not_a_state_dict': (lambda w: (torch.save({'params': [1, 2, 3]}, w / 'list.pth'),
                                             {'path.pretrain_network_g': 'list.pth'})[1],
                                  'list.pth: holds list, not a state dict of tensors'),
    'pretrain_nan_weights': (lambda w: (_save_nan(w / 'nan.pth'), {'path.pretrain_network_g': 'nan.pth'})[1],
                             'NaN/Inf values of 576; the run that saved it had diverged. Use an earlier checkpoint'),
}


def _save_st(path, truncate=False):
    from lwsr_plugin.fileio import save_safetensors
    save_safetensors({f'params.{k}': v.contiguous() for k, v in tiny_state_dict().items()}, str(path))
    if truncate:
        _truncate(path, 0.6)


def _save_nan(path):
    state = tiny_state_dict()
    state['IMDB1.c1.weight'][0] = float('nan')
    torch.save({'params': state}, path)


@pytest.mark.parametrize('case', sorted(TRAIN_CASES))
def test_bad_training_input_is_one_line(case, work, monkeypatch, capsys):
    setup, expected = TRAIN_CASES[case]
    updates = setup(work)
    if updates == 'LIST':
        opt = work / 'opt.yml'
        opt.write_text('- just\n- a list\n')
    else:
        opt = options(work, **updates)
    line = refused(monkeypatch, capsys, work, opt)
    assert expected in line, line


def test_yaml_syntax_error_names_the_line(work, monkeypatch, capsys):
    opt = work / 'opt.yml'
    opt.write_text('name: x\nscale: 4\nnetwork_g:\n  type: IMDN\n   upscale: 4\n')
    line = refused(monkeypatch, capsys, work, opt)
    assert line.endswith(f'{opt} line 5: not valid YAML (mapping values are not allowed here). Fix the syntax.')


def test_pickle_that_runs_code_is_refused_whatever_the_environment(work, monkeypatch, capsys):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns torch.load's default back to full unpickling; an explicit
    ``weights_only=True`` (every call in the plugin) wins over it, so the pickle's code never runs."""
    save_evil(work / 'evil.pth')
    opt = options(work, **{'path.pretrain_network_g': 'evil.pth'})
    line = refused(monkeypatch, capsys, work, opt, env={'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD': '1'})
    assert 'evil.pth: not a readable weights-only checkpoint (UnpicklingError: ' in line
    assert 'GLOBAL posix.system' in line and 'nothing in it was run' in line
    assert not os.path.exists(work / MARKER)


def test_every_torch_load_is_weights_only():
    """The guarantee above needs ``weights_only=True`` written at every call site in the package."""
    calls = []
    for path in glob.glob(os.path.join(REPO, 'lwsr_plugin', '**', '*.py'), recursive=True):
        with open(path, encoding='utf-8') as f:
            text = f.read()
        for m in re.finditer(r'torch\.load\(', text):
            depth, end = 1, m.end()
            while depth:  # up to the call's own closing parenthesis
                depth += {'(': 1, ')': -1}.get(text[end], 0)
                end += 1
            calls.append((os.path.relpath(path, REPO), text[m.start():end]))
    assert calls, 'no torch.load call found: the scan is broken'
    assert [c for c in calls if 'weights_only=True' not in c[1]] == []


def test_test_entry_names_a_truncated_test_image(work, monkeypatch, capsys):
    _truncate(work / 'data' / 'LR' / 'babyx4.png', 0.7)
    opt = write_options(work / 'test.yml', base={
        'name': 'test_tiny', 'model_type': 'SRModel', 'scale': 4, 'num_gpu': 0,
        'datasets': {'test_1': dict(TINY['datasets']['val'], dataroot_gt='data/HR', dataroot_lq='data/LR')},
        'network_g': TINY['network_g'], 'path': {'pretrain_network_g': 'net.pth', 'strict_load_g': True},
        'val': {'save_img': False}})
    line = refused(monkeypatch, capsys, work, opt, entry='test')
    assert 'datasets.test_1.dataroot_lq:' in line and 'babyx4.png is a truncated PNG' in line


# --------------------------------------------------------------------------------------------------------- LMDBs
@pytest.fixture
def lmdbs(work, datasets_dir):
    """``data/gt.lmdb`` and ``data/lq.lmdb`` (Set5 baby + bird, x4) by BasicSR's own writer."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    names = ['baby', 'bird']
    make_lmdb_from_imgs(os.path.join(datasets_dir, 'Set5', 'HR'), str(work / 'data' / 'gt.lmdb'),
                        [f'{n}.png' for n in names], names)
    make_lmdb_from_imgs(os.path.join(datasets_dir, 'Set5', 'LR_bicubic', 'X4'), str(work / 'data' / 'lq.lmdb'),
                        [f'{n}x4.png' for n in names], names)
    return work / 'data' / 'gt.lmdb', work / 'data' / 'lq.lmdb'


def lmdb_options(work, **updates):
    lm = {'datasets.train.dataroot_gt': 'data/gt.lmdb', 'datasets.train.dataroot_lq': 'data/lq.lmdb',
          'datasets.train.io_backend': {'type': 'lmdb'}, 'datasets.train.filename_tmpl': '{}'}
    return options(work, **dict(lm, **updates))


def test_truncated_lmdb_is_refused_before_training(work, lmdbs, monkeypatch, capsys):
    _truncate(lmdbs[0] / 'data.mdb', 0.5)
    line = refused(monkeypatch, capsys, work, lmdb_options(work))
    assert 'datasets.train.dataroot_gt:' in line and 'gt.lmdb/data.mdb: truncated (' in line
    assert 'Copy it again or rebuild it with --overwrite' in line


def test_stale_lmdb_meta_info_is_refused(work, lmdbs, monkeypatch, capsys):
    with open(lmdbs[1] / 'meta_info.txt', 'a') as f:
        f.write('zebra.png (10,10,3) 1\n')
    with open(lmdbs[0] / 'meta_info.txt', 'a') as f:
        f.write('zebra.png (40,40,3) 1\n')
    line = refused(monkeypatch, capsys, work, lmdb_options(work))
    assert "lists 1 keys that data.mdb does not hold (e.g. 'zebra'): a stale meta_info.txt. Rebuild" in line


def test_lmdbs_with_different_keys_are_refused(work, lmdbs, monkeypatch, capsys):
    import lmdb
    env = lmdb.open(str(lmdbs[1]), map_size=2**30)
    with env.begin(write=True) as txn:
        txn.put(b'extra', txn.get(b'bird'))
    env.close()
    with open(lmdbs[1] / 'meta_info.txt', 'a') as f:
        f.write('extra.png (72,72,3) 1\n')
    line = refused(monkeypatch, capsys, work, lmdb_options(work))
    assert "the GT and LR LMDBs hold different keys (1 differ; 'extra' is in the LR LMDB only). Build both" in line


# ------------------------------------------------------------------------------- real commands, in subprocesses
@pytest.mark.slow
def test_real_commands_exit_status_and_no_traceback(work, lmdbs, shared):
    """Exit status and stderr of the installed commands: usage errors 2, runs that stop 1, never a traceback (nor a
    SIGBUS), and the inputs unchanged."""
    import lmdb
    (work / 'bad.yml').write_text('name: x\nscale: 4\ndatasets:\n  train: {type: X\n')
    # garbage that is no zip and no pickle (the message names the reader's error, which depends on the bytes)
    (work / 'state.state').write_bytes(random.Random(3000).randbytes(3000))
    resume_opt = options(work, 'resume.yml', **{'path.resume_state': 'state.state'})
    # a record of the LR LMDB that does not decode: found only when training reads it
    corrupt = work / 'corrupt'
    shutil.copytree(work / 'data', corrupt)
    env = lmdb.open(str(corrupt / 'lq.lmdb'), map_size=2**30)
    with env.begin(write=True) as txn:
        txn.put(b'bird', b'\x89PNG\r\n\x1a\n' + os.urandom(500))
    env.close()
    corrupt_opt = options(work, 'corrupt.yml', **{
        'datasets.train.dataroot_gt': 'corrupt/gt.lmdb', 'datasets.train.dataroot_lq': 'corrupt/lq.lmdb',
        'datasets.train.io_backend': {'type': 'lmdb'}, 'datasets.train.filename_tmpl': '{}', 'name': 'corrupt_run'})
    truncated = work / 'trunc'
    shutil.copytree(work / 'data', truncated)
    _truncate(truncated / 'lq.lmdb' / 'data.mdb', 0.5)
    caffemodel = work / 'IDN_x2.caffemodel'
    shutil.copy(shared('anchors', 'idn', 'IDN_x2.caffemodel'), caffemodel)
    os.symlink(caffemodel, work / 'link.pth')
    save_evil(work / 'evil.pth')
    lr_dir = work / 'data' / 'LR'
    os.symlink(lr_dir, work / 'lr_link')
    before = digest(work)
    jobs = {
        'yaml': ([os.path.join(BIN, 'lwsr-train'), '-opt', 'bad.yml'], None),
        'resume_state_garbage': ([os.path.join(BIN, 'lwsr-train'), '-opt', resume_opt], None),
        'resume_state_garbage_debug': ([os.path.join(BIN, 'lwsr-train'), '-opt', resume_opt, '--debug'], None),
        'corrupt_lmdb_record': ([os.path.join(BIN, 'lwsr-train'), '-opt', corrupt_opt], None),
        'check_lmdb_truncated': ([os.path.join(BIN, 'lwsr-check-lmdb'), 'trunc/gt.lmdb', 'trunc/lq.lmdb', '--scales',
                                  '4'], None),
        'convert_idn_same_path': ([os.path.join(BIN, 'lwsr-convert-idn'), 'IDN_x2.caffemodel', 'IDN_x2.caffemodel'],
                                  None),
        'convert_idn_via_link': ([os.path.join(BIN, 'lwsr-convert-idn'), 'IDN_x2.caffemodel', 'link.pth'], None),
        'upscale_pickle_code': ([os.path.join(BIN, 'lwsr-upscale'), 'data/LR', '-o', 'sr', '--arch', 'IMDN',
                                 '--scale', '4', '--ckpt', 'evil.pth'], {'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD': '1'}),
        'upscale_output_via_link': ([os.path.join(BIN, 'lwsr-upscale'), 'data/LR', '-o', 'lr_link/../LR', '--arch',
                                     'IMDN', '--scale', '4'], None),
        'export_onto_ckpt': ([os.path.join(BIN, 'lwsr-export'), '--arch', 'IMDN', '--scale', '4', '--ckpt', 'net.pth',
                              '-o', 'net.pth'], None),
    }
    procs = dict(zip(jobs, run_all([(cmd, work, env) for cmd, env in jobs.values()])))
    expected = {
        'yaml': (2, 'bad.yml line 5: not valid YAML'),
        'resume_state_garbage': (1, 'lwsr_plugin: training stopped: RuntimeError: path.resume_state: state.state '
                                    'cannot be read ('),
        'resume_state_garbage_debug': (1, 'RuntimeError: path.resume_state: state.state cannot be read'),
        'corrupt_lmdb_record': (1, "lwsr_plugin: training stopped: DatasetReadError: datasets.train: record 'bird' of "
                                   "corrupt/lq.lmdb cannot be decoded (truncated or corrupt image). Replace the file, "
                                   "or set `datasets.train.on_corrupt: skip`"),
        'check_lmdb_truncated': (2, 'trunc/lq.lmdb/data.mdb: truncated ('),
        'convert_idn_same_path': (2, 'error: output IDN_x2.caffemodel is the input IDN_x2.caffemodel; writing it '
                                     'would destroy the input. Give another output name'),
        'convert_idn_via_link': (2, 'error: output link.pth is the input IDN_x2.caffemodel'),
        'upscale_pickle_code': (2, 'evil.pth: not a readable weights-only checkpoint (UnpicklingError: Trying to '
                                   'load unsupported GLOBAL posix.system'),
        'upscale_output_via_link': (2, 'output folder lr_link/../LR is the input folder data/LR (directly or through a '
                                       'link)'),
        'export_onto_ckpt': (2, 'lwsr-export: -o net.pth is (or leads to) the input --ckpt net.pth'),
    }
    for name, proc in procs.items():
        status, message = expected[name]
        assert proc.returncode == status, (name, proc.returncode, proc.stderr[-3000:])
        assert message in (proc.stderr if name.endswith('_debug') else last_line(proc.stderr)), \
            (name, proc.stderr[-3000:])
        if name.endswith('_debug'):  # --debug is the one way to get the stack
            assert 'Traceback' in proc.stderr, (name, proc.stderr[-3000:])
        else:
            assert 'Traceback' not in proc.stderr + proc.stdout, (name, proc.stderr[-3000:])
    after = digest(work)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    # only the stopped training run wrote anything (its experiments/ folder); no input and no earlier output changed
    assert {k.split(os.sep)[0] for k in changed} <= {'experiments', 'tb_logger'}, changed
    assert not os.path.exists(work / MARKER) and not os.path.exists(work / 'sr')


# --------------------------------------------------------------------------------------------------- lwsr-upscale
def upscale(argv, capsys):
    from lwsr_plugin.cli import upscale as upscale_cli
    capsys.readouterr()
    code = upscale_cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert 'Traceback' not in out.err
    return code, out


@pytest.fixture
def images(tmp_path, datasets_dir):
    src = tmp_path / 'in'
    src.mkdir()
    shutil.copy(os.path.join(datasets_dir, 'Set5', 'LR_bicubic', 'X4', 'birdx4.png'), src / 'bird.png')
    torch.save({'params': tiny_state_dict()}, tmp_path / 'net.pth')
    return src


def _tiny(tmp_path, *extra):
    return ['--arch', 'IMDN', '--scale', '4', '--arch-kwarg', 'num_feat=8', '--arch-kwarg', 'num_block=1',
            '--ckpt', tmp_path / 'net.pth', *extra]


def test_upscale_usage_errors(tmp_path, images, capsys):
    before = digest(tmp_path)
    cases = [
        (['-o', tmp_path / 'sr', '--outscale', '0'], '--outscale 0: must be > 0 and at most 64'),
        (['-o', tmp_path / 'sr', '--tile', '-8'], 'tile and overlap must be >= 0'),
        (['-o', tmp_path / 'in' / 'bird.png' / 'sub'], 'is not a writable folder. Choose a writable output folder'),
        (['-o', '/proc/lwsr_sr'], '-o /proc/lwsr_sr: '),  # root may write anywhere, but not there
    ]
    for extra, message in cases:
        code, out = upscale([images, *_tiny(tmp_path, *extra)], capsys)
        assert code == 2 and message in out.err, (extra, out)
    empty = tmp_path / 'empty'
    empty.mkdir()
    code, out = upscale([empty, '-o', tmp_path / 'sr', *_tiny(tmp_path)], capsys)
    assert code == 2 and f'no image files in {empty}' in out.err
    for name, data, message in [('junk.pth', os.urandom(3000), 'junk.pth: not a readable weights-only checkpoint'),
                                ('nan.pth', None, 'holds 72 NaN/Inf values of 576'),
                                ('cut.safetensors', 'st', 'cut.safetensors: damaged')]:
        path = tmp_path / name
        if data is None:
            _save_nan(path)
        elif data == 'st':
            _save_st(path, truncate=True)
        else:
            path.write_bytes(data)
        before[name] = digest(tmp_path)[name]
        argv = [images, '-o', tmp_path / 'sr', '--arch', 'IMDN', '--scale', '4', '--arch-kwarg', 'num_feat=8',
                '--arch-kwarg', 'num_block=1', '--ckpt', path, '--param-key', 'params']
        code, out = upscale(argv, capsys)
        assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, out
    assert digest(tmp_path) == before and not os.path.exists(tmp_path / 'sr')


def test_upscale_tiny_and_huge_images(tmp_path, images, capsys):
    cv2.imwrite(str(images / 'one.png'), np.full((1, 1, 3), 200, np.uint8))
    # a PNG whose header claims 100000 x 100000 pixels: refused from the header, never decoded
    header = b'\x89PNG\r\n\x1a\n' + b'\x00\x00\x00\rIHDR' + (100000).to_bytes(4, 'big') * 2 + b'\x08\x02\x00\x00\x00'
    (images / 'huge.png').write_bytes(header + b'\x00' * 4 + b'\x00\x00\x00\x00IEND\xaeB`\x82')
    before = digest(images)
    code, out = upscale([images, '-o', tmp_path / 'sr', *_tiny(tmp_path)], capsys)
    assert code == 1 and '2 written' in out.out and '1 failed' in out.out
    assert 'huge.png: 100000x100000 pixels (x4 output 400000x400000) is more than this command holds in memory' \
        in out.err and 'cut the image into parts first' in out.err
    assert cv2.imread(str(tmp_path / 'sr' / 'one.png')).shape == (4, 4, 3)
    assert digest(images) == before


def test_upscale_tiles_by_itself_when_memory_is_short(tmp_path, images, capsys, monkeypatch):
    from lwsr_plugin.cli import upscale as upscale_cli
    code, _ = upscale([images, '-o', tmp_path / 'whole', *_tiny(tmp_path)], capsys)
    assert code == 0
    monkeypatch.setattr(upscale_cli, 'memory_budget', lambda device: 10**6)  # bird x4 needs ~5 MB whole
    monkeypatch.setattr(upscale_cli, 'AUTO_TILE', 32)
    code, out = upscale([images, '-o', tmp_path / 'tiled', *_tiny(tmp_path)], capsys)
    assert code == 0 and 'tiling it (32 px tiles)' in out.err
    whole = cv2.imread(str(tmp_path / 'whole' / 'bird.png')).astype(int)
    tiled = cv2.imread(str(tmp_path / 'tiled' / 'bird.png')).astype(int)
    assert whole.shape == tiled.shape and np.abs(whole - tiled).max() <= 2


# ---------------------------------------------------------------------------------------------- lwsr-convert-idn
def test_convert_idn_refuses_nan_weights_hard_link_and_bad_folder(tmp_path, shared, capsys):
    from lwsr_plugin.convert import caffe_idn
    data = open(shared('anchors', 'idn', 'IDN_x2.caffemodel'), 'rb').read()
    first = caffe_idn.read_caffemodel(shared('anchors', 'idn', 'IDN_x2.caffemodel'))['conv1']['blobs'][0]
    pos = data.index(first.astype('<f4').tobytes()[:16])
    nan = tmp_path / 'nan.caffemodel'
    nan.write_bytes(data[:pos] + np.float32('nan').tobytes() + data[pos + 4:])
    good = tmp_path / 'IDN_x2.caffemodel'
    good.write_bytes(data)
    os.link(good, tmp_path / 'hard.pth')
    (tmp_path / 'file').write_text('x')
    before = digest(tmp_path)
    for argv, status, message in [
            ([nan, tmp_path / 'out.pth'], 1, 'layer conv1 holds 1 NaN/Inf values: the file is damaged. Download'),
            ([good, tmp_path / 'hard.pth'], 2, 'hard.pth is the input'),
            ([good, tmp_path / 'file' / 'out.pth'], 2, 'Choose a writable output path')]:
        assert caffe_idn.main([str(a) for a in argv]) == status
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert digest(tmp_path) == before


# ---------------------------------------------------------------------------------------------------- preparation
def test_prepare_benchmark_refuses_output_that_leads_to_its_input(tmp_path, datasets_dir, capsys):
    from lwsr_plugin.data import benchmark
    hr = tmp_path / 'MySet' / 'HR'
    hr.mkdir(parents=True)
    shutil.copy(os.path.join(datasets_dir, 'Set5', 'HR', 'bird.png'), hr)
    os.symlink(tmp_path / 'MySet', tmp_path / 'alias')
    before = digest(tmp_path)
    assert benchmark.main(['--hr', str(hr), '--out', str(tmp_path / 'alias'), '--overwrite', '--workers', '1']) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'error: {tmp_path / "alias"}: this output is (or holds) the input {hr}, which writing it would ' \
                  'replace; choose another output folder'
    assert digest(tmp_path) == before


# ------------------------------------------------------------------------------------------------------- writers
def _failing_save(real_save, calls_before_failure):
    """``torch.save`` that writes half a file and fails as torch does on a full disk, after some good saves."""
    count = {'n': 0}

    def save(obj, f, *args, **kwargs):
        count['n'] += 1
        if count['n'] <= calls_before_failure:
            return real_save(obj, f, *args, **kwargs)
        import io
        buf = io.BytesIO()
        real_save(obj, buf)
        with open(f, 'wb') as fh:
            fh.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598')

    return save


def test_full_disk_during_save_keeps_the_previous_file(tmp_path, monkeypatch):
    from lwsr_plugin import fileio
    target = tmp_path / 'net_g_latest.pth'
    fileio.atomic_save({'params': tiny_state_dict()}, target)
    good = target.read_bytes()
    monkeypatch.setattr(torch, 'save', _failing_save(torch.save, 0))
    with pytest.raises(fileio.CheckpointWriteError) as exc:
        fileio.atomic_save({'params': tiny_state_dict(num_feat=16)}, target)
    assert str(exc.value).startswith(f'lwsr_plugin: cannot write {target} (RuntimeError: ')
    assert 'The previous complete file is kept' in str(exc.value) and '\n' not in str(exc.value)
    assert target.read_bytes() == good and os.listdir(tmp_path) == ['net_g_latest.pth']


def test_safetensors_short_write_is_caught(tmp_path, monkeypatch):
    import safetensors.torch
    from lwsr_plugin import fileio
    target = tmp_path / 'net_g_5.safetensors'
    tensors = {f'params.{k}': v.contiguous() for k, v in tiny_state_dict().items()}
    fileio.save_safetensors(tensors, target)
    good = target.read_bytes()
    real = safetensors.torch.save_file

    def short(tensors, filename, metadata=None):  # what safetensors reports as success on a full device
        real(tensors, filename, metadata=metadata)
        _truncate(filename, 0.8)

    monkeypatch.setattr(safetensors.torch, 'save_file', short)
    with pytest.raises(fileio.CheckpointWriteError, match='shorter than its header says'):
        fileio.save_safetensors(tensors, target)
    assert target.read_bytes() == good and os.listdir(tmp_path) == ['net_g_5.safetensors']


def test_leftovers_of_killed_saves_are_removed(tmp_path):
    from lwsr_plugin import fileio
    dead = subprocess.run([PY, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f'net_g_5.pth.tmp-{dead_pid}', tmp_path / f'model.onnx.tmp-{dead_pid}.onnx']
    alive = tmp_path / f'net_g_10.pth.tmp-{os.getppid()}'  # a save still running in another process
    for path in stale + [alive]:
        path.write_bytes(b'partial')
    fileio.atomic_save({'params': tiny_state_dict()}, tmp_path / 'net_g_15.pth')
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, 'net_g_15.pth'])


def test_onnx_export_on_full_disk_leaves_no_file(tmp_path, monkeypatch, capsys):
    from lwsr_plugin.cli import export
    out = tmp_path / 'model.onnx'
    out.write_bytes(b'previous export')
    real = torch.onnx.export

    def cut_export(*args, **kwargs):
        real(*args, **kwargs)
        _truncate(args[2], 0.5)

    monkeypatch.setattr(torch.onnx, 'export', cut_export)
    code = export.main(['--arch', 'IMDN', '--scale', '4', '--arch-kwarg', 'num_feat=8', '--arch-kwarg', 'num_block=1',
                        '-o', str(out), '--no-check'])
    err = capsys.readouterr().err
    assert code == 1 and 'cannot write' in err and 'nothing was written under that name' in err, err
    assert out.read_bytes() == b'previous export' and os.listdir(tmp_path) == ['model.onnx']


@pytest.mark.slow
def test_training_runs_full_disk_nan_loss_corrupt_skip_and_archive(work):
    """Four real training runs, two at a time: (a) a full disk at the second checkpoint stops the run with one line
    and keeps the first checkpoint and state; (b) learning rate 1e10 stops with a message, non-zero status and no
    non-finite checkpoint (LWSRModel's guard), and BasicSR's own SRModel stops at the first save whose weights are
    not finite (the plugin's guard) instead of writing NaN checkpoints and exiting 0; (c) with ``on_corrupt: skip`` a
    corrupt image is named and left out, and the existing experiments/<name> is archived by BasicSR's rule, not
    lost."""
    # (a) torch.save fails from the third call on: iteration 1 wrote net_g_1.pth and 1.state
    full = options(work, 'full.yml', name='full_disk', **{'logger.save_checkpoint_freq': 1, 'train.total_iter': 3})
    script = ('import sys, torch; sys.path.insert(0, {tests!r}); import test_reliability as t; '
              'torch.save = t._failing_save(torch.save, 2); from lwsr_plugin.train import main; '
              'sys.exit(main(["-opt", {opt!r}]))').format(tests=os.path.dirname(__file__), opt=full)
    nan = options(work, 'nan.yml', name='nan_lr', model_type='LWSRModel', **{
        'train.optim_g.lr': 1e10, 'train.total_iter': 40, 'train.max_nonfinite_steps': 3,
        'logger.save_checkpoint_freq': 1})
    nan_sr = options(work, 'nan_sr.yml', name='nan_sr', model_type='SRModel', **{
        'train.optim_g.lr': 1e10, 'train.total_iter': 40, 'logger.save_checkpoint_freq': 1})
    shutil.copytree(work / 'data', work / 'skipdata')
    bad = work / 'skipdata' / 'HR' / 'bird.png'
    data = bytearray(bad.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = os.urandom(64)  # inside IDAT: header and IEND intact, CRC wrong
    bad.write_bytes(bytes(data))
    assert cv2.imread(str(bad)) is None
    skip = options(work, 'skip.yml', name='skip_run', **{'datasets.train.on_corrupt': 'skip',
                                                         'datasets.train.dataroot_gt': 'skipdata/HR',
                                                         'datasets.train.dataroot_lq': 'skipdata/LR',
                                                         'datasets.val.dataroot_gt': 'datasets/Set5/HR',
                                                         'datasets.val.dataroot_lq': 'datasets/Set5/LR_bicubic/X4'})
    old = work / 'experiments' / 'skip_run' / 'models'
    old.mkdir(parents=True)
    (old / 'net_g_100.pth').write_bytes(b'an earlier run')
    procs = run_all([([PY, '-c', script], work, None),
                     ([os.path.join(BIN, 'lwsr-train'), '-opt', nan], work, None),
                     ([os.path.join(BIN, 'lwsr-train'), '-opt', skip], work, None),
                     ([os.path.join(BIN, 'lwsr-train'), '-opt', nan_sr], work, None)])
    full_p, nan_p, skip_p, nan_sr_p = procs
    assert full_p.returncode == 1 and 'Traceback' not in full_p.stderr, full_p.stderr[-3000:]
    assert re.match(r'lwsr_plugin: cannot write \S+net_g_2\.pth \(RuntimeError: .*The previous complete file is '
                    r'kept', last_line(full_p.stderr)), full_p.stderr[-2000:]
    exp = work / 'experiments' / 'full_disk'
    assert sorted(os.listdir(exp / 'models')) == ['net_g_1.pth']
    assert sorted(os.listdir(exp / 'training_states')) == ['1.state']
    assert torch.load(exp / 'training_states' / '1.state', weights_only=True)['iter'] == 1
    assert nan_p.returncode != 0 and 'Traceback' not in nan_p.stdout + nan_p.stderr, nan_p.stderr[-3000:]
    assert 'non-finite steps in a row' in nan_p.stdout + nan_p.stderr
    from lwsr_plugin.fileio import read_state_dict
    for ckpt in glob.glob(str(work / 'experiments' / 'nan_lr' / 'models' / '*.pth')):
        read_state_dict(ckpt)  # raises on NaN/Inf weights
    assert nan_sr_p.returncode != 0 and 'Traceback' not in nan_sr_p.stdout + nan_sr_p.stderr
    assert "the network's weights are no longer finite" in nan_sr_p.stdout + nan_sr_p.stderr, nan_sr_p.stdout[-3000:]
    for ckpt in glob.glob(str(work / 'experiments' / 'nan_sr' / 'models' / '*.pth')):
        read_state_dict(ckpt)
    assert skip_p.returncode == 0, skip_p.stderr[-3000:]
    assert 'datasets.train: skipping' in skip_p.stdout + skip_p.stderr and 'bird.png' in skip_p.stdout + skip_p.stderr
    archived = glob.glob(str(work / 'experiments' / 'skip_run_archived_*'))
    assert len(archived) == 1 and open(os.path.join(archived[0], 'models', 'net_g_100.pth'), 'rb').read() == \
        b'an earlier run'
    assert os.path.isfile(work / 'experiments' / 'skip_run' / 'models' / 'net_g_latest.pth')


@pytest.mark.slow
def test_killed_builders_leave_no_partial_output(tmp_path, shared):
    """SIGKILL at random moments (scripts/check_kill_builders.py does 20 per builder): every output under its final
    name is the complete one or absent, and a rerun completes and clears the killed runs' temporaries. Three kinds of
    writer: LMDB folders (lwsr-prepare-291), one file per image (lwsr-upscale), one model file (lwsr-export)."""
    shared('anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth')
    sys.path.insert(0, os.path.join(REPO, 'scripts'))
    import check_kill_builders
    rows = check_kill_builders.check(['lmdb', 'sr', 'onnx'], 2, 11, str(tmp_path))
    for row in rows:
        outputs = len(check_kill_builders.command(row['builder'], str(tmp_path / row['builder']))[1])
        assert row['partial'] == 0, row
        assert row['complete'] + row['absent'] == row['trials'] * outputs, row
        assert row['rerun_ok'] and row['rerun_leftovers'] == [], row


def test_result_images_are_written_atomically(tmp_path, monkeypatch):
    """lwsr-test's SR images (BasicSR's imwrite, called by the model's validation) go through a temporary name: a
    failed write leaves the earlier image under the final name, and nothing else."""
    import basicsr.models.sr_model as sr_model
    from lwsr_plugin.patches.pipeline import atomic_result_images
    atomic_result_images()
    target = tmp_path / 'visualization' / 'Set5' / 'bird_test.png'
    img = np.full((8, 8, 3), 100, np.uint8)
    sr_model.imwrite(img, str(target))
    good = target.read_bytes()
    real = cv2.imwrite

    def full_disk(path, image, params=None):
        real(path, image)
        _truncate(path, 0.5)
        return False

    monkeypatch.setattr(cv2, 'imwrite', full_disk)
    with pytest.raises(IOError):
        sr_model.imwrite(np.zeros((8, 8, 3), np.uint8), str(target))
    assert target.read_bytes() == good and os.listdir(target.parent) == ['bird_test.png']


# ------------------------------------------------------------------------------------------ checkpoint integrity
def _flipped_copies(src, folder, count, seed):
    """``count`` copies of ``src`` in ``folder``, each with one random bit of one random byte flipped."""
    import random
    rng = random.Random(seed)
    data = open(src, 'rb').read()
    out = []
    for i in range(count):
        damaged = bytearray(data)
        pos = rng.randrange(len(damaged))
        damaged[pos] ^= 1 << rng.randrange(8)
        path = os.path.join(folder, f'{i:02d}_{os.path.basename(src)}')
        with open(path, 'wb') as f:
            f.write(damaged)
        out.append((path, pos))
    return out


@pytest.fixture(scope='module')
def trained_files(tmp_path_factory, datasets_dir):
    """``net_g_2.pth``, ``net_g_2.safetensors``, ``1.state`` and ``2.state`` from two real 2-iteration training
    runs (LWSRModel, one saving .pth, one .safetensors), as the plugin writes them."""
    work = tmp_path_factory.mktemp('sealed')
    os.symlink(datasets_dir, work / 'datasets')
    runs = []
    for fmt in ('pth', 'safetensors'):
        opt = write_options(work / f'{fmt}.yml', name=f'sealed_{fmt}', model_type='LWSRModel', **{
            'train.total_iter': 2, 'logger.save_checkpoint_freq': 1, 'logger.save_format': fmt})
        runs.append(([os.path.join(BIN, 'lwsr-train'), '-opt', opt], work, None))
    for proc in run_all(runs):
        assert proc.returncode == 0, proc.stderr[-3000:]
    exp = work / 'experiments'
    return {'pth': exp / 'sealed_pth' / 'models' / 'net_g_2.pth',
            'safetensors': exp / 'sealed_safetensors' / 'models' / 'net_g_2.safetensors',
            'states': exp / 'sealed_pth' / 'training_states'}


@pytest.mark.parametrize('kind', ['pth', 'safetensors'])
def test_flipped_bytes_in_network_files_are_refused(kind, trained_files, tmp_path):
    """30 copies of a plugin-written network file, one random bit flipped in each, all refused in one line by the
    reader every entry point uses (pretrain_network_g, --ckpt, lwsr-test/upscale/export/report); the file as written
    carries a matching seal."""
    from lwsr_plugin.fileio import check_seal, read_state_dict
    src = str(trained_files[kind])
    assert check_seal(src) is True
    read_state_dict(src)
    accepted = []
    for path, pos in _flipped_copies(src, str(tmp_path), 30, seed=hash(kind) % 1000):
        try:
            read_state_dict(path)
        except (ValueError, KeyError) as err:
            assert '\n' not in str(err) and path in str(err), str(err)
        else:
            accepted.append(pos)
    assert not accepted, f'damaged copies accepted (flipped byte offsets): {accepted}'


def test_flipped_bytes_in_training_states_fall_back_under_auto_resume(trained_files, tmp_path, capsys):
    """30 damaged copies of the newest training state: --auto_resume passes over each with a line saying why and
    resumes from the previous good state; path.resume_state naming it stops in one line."""
    from lwsr_plugin.patches.checkpoints import load_resume_state
    states = tmp_path / 'experiments' / 'run' / 'training_states'
    states.mkdir(parents=True)
    shutil.copy(trained_files['states'] / '1.state', states / '1.state')
    damaged = _flipped_copies(str(trained_files['states'] / '2.state'), str(tmp_path), 30, seed=7)
    for path, pos in damaged:
        shutil.copy(path, states / '2.state')
        opt = {'name': 'run', 'root_path': str(tmp_path), 'auto_resume': True, 'num_gpu': 0, 'is_train': True,
               'path': {}}
        capsys.readouterr()
        state = load_resume_state(opt)
        err = capsys.readouterr().err
        assert state is not None and state['iter'] == 1, f'flipped byte at {pos}: resumed from {state and state["iter"]}'
        assert 'skipping' in err and '2.state' in err, err
        explicit = {'name': 'run', 'auto_resume': False, 'num_gpu': 0, 'path': {'resume_state': str(states / '2.state')}}
        with pytest.raises(RuntimeError) as exc:
            load_resume_state(explicit)
        assert '\n' not in str(exc.value) and '2.state' in str(exc.value)


def test_check_checkpoint_names_sealed_official_and_damaged_files(trained_files, tmp_path, shared):
    """``lwsr-check-checkpoint``: a sealed file passes, the official IMDN x4 release is named by its SHA-256, a file
    with a release's name but other bytes is flagged, and a damaged sealed file is refused; exit status 1."""
    official = shared('anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth')
    impostor = tmp_path / 'IMDN_x4.pth'
    impostor.write_bytes(open(official, 'rb').read()[:-1] + b'\0')
    damaged = _flipped_copies(str(trained_files['pth']), str(tmp_path), 1, seed=3)[0][0]
    proc = subprocess.run([os.path.join(BIN, 'lwsr-check-checkpoint'), str(trained_files['pth']), official,
                           str(impostor), damaged, str(trained_files['states'] / '2.state')],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stderr
    out = proc.stdout
    assert f'{trained_files["pth"]}: seal ok' in out and 'official IMDN x4 release' in out
    assert 'training state at iteration 2' in out
    assert f'{impostor}: has the file name of the official IMDN x4 release but not its SHA-256' in proc.stderr
    assert f'{damaged}: damaged' in proc.stderr
    assert '3 of 5 files usable' in out
