"""Every entry point behaves like lwsr-train / lwsr-test: BasicSR's own train.py / test.py run as scripts (from the
installed package and from a source-checkout layout) write under the working directory (or their checkout), resume
after kill -9 with --auto_resume on CPU, take path.root / LWSR_ROOT, and a user's own arch in ./myarchs trains
through basicsr/train.py, lwsr-train and a 2-process torchrun."""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from _utils import BIN, PY, free_port, link_datasets, run, write_options
from conftest import REPO


def _basicsr_dir():
    import basicsr
    return os.path.dirname(basicsr.__file__)


def _states(root, name):
    return sorted(int(os.path.basename(p).split('.')[0])
                  for p in glob.glob(os.path.join(root, 'experiments', name, 'training_states', '*.state')))


def _kill_after_first_state(cmd, cwd, root, name, env=None):
    """Start a training, SIGKILL it once a training state is on disk; returns the saved iterations."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not _states(root, name) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return _states(root, name)


def _check_resumed(out, last, total):
    assert f'Resuming training from epoch: ' in out and f'iter: {last}.' in out, out[-3000:]
    iters = [int(i) for i in re.findall(r'iter:\s+(\d+), lr', out)]
    assert iters and iters[0] == last + 1 and iters[-1] == total, iters


def _kill_resume(cmd, work, root, tmp_path, name):
    opt = write_options(tmp_path / 'opt.yml', name=name, **{
        'train.total_iter': 30, 'logger.save_checkpoint_freq': 3, 'logger.print_freq': 1,
        'logger.use_tb_logger': True})
    saved = _kill_after_first_state(cmd + ['-opt', opt], work, root, name)
    assert saved and max(saved) < 30, saved
    out = run(cmd + ['-opt', opt, '--auto_resume'], cwd=work).stdout
    _check_resumed(out, max(saved), 30)
    assert not glob.glob(os.path.join(root, 'experiments', f'{name}_archived_*'))  # resumed, not restarted
    assert os.path.isfile(os.path.join(root, 'experiments', name, 'models', 'net_g_latest.pth'))
    assert os.path.isdir(os.path.join(root, 'tb_logger', name))
    logs = sorted(glob.glob(os.path.join(root, 'experiments', name, 'train_*.log')))
    with open(logs[-1], encoding='utf-8') as f:
        first = f.readline()
    assert f'under {root} (from ' in first, first  # the log's first line names the output root
    return out


@pytest.mark.slow
def test_installed_basicsr_train_py_writes_under_cwd_and_resumes_after_kill(tmp_path, datasets_dir):
    """`python <site-packages>/basicsr/train.py` (run as __main__): outputs under the working directory, never in
    site-packages; kill -9 after the first checkpoint, --auto_resume continues at the saved iteration (CPU)."""
    site_root = os.path.dirname(_basicsr_dir())
    name = f'lwsr_ci_entry_{os.getpid()}_{time.time_ns()}'
    work = link_datasets(tmp_path, datasets_dir)
    try:
        out = _kill_resume([PY, os.path.join(_basicsr_dir(), 'train.py')], work, str(work), tmp_path, name)
        assert 'BasicSR would have used site-packages' in out
    finally:
        leaked = [p for p in (os.path.join(site_root, 'experiments', name), os.path.join(site_root, 'tb_logger', name))
                  if os.path.exists(p)]
        for p in leaked:
            shutil.rmtree(p, ignore_errors=True)
    assert not leaked, f'BasicSR wrote into site-packages: {leaked}'


@pytest.mark.slow
def test_basicsr_checkout_layout_keeps_its_root_and_resumes(tmp_path, datasets_dir):
    """The classic layout: a BasicSR source checkout, `python basicsr/train.py` from its root: outputs in the
    checkout (BasicSR's own choice), resume after kill -9 works on CPU."""
    checkout = tmp_path / 'BasicSR'
    shutil.copytree(_basicsr_dir(), checkout / 'basicsr', ignore=shutil.ignore_patterns('__pycache__'))
    (checkout / 'setup.py').write_text('# a BasicSR source checkout (stand-in)\n')
    link_datasets(checkout, datasets_dir)
    env = {'PYTHONPATH': str(checkout)}
    cmd = [PY, 'basicsr/train.py']
    name = 'checkout_run'
    opt = write_options(tmp_path / 'opt.yml', name=name, **{
        'train.total_iter': 30, 'logger.save_checkpoint_freq': 3, 'logger.print_freq': 1})
    saved = _kill_after_first_state(cmd + ['-opt', opt], checkout, str(checkout), name, env=env)
    assert saved and max(saved) < 30, saved
    out = run(cmd + ['-opt', opt, '--auto_resume'], cwd=checkout, env=env).stdout
    _check_resumed(out, max(saved), 30)
    assert f'under {checkout} (from the BasicSR checkout' in out
    assert os.path.isdir(checkout / 'experiments' / name / 'models')


def test_basicsr_test_py_writes_results_under_cwd_with_progress(tmp_path, datasets_dir, shared):
    """`python <site-packages>/basicsr/test.py`: results under the working directory, a progress bar per set."""
    work = link_datasets(tmp_path, datasets_dir)
    os.makedirs(tmp_path / 'experiments' / 'pretrained_models')
    os.symlink(shared('anchors', 'imdn', 'checkpoints', 'IMDN_x4.pth'),
               tmp_path / 'experiments' / 'pretrained_models' / 'IMDN_x4.pth')
    with open(os.path.join(REPO, 'options', 'test_IMDN_x4.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    opt['name'] = name = f'lwsr_ci_test_entry_{os.getpid()}_{time.time_ns()}'
    opt['datasets'] = {k: v for k, v in opt['datasets'].items() if v['name'] == 'Set5'}
    opt_path = tmp_path / 'test.yml'
    opt_path.write_text(yaml.safe_dump(opt, sort_keys=False))
    site_root = os.path.dirname(_basicsr_dir())
    try:
        out = run([PY, os.path.join(_basicsr_dir(), 'test.py'), '-opt', str(opt_path)], cwd=work).stdout
    finally:
        leaked = os.path.exists(os.path.join(site_root, 'results', name))
        shutil.rmtree(os.path.join(site_root, 'results', name), ignore_errors=True)
    assert not leaked
    assert len(os.listdir(tmp_path / 'results' / name / 'visualization' / 'Set5')) == 5
    assert re.search(r'# psnr: 32\.209', out), out[-2000:]
    assert 'Test butterfly' in out and '5/5' in out  # BasicSR's tqdm bar (val.pbar), on by default here


def test_path_root_and_env_root(tmp_path, datasets_dir):
    work = link_datasets(tmp_path / 'work', datasets_dir)
    opt = write_options(tmp_path / 'opt.yml', **{'train.total_iter': 2, 'logger.save_checkpoint_freq': 2,
                                                 'path.root': str(tmp_path / 'from_yaml')})
    out = run([os.path.join(BIN, 'lwsr-train'), '-opt', opt], cwd=work,
              env={'LWSR_ROOT': str(tmp_path / 'from_env')}).stdout
    assert f'under {tmp_path / "from_yaml"} (from path.root in the option file)' in out
    assert _states(str(tmp_path / 'from_yaml'), 'tiny_imdn') == [2]
    opt2 = write_options(tmp_path / 'opt2.yml', **{'train.total_iter': 2, 'logger.save_checkpoint_freq': 2})
    out = run([PY, '-m', 'lwsr_plugin.train', '-opt', opt2], cwd=work, env={'LWSR_ROOT': str(tmp_path / 'env')}).stdout
    assert f'under {tmp_path / "env"} (from LWSR_ROOT)' in out
    assert _states(str(tmp_path / 'env'), 'tiny_imdn') == [2]
    assert not os.path.exists(os.path.join(work, 'experiments'))


TINYSR = '''"""A user's own arch, registered the BasicSR way; the plugin never heard of it."""
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class TinySR(nn.Module):

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=8, upscale=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(num_feat, num_out_ch * upscale ** 2, 3, 1, 1), nn.PixelShuffle(upscale))

    def forward(self, x):
        return self.body(x)
'''


@pytest.fixture
def user_arch(tmp_path, datasets_dir):
    """A working folder with ./myarchs/tinysr_arch.py and an option file naming it under user_modules."""
    work = link_datasets(tmp_path / 'work', datasets_dir)
    os.makedirs(os.path.join(work, 'myarchs'))
    with open(os.path.join(work, 'myarchs', 'tinysr_arch.py'), 'w', encoding='utf-8') as f:
        f.write(TINYSR)
    opt = write_options(tmp_path / 'work' / 'train_tinysr.yml', **{
        'name': 'tinysr', 'network_g': {'type': 'TinySR', 'num_feat': 8, 'upscale': 4},
        'user_modules': ['./myarchs'], 'train.total_iter': 4, 'val.val_freq': 4, 'logger.save_checkpoint_freq': 4,
        'logger.use_tb_logger': False})
    return work, opt


def _trained(out, work):
    assert 'Network [TinySR] is created.' in out, out[-3000:]
    assert os.path.isfile(os.path.join(work, 'experiments', 'tinysr', 'models', 'net_g_latest.pth'))


def test_user_arch_with_lwsr_train_and_basicsr_train_py(user_arch):
    work, opt = user_arch
    _trained(run([os.path.join(BIN, 'lwsr-train'), '-opt', opt], cwd=work).stdout, work)
    shutil.rmtree(os.path.join(work, 'experiments'))
    _trained(run([PY, os.path.join(_basicsr_dir(), 'train.py'), '-opt', opt], cwd=work).stdout, work)
    # the environment variable instead of the option key
    with open(opt, encoding='utf-8') as f:
        plain = yaml.safe_load(f)
    del plain['user_modules']
    plain['name'] = 'tinysr_env'
    with open(os.path.join(work, 'env.yml'), 'w', encoding='utf-8') as f:
        yaml.safe_dump(plain, f)
    out = run([PY, '-m', 'lwsr_plugin.train', '-opt', 'env.yml'], cwd=work,
              env={'LWSR_USER_MODULES': os.path.join(work, 'myarchs')}).stdout
    assert 'Network [TinySR] is created.' in out


@pytest.mark.slow
def test_user_arch_with_torchrun_two_processes(user_arch):
    work, opt = user_arch
    cmd = [PY, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           '-m', 'lwsr_plugin.train', '-opt', opt, '--launcher', 'pytorch']
    out = run(cmd, cwd=work, timeout=480, env={'OMP_NUM_THREADS': '1'}).stdout
    _trained(out, work)
    assert 'World size (gpu number): 2' in out


def test_bad_user_module_is_one_line(user_arch):
    work, _ = user_arch
    opt = write_options(os.path.join(work, 'bad.yml'), **{'user_modules': ['./nothere'],
                                                           'network_g': {'type': 'TinySR'}})
    proc = run([os.path.join(BIN, 'lwsr-train'), '-opt', opt], cwd=work, check=False)
    assert proc.returncode != 0
    assert "user_modules: './nothere' does not exist" in proc.stdout and 'Traceback' not in proc.stdout
    opt = write_options(os.path.join(work, 'unknown.yml'), **{'network_g': {'type': 'TinySR'}})
    proc = run([os.path.join(BIN, 'lwsr-train'), '-opt', opt], cwd=work, check=False)
    assert proc.returncode != 0 and 'user_modules:' in proc.stdout and 'Traceback' not in proc.stdout


@pytest.mark.parametrize('command', ['lwsr-train', 'lwsr-test', 'lwsr-evaluate'])
def test_help_imports_no_torch(command, tmp_path):
    """--help is answered before torch/BasicSR are imported (the command itself is a thin console script)."""
    module = {'lwsr-train': 'lwsr_plugin.train', 'lwsr-test': 'lwsr_plugin.test',
              'lwsr-evaluate': 'lwsr_plugin.cli.evaluate'}[command]
    code = (f'import sys\nfrom {module} import main\ntry:\n    main(["--help"])\nexcept SystemExit:\n    pass\n'
            'print("heavy:", sorted(m for m in ("torch", "basicsr", "cv2", "numpy") if m in sys.modules))')
    out = run([PY, '-c', code], cwd=tmp_path).stdout
    assert 'heavy: []' in out and '-opt OPTION_FILE' in out and 'user_modules' in out, out
    if command != 'lwsr-train':  # lwsr-evaluate is lwsr-test under its older name, --paper-tables included
        assert all(flag in out for flag in ('--paper-tables', '--sets SETS', '--scales SCALES', '--out OUT')), out
        assert 'lwsr-evaluate is the same command as lwsr-test' in out, out
