"""lwsr-options and the shipped option files: the table lists every options/*.yml, copy writes a byte-identical file
and never overwrites without --overwrite, path points to the file, a real wheel carries the files into a folder
outside the checkout, and lwsr-train / lwsr-test -opt NAME run a shipped file from any folder."""
import glob
import os
import re
import shutil
import subprocess
import time

import pytest

from _utils import BIN, PY, run
from conftest import REPO

from lwsr_plugin.cli import options as command
from lwsr_plugin.options.shipped import list_shipped, shipped_dir, shipped_path

SHIPPED = sorted(os.path.basename(p)[:-len('.yml')] for p in glob.glob(os.path.join(REPO, 'options', '*.yml')))
IMDN = os.path.join(REPO, 'options', 'train_IMDN_x4.yml')


def _bytes(path):
    with open(path, 'rb') as f:
        return f.read()


def test_list_names_every_shipped_file_within_120_columns(tmp_path):
    # the installed package's copies (a wheel) or the checkout's own files (an editable install): the same bytes
    assert list_shipped() == SHIPPED
    assert all(_bytes(os.path.join(shipped_dir(), f'{n}.yml')) == _bytes(os.path.join(REPO, 'options', f'{n}.yml'))
               for n in SHIPPED)
    proc = run([PY, '-m', 'lwsr_plugin.cli.options', 'list'], cwd=str(tmp_path), env={'COLUMNS': '120'})
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:]] == SHIPPED
    assert max(len(line) for line in lines) <= 120
    row = next(line for line in lines if line.startswith('train_IMDN_x4 '))
    assert row.split()[1:4] == ['IMDN', 'x4', 'DIV2K'] and "the paper's recipe" in row
    assert next(line for line in lines if line.startswith('train_IDN_x3 ')).split()[1:4] == ['IDN', 'x3', '291']
    assert 'SLWSR slwsr32c' in next(line for line in lines if line.startswith('test_sLWSR32C_x4 '))


def test_copy_is_byte_identical_and_never_overwrites_without_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert command.main(['copy', 'train_IMDN_x4']) == 0
    assert _bytes(tmp_path / 'train_IMDN_x4.yml') == _bytes(IMDN)
    (tmp_path / 'train_IMDN_x4.yml').write_text('edited\n')
    capsys.readouterr()
    assert command.main(['copy', 'train_IMDN_x4.yml']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'train_IMDN_x4.yml exists' in err and '--overwrite' in err
    assert (tmp_path / 'train_IMDN_x4.yml').read_text() == 'edited\n'
    assert command.main(['copy', 'options/train_IMDN_x4.yml', '--overwrite']) == 0
    assert _bytes(tmp_path / 'train_IMDN_x4.yml') == _bytes(IMDN)
    (tmp_path / 'sub').mkdir()
    assert command.main(['copy', 'test_IDN_x2', 'sub']) == 0 and command.main(['copy', 'test_IDN_x2', 'my.yml']) == 0
    for written in (tmp_path / 'sub' / 'test_IDN_x2.yml', tmp_path / 'my.yml'):
        assert _bytes(written) == _bytes(os.path.join(REPO, 'options', 'test_IDN_x2.yml'))
    assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p]


