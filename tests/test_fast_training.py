"""The fast training options of the plugin models (LWSRModel, TwoStageSRModel): bf16 autocast, channels_last,
torch.compile, grad_clip, the non-finite guard, GradScaler state in .state files, safetensors checkpoints. Real
BasicSR training loops on real images (Set5), plus in-process steps where a single step is the thing checked."""
import copy
import glob
import os
import re

import pytest
import torch

from _utils import BIN, PY, TINY, link_datasets, run, write_options

FAST = {'model_type': 'LWSRModel', 'train.amp': 'bf16', 'train.channels_last': True, 'train.grad_clip': 0.5}


def _model(tmp_path, **train):
    """An LWSRModel built in-process from the tiny option set, ready to train on CPU."""
    import lwsr_plugin  # noqa: F401
    from basicsr.models import build_model
    opt = copy.deepcopy(TINY)
    opt.update(model_type='LWSRModel', is_train=True, dist=False, rank=0, world_size=1, root_path=str(tmp_path))
    opt['train'].update(train)
    for key in ('models', 'training_states'):
        opt['path'][key] = str(tmp_path / key)
        os.makedirs(opt['path'][key], exist_ok=True)
    return build_model(opt)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {'lq': torch.rand(2, 3, 8, 8, generator=g), 'gt': torch.rand(2, 3, 32, 32, generator=g)}


def test_bf16_channels_last_grad_clip_safetensors_run_and_resume(tmp_path, datasets_dir):
    """A real BasicSR run with every CPU option on, safetensors checkpoints, then --auto_resume from them."""
    work = link_datasets(tmp_path, datasets_dir)
    common = dict(FAST, **{'logger.save_format': 'safetensors', 'logger.save_checkpoint_freq': 3, 'val.val_freq': 3,
                           'train.ema_decay': 0.9})
    opt = write_options(tmp_path / 'opt.yml', **dict(common, **{'train.total_iter': 3}))
    out = run([os.path.join(BIN, 'lwsr-train'), '-opt', opt], cwd=work).stdout
    assert 'Training options: amp=bf16, channels_last=True, compile=off, grad_clip=0.5' in out
    models = os.path.join(work, 'experiments', 'tiny_imdn', 'models')
    assert sorted(os.listdir(models)) == ['net_g_3.safetensors', 'net_g_latest.safetensors']
    from safetensors import safe_open
    with safe_open(os.path.join(models, 'net_g_3.safetensors'), 'pt') as f:
        keys = list(f.keys())
        assert f.metadata()['network_g'] == 'IMDN'
    assert any(k.startswith('params.') for k in keys) and any(k.startswith('params_ema.') for k in keys)
    assert not any('_orig_mod' in k for k in keys)
    opt2 = write_options(tmp_path / 'opt2.yml', **dict(common, **{'train.total_iter': 5}))
    out = run([os.path.join(BIN, 'lwsr-train'), '-opt', opt2, '--auto_resume'], cwd=work).stdout
    assert 'net_g_3.safetensors, with param key: [params]' in out and 'Resuming training from epoch: 0, iter: 3.' in out
    assert re.search(r'iter:\s+5, lr', out)