def test_path_and_unknown_names(capsys):
    assert command.main(['path', 'train_IMDN_x4']) == 0
    path = capsys.readouterr().out.strip()
    assert os.path.isabs(path) and _bytes(path) == _bytes(IMDN)
    assert shipped_path('options/train_IMDN_x4.yml') == shipped_path('train_IMDN_x4.yml') == path
    assert command.main(['copy', 'train_IMDN_x5']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'did you mean train_IMDN_x4' in err and 'lwsr-options list' in err


def test_help_imports_no_torch():
    proc = subprocess.run([PY, '-X', 'importtime', '-m', 'lwsr_plugin.cli.options', '--help'], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and 'lwsr-options copy train_IMDN_x4' in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if line.endswith((' torch', ' basicsr'))]


def test_wheel_carries_the_option_files_outside_the_checkout(tmp_path):
    """A real non-editable install: a wheel built from the sources (a copy of what setup.py reads, so that the build
    writes nothing into the checkout), installed with pip --target, run from an empty folder."""
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('setup.py', 'MANIFEST.in', 'README.md', '_lwsr_plugin_startup.py', 'lwsr_plugin_startup.pth'):
        shutil.copy(os.path.join(REPO, name), src / name)
    for folder in ('lwsr_plugin', 'options'):
        shutil.copytree(os.path.join(REPO, folder), src / folder, ignore=shutil.ignore_patterns('__pycache__'))
    pip = [PY, '-m', 'pip', '--disable-pip-version-check', '--no-input']
    start = time.time()
    run(pip + ['wheel', '--no-deps', '--no-build-isolation', '-w', str(tmp_path / 'wheel'), '.'], cwd=str(src))
    print(f'wheel built in {time.time() - start:.1f} s')
    wheel = glob.glob(str(tmp_path / 'wheel' / 'lwsr_plugin-*.whl'))
    site = tmp_path / 'site'
    run(pip + ['install', '--no-deps', '--target', str(site)] + wheel, cwd=str(tmp_path))
    assert sorted(p[:-len('.yml')] for p in os.listdir(site / 'lwsr_plugin' / 'recipes')) == SHIPPED

    empty = tmp_path / 'empty'
    empty.mkdir()
    env = {'PYTHONPATH': str(site)}
    listed = run([PY, '-m', 'lwsr_plugin.cli.options', 'list'], cwd=str(empty), env=env).stdout
    assert [line.split()[0] for line in listed.splitlines()[2:]] == SHIPPED
    # the wheel's console script
    path = run([str(site / 'bin' / 'lwsr-options'), 'path', 'train_IMDN_x4'], cwd=str(empty), env=env).stdout
    assert path.strip() == str(site / 'lwsr_plugin' / 'recipes' / 'train_IMDN_x4.yml')
    run([PY, '-m', 'lwsr_plugin.cli.options', 'copy', 'train_IMDN_x4'], cwd=str(empty), env=env)
    assert _bytes(empty / 'train_IMDN_x4.yml') == _bytes(IMDN)
    # a command that read options/ from the checkout
    proc = run([PY, '-m', 'lwsr_plugin.cli.reproduce', '--recipe', 'IMDN_x4', '--iters', '2'], cwd=str(empty),
               env=env, check=False)
    assert proc.returncode == 2 and 'DIV2K_train_HR_sub.lmdb is missing' in proc.stdout, proc.stdout
    assert f'-opt {site / "lwsr_plugin" / "recipes" / "train_IMDN_x4.yml"}' in proc.stdout


def test_opt_name_runs_the_shipped_file_from_any_folder(tmp_path):
    """-opt NAME / NAME.yml / options/NAME.yml with no such file here: the shipped file, said on stdout first; a file
    of that name in the working directory wins; a name neither here nor shipped is one line with the close names."""
    proc = run([os.path.join(BIN, 'lwsr-train'), '-opt', 'train_IMDN_x4'], cwd=str(tmp_path), check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 2 and lines[0].startswith('lwsr_plugin: using the shipped option file '), proc.stdout
    assert _bytes(lines[0].split()[6]) == _bytes(IMDN) and 'datasets.train.dataroot_gt' in proc.stdout

    test_cmd = [os.path.join(BIN, 'lwsr-test'), '-opt']
    proc = run(test_cmd + ['options/test_IMDN_x4.yml'], cwd=str(tmp_path), check=False)
    assert proc.returncode == 2 and proc.stdout.count('using the shipped option file') == 1
    assert re.search(r'none of the test sets of \S+test_IMDN_x4\.yml is present', proc.stdout), proc.stdout

    (tmp_path / 'test_IMDN_x4.yml').write_bytes(_bytes(os.path.join(REPO, 'options', 'test_IMDN_x4.yml')))
    proc = run(test_cmd + ['test_IMDN_x4.yml'], cwd=str(tmp_path), check=False)
    assert 'using the shipped' not in proc.stdout and 'none of the test sets of test_IMDN_x4.yml' in proc.stdout

    proc = run(test_cmd + ['test_IMDN_x5'], cwd=str(tmp_path), check=False)
    assert proc.returncode == 2 and len(proc.stdout.strip().splitlines()) == 1, proc.stdout
    assert 'no such option file' in proc.stdout and 'did you mean test_IMDN_x4' in proc.stdout


def test_resolution_leaves_paths_elsewhere_alone(tmp_path, monkeypatch):
    from lwsr_plugin.options import OptionError, resolve_shipped
    monkeypatch.chdir(tmp_path)
    argv = ['-opt', str(tmp_path / 'train_IMDN_x4.yml')]  # a path elsewhere: load_yaml reports it, as before
    assert resolve_shipped(argv) is None and argv[1] == str(tmp_path / 'train_IMDN_x4.yml')
    argv = ['-opt', 'options/train_IMDN_x4.yml', '--debug']
    assert resolve_shipped(argv) == shipped_path('train_IMDN_x4') == argv[1]
    with pytest.raises(OptionError, match='nor a shipped one'):
        resolve_shipped(['-opt', 'no_such_recipe'])