def test_safetensors_round_trip_through_pretrain_and_inference(tmp_path, datasets_dir):
    """Weights saved as safetensors load as path.pretrain_network_g (strictly) and in lwsr-upscale; a checkpoint of
    another scale is refused in one line."""
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **dict(FAST, **{'logger.save_format': 'safetensors',
                                                              'train.total_iter': 2, 'logger.save_checkpoint_freq': 2}))
    run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work)
    ckpt = os.path.join(work, 'experiments', 'tiny_imdn', 'models', 'net_g_2.safetensors')
    from lwsr_plugin.fileio import read_state_dict
    saved, key = read_state_dict(ckpt, 'params')
    assert key == 'params'
    opt2 = write_options(tmp_path / 'opt2.yml', **dict(FAST, **{
        'name': 'finetune', 'path.pretrain_network_g': ckpt, 'train.total_iter': 1, 'train.optim_g.lr': 0.0,
        'logger.save_checkpoint_freq': 1}))
    out = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt2], cwd=work).stdout
    assert 'Loading IMDN model from' in out
    loaded, _ = read_state_dict(os.path.join(work, 'experiments', 'finetune', 'models', 'net_g_1.pth'))
    for k, v in saved.items():  # lr 0: the fine-tuned weights are the loaded ones
        assert torch.equal(loaded[k], v), k
    sr = tmp_path / 'sr'
    run([os.path.join(BIN, 'lwsr-upscale'), os.path.join(datasets_dir, 'Set5', 'LR_bicubic', 'X4', 'birdx4.png'),
         '-o', str(sr), '--arch', 'IMDN', '--scale', '4', '--arch-kwarg', 'num_feat=8', '--arch-kwarg', 'num_block=1',
         '--ckpt', ckpt], cwd=work)
    assert os.listdir(sr)
    opt3 = write_options(tmp_path / 'opt3.yml', **dict(FAST, **{  # the checkpoint of a narrower network
        'name': 'wrong', 'path.pretrain_network_g': ckpt, 'network_g.num_feat': 12}))
    proc = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt3], cwd=work, check=False)
    assert proc.returncode != 0 and 'does not fit network_g' in proc.stdout and 'Traceback' not in proc.stdout


def test_nonfinite_step_changes_nothing(tmp_path):
    """A step on a NaN batch leaves weights and Adam's state as they were; it is counted; a good step then trains."""
    model = _model(tmp_path, amp='bf16', channels_last=True)
    model.feed_data(_batch())
    model.optimize_parameters(1)  # a normal step: Adam has state now
    weights = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    adam = copy.deepcopy(model.optimizer_g.state_dict())
    bad = _batch(1)
    bad['lq'][0, 0, 0, 0] = float('nan')
    model.feed_data(bad)
    model.optimize_parameters(2)
    assert model.train_options.nonfinite_total == 1 and model.log_dict['nonfinite_steps'] == 1.0
    for k, v in model.net_g.state_dict().items():
        assert torch.equal(v, weights[k]), k
    after = model.optimizer_g.state_dict()
    for pid, st in adam['state'].items():
        for name, value in st.items():
            assert torch.equal(torch.as_tensor(after['state'][pid][name]), torch.as_tensor(value)), (pid, name)
    model.feed_data(_batch(2))
    model.optimize_parameters(3)
    assert model.train_options.nonfinite_in_row == 0
    assert any(not torch.equal(v, weights[k]) for k, v in model.net_g.state_dict().items())


def test_accumulate_micro_batches_give_the_whole_batch_step(tmp_path):
    """accumulate: 2 on a batch of 4 (two passes of 2) steps like one pass of 4; the logged loss is the batch's."""
    batch = {'lq': torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)),
             'gt': torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))}
    whole, split = _model(tmp_path / 'a'), _model(tmp_path / 'b', accumulate=2)
    split.net_g.load_state_dict(whole.net_g.state_dict())
    for model in (whole, split):
        model.feed_data(batch)
        model.optimize_parameters(1)
    diff = max((a - b).abs().max().item() for a, b in zip(whole.net_g.parameters(), split.net_g.parameters()))
    assert diff < 1e-6
    assert abs(whole.log_dict['l_pix'] - split.log_dict['l_pix']) < 1e-6
    before = [p.detach().clone() for p in split.net_g.parameters()]
    split.feed_data({'lq': batch['lq'][:3], 'gt': batch['gt'][:3]})
    with pytest.raises(SystemExit, match='cannot be split into train.accumulate: 2 equal micro-batches'):
        split.optimize_parameters(2)
    assert all(torch.equal(a, b) for a, b in zip(before, split.net_g.parameters()))


def test_bf16_on_a_cpu_without_native_bf16_warns_and_auto_is_fp32(monkeypatch):
    """An AVX2 CPU emulates bf16 (slower than fp32): ``amp: bf16`` trains as asked, with one warning naming the
    option and the fix; ``amp: auto`` trains in fp32 there and in bf16 where it is native."""
    import logging

    from lwsr_plugin.models import training_options as fast_training
    from lwsr_plugin.ops import device as ops_device
    warnings = []
    monkeypatch.setattr(fast_training, '_WARNED', set())
    monkeypatch.setattr(logging.getLogger('basicsr'), 'warning', warnings.append)
    cpu = torch.device('cpu')
    for native in (False, False, True):  # once per process, not per model built
        monkeypatch.setattr(ops_device, 'bf16_native', lambda device, native=native: native)
        assert fast_training.TrainingOptions({'train': {'amp': 'bf16'}}, cpu).amp == 'bf16'
        assert fast_training.TrainingOptions({'train': {'amp': 'auto'}}, cpu).amp == ('bf16' if native else False)
    assert len(warnings) == 1 and warnings[0].startswith('train.amp: bf16: this CPU has no native bf16'), warnings
    assert warnings[0].endswith('; `amp: auto` (or false) trains in fp32.'), warnings


@pytest.mark.parametrize('device, precision, native, verdict', [
    ('cpu', 'bf16', True, 'runs'), ('cpu', 'bf16', False, 'warns'), ('cpu', 'fp16', True, 'refused'),
    ('cuda', 'bf16', True, 'runs'), ('cuda', 'bf16', False, 'refused'), ('cuda', 'fp16', False, 'runs')])
def test_training_and_inference_give_one_answer(device, precision, native, verdict, monkeypatch):
    """``train.amp`` and the inference flags (``--bf16`` / ``--half``) take the same decision on every device and
    precision (``ops.device.limitation``), each naming its own option; a bf16 CPU without native bf16 warns in both."""
    import logging

    from lwsr_plugin.models import training_options as fast_training
    from lwsr_plugin.ops import device as ops_device
    monkeypatch.setattr(ops_device, 'bf16_native', lambda dev: native)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda dev=None: 'GPU-without-bf16')
    monkeypatch.setattr(torch.amp, 'GradScaler', lambda *args, **kwargs: None)  # fp16's scaler: CUDA runtime
    monkeypatch.setattr(fast_training, '_WARNED', set())
    warned = []
    for name in ('basicsr', 'lwsr_plugin'):  # training's log (BasicSR's logger), the inference commands' stderr
        monkeypatch.setattr(logging.getLogger(name), 'warning', warned.append)
    flag = {'bf16': '--bf16', 'fp16': '--half'}[precision]
    answers = {}
    for option, build in (('train.amp', lambda: fast_training.TrainingOptions({'train': {'amp': precision}},
                                                                                torch.device(device))),
                          (flag, lambda: ops_device.check_runtime(device, precision))):
        warned.clear()
        try:
            build()
            answers[option] = 'warns' if warned else 'runs'
            assert all(m.startswith(f'{option}: ') for m in warned), warned
        except (fast_training.TrainingOptionError, ops_device.RuntimeProblem) as err:
            answers[option] = 'refused'
            assert str(err).startswith(f'{option}: '), err
    assert answers == {'train.amp': verdict, flag: verdict}


def test_compile_is_refused_by_the_same_probe_as_inference(monkeypatch):
    """``train.compile`` and ``--compile`` ask one probe (``ops.device.compile_problem``): without a C++ compiler
    both are refused in one line naming their option."""
    from lwsr_plugin.models.training_options import TrainingOptionError, TrainingOptions
    from lwsr_plugin.ops import device as ops_device
    monkeypatch.setattr(ops_device.shutil, 'which', lambda name: None)
    options = TrainingOptions({'train': {'compile': True}}, torch.device('cpu'))
    with pytest.raises(TrainingOptionError, match=r'^train\.compile: torch\.compile cannot compile on this machine '
                                                  r'\(no C\+\+ compiler found'):
        options.training_forward(torch.nn.Conv2d(3, 3, 3))
    with pytest.raises(ops_device.RuntimeProblem, match=r'^--compile: no C\+\+ compiler found'):
        ops_device.check_runtime('cpu', compile=True)


def test_deterministic_option_sets_the_torch_flags():
    from lwsr_plugin.models.training_options import TrainingOptions
    saved = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, \
        torch.backends.cudnn.deterministic
    try:
        torch.backends.cudnn.benchmark = True  # as BasicSR's train.py sets it
        TrainingOptions({'train': {'deterministic': True}}, torch.device('cpu')).apply_backend_flags()
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]


def test_grad_clip_bounds_the_update(tmp_path):
    """grad_clip: the gradient norm the optimizer sees is at most max_norm."""
    model = _model(tmp_path, grad_clip=1e-3)
    model.optimizer_g = torch.optim.SGD(model.net_g.parameters(), lr=1.0)  # update = -lr * clipped gradient
    before = torch.cat([p.detach().flatten().clone() for p in model.net_g.parameters()])
    model.feed_data(_batch())
    model.optimize_parameters(1)
    after = torch.cat([p.detach().flatten() for p in model.net_g.parameters()])
    assert 0 < (after - before).norm().item() <= 1e-3 * 1.001


def test_scaler_state_saved_and_resumed(tmp_path):
    """The GradScaler state (fp16 runs) travels in the .state file and comes back on resume."""
    model = _model(tmp_path)
    scaler = model.train_options.scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)  # fp16 itself needs CUDA
    scaler.scale(torch.ones(()))  # the scale tensor exists from the first use on
    scaler.update(new_scale=256.0)
    model.train_options.nonfinite_total = 3
    model.save_training_state(0, 7)
    state = torch.load(tmp_path / 'training_states' / '7.state', weights_only=True)
    assert state['lwsr']['scaler']['scale'] == 256.0 and state['lwsr']['nonfinite_total'] == 3
    fresh = _model(tmp_path / 'b')
    fresh.train_options.scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    fresh.resume_training(state)
    assert fresh.train_options.scaler.get_scale() == 256.0 and fresh.train_options.nonfinite_total == 3


def test_huge_learning_rate_stops_with_message_and_finite_checkpoint(tmp_path, datasets_dir):
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **dict(FAST, **{
        'train.optim_g.lr': 1e10, 'train.grad_clip': None, 'train.total_iter': 60, 'train.max_nonfinite_steps': 3,
        'logger.save_checkpoint_freq': 1, 'val.val_freq': 1000}))
    proc = run([os.path.join(BIN, 'lwsr-train'), '-opt', opt], cwd=work, check=False)
    assert proc.returncode != 0
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(r'lwsr_plugin: training stopped at iter \d+: 3 non-finite steps in a row', last), last
    assert 'train.optim_g.lr' in last and 'Traceback' not in proc.stdout
    ckpts = glob.glob(os.path.join(work, 'experiments', 'tiny_imdn', 'models', 'net_g_*.pth'))
    assert ckpts
    newest = max(ckpts, key=lambda p: int(re.search(r'net_g_(\d+)', p).group(1)))
    params = torch.load(newest, weights_only=True)['params']
    assert all(torch.isfinite(v).all() for v in params.values())


@pytest.mark.parametrize('updates, message', [
    ({'train.amp': 'fp8'}, "train.amp: 'fp8' is not a precision"),
    ({'train.compile': 'fastest'}, "train.compile: 'fastest' is not a torch.compile mode"),
    ({'logger.save_format': 'ckpt'}, "logger.save_format: 'ckpt' is not a checkpoint format"),
    ({'train.grad_clip': 'big'}, "train.grad_clip: 'big' is not a number"),
    ({'train.accumulate': 0}, 'train.accumulate: 0 must be a whole number >= 1'),
    ({'train.accumulate': 1.5}, 'train.accumulate: 1.5 must be a whole number >= 1'),
    ({'model_type': 'LWSRModle'}, "model_type: 'LWSRModle' is not registered"),
])
def test_bad_training_options_checked_before_start(tmp_path, datasets_dir, updates, message):
    from lwsr_plugin.options.checks import OptionError, check_options
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **dict({'model_type': 'LWSRModel'}, **updates))
    with pytest.raises(OptionError, match=re.escape(message)):
        check_options(opt, root=str(work))


def test_fp16_on_cpu_is_one_line_before_any_folder(tmp_path, datasets_dir):
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{'model_type': 'LWSRModel', 'train.amp': 'fp16'})
    proc = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work, check=False)
    assert proc.returncode != 0 and 'Traceback' not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].endswith('train.amp: fp16 needs a CUDA GPU (float16 autocast + '
                                                         'GradScaler); on CPU use `amp: bf16` (or `amp: false`).')
    assert not os.path.exists(os.path.join(work, 'experiments'))


@pytest.mark.slow
def test_compile_trains_and_saves_plain_keys(tmp_path, datasets_dir):
    """train.compile: the training forward is compiled; checkpoints keep the module's own keys."""
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{'model_type': 'LWSRModel', 'train.compile': True,
                                                 'train.channels_last': True, 'train.total_iter': 3,
                                                 'logger.save_checkpoint_freq': 3, 'val.val_freq': 3})
    out = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work, timeout=900).stdout
    assert 'compile=default' in out and re.search(r'iter:\s+3, lr', out) and '# psnr:' in out
    params = torch.load(os.path.join(work, 'experiments', 'tiny_imdn', 'models', 'net_g_3.pth'),
                        weights_only=True)['params']
    assert not any('_orig_mod' in k for k in params) and 'IMDB1.c1.weight' in params


def test_shipped_train_options_use_the_fast_settings():
    """Every options/train_*.yml trains through a plugin model with amp: auto + channels_last, which resolve on this
    machine to what it runs natively; DIV2K/BSD200 recipes read their data through InMemoryPairedImageDataset."""
    import yaml

    import lwsr_plugin  # noqa: F401
    from basicsr.utils.registry import MODEL_REGISTRY
    from conftest import REPO
    from lwsr_plugin.ops.device import bf16_native
    from lwsr_plugin.models.lwsr_model import LWSRModel
    files = sorted(glob.glob(os.path.join(REPO, 'options', 'train_*.yml')))
    assert len(files) >= 15
    for path in files:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
        assert issubclass(MODEL_REGISTRY.get(opt['model_type']), LWSRModel), path
        assert opt['train']['amp'] == 'auto' and opt['train']['channels_last'] is True, path
        options, save_format = LWSRModel.parse_options(dict(opt, num_gpu=0))
        assert options.amp == ('bf16' if bf16_native(torch.device('cpu')) else False) and save_format == 'pth'
        train_type = opt['datasets']['train']['type']
        assert train_type == ('PairedGrayImageDataset' if 'IDN' in path else 'InMemoryPairedImageDataset'), path


@pytest.mark.slow
def test_torchrun_two_processes_in_memory_dataset_fast_options(tmp_path, datasets_dir):
    """2-process gloo torchrun: LWSRModel with bf16 + channels_last, InMemoryPairedImageDataset read by a spawned
    worker per rank; one cache file serves both ranks."""
    from _utils import free_port
    work = link_datasets(tmp_path, datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **dict(FAST, **{
        'datasets.train.type': 'InMemoryPairedImageDataset', 'datasets.train.cache_dir': str(tmp_path / 'cache'),
        'datasets.train.num_worker_per_gpu': 1, 'train.total_iter': 4, 'val.val_freq': 4,
        'logger.save_checkpoint_freq': 4}))
    cmd = [PY, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           '-m', 'lwsr_plugin.train', '-opt', opt, '--launcher', 'pytorch']
    out = run(cmd, cwd=work, timeout=480, env={'OMP_NUM_THREADS': '1'}).stdout
    assert 'World size (gpu number): 2' in out and re.search(r'iter:\s+4, lr', out) and '# psnr:' in out, out[-3000:]
    assert len(glob.glob(str(tmp_path / 'cache' / '*.lwsrcache'))) == 1
    params = torch.load(os.path.join(work, 'experiments', 'tiny_imdn', 'models', 'net_g_4.pth'),
                        weights_only=True)['params']
    assert all(torch.isfinite(v).all() for v in params.values())
