"""What the commands do where a package they use is not installed (simulated in the subprocess by a sitecustomize
that makes its import fail): lwsr-export and lwsr-report --plot stop before any work in one line naming the extra;
lwsr-reproduce keeps its results (summary.md, curve.csv, weights) and notes the skipped plot in one line."""
import os

import pytest

from _utils import PY, run
from conftest import REPO
from test_reproduce import _tiny_291_sources

HIDE = '''
import os, sys

class HideModules:
    """Every import of the top-level packages named in LWSR_TEST_HIDE fails, as where they are not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in os.environ['LWSR_TEST_HIDE'].split(','):
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)

sys.meta_path.insert(0, HideModules())
'''


def without(tmp_path, *modules):
    """The environment of a subprocess in which ``modules`` do not import."""
    shim = tmp_path / 'shim'
    shim.mkdir(exist_ok=True)
    (shim / 'sitecustomize.py').write_text(HIDE)
    return {'PYTHONPATH': str(shim), 'LWSR_TEST_HIDE': ','.join(modules)}


@pytest.mark.parametrize('hidden, extra_args, missing', [
    (('onnx', 'onnxruntime'), [], 'onnx and onnxruntime are'),
    (('onnxruntime', ), [], 'onnxruntime is'),
    (('onnx', ), ['--no-check'], 'onnx is'),
], ids=['both', 'onnxruntime', 'onnx-no-check'])
def test_export_names_the_extra_before_any_work(tmp_path, hidden, extra_args, missing):
    proc = run([PY, '-m', 'lwsr_plugin.cli.export', '-o', str(tmp_path / 'm.onnx'), '--arch', 'IMDN', '--scale', '2']
               + extra_args, cwd=str(tmp_path), env=without(tmp_path, *hidden), check=False)
    assert proc.returncode == 2 and proc.stdout == (f'lwsr-export: {missing} not installed; install what the command '
                                                    'needs with: pip install "lwsr_plugin[onnx]"\n')
    assert not (tmp_path / 'm.onnx').exists()


def test_report_plot_names_the_extra(tmp_path):
    (tmp_path / 'r.csv').write_text('name,params,psnr\nIMDN,715176,32.21\n')
    proc = run([PY, '-m', 'lwsr_plugin.cli.report', '--plot', 'r.csv', '--out', 'out'], cwd=str(tmp_path),
               env=without(tmp_path, 'matplotlib'), check=False)
    assert proc.returncode == 2 and proc.stdout == ('lwsr-report: --plot needs matplotlib, which is not installed; '
                                                    'install it with: pip install "lwsr_plugin[report]"\n')
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_reproduce_keeps_its_results_without_matplotlib(tmp_path, datasets_dir):
    data = _tiny_291_sources(tmp_path, datasets_dir)
    work = tmp_path / 'work'
    (work / 'datasets').mkdir(parents=True)
    os.symlink(data / 'Set5', work / 'datasets' / 'Set5')
    run([PY, '-m', 'lwsr_plugin.data.set291', '--input', str(data / 'T91'), '--out', 'datasets/291', '--y-only',
         '--factors', '1.0', '--scales', '3', '--workers', '1'], cwd=str(work))
    proc = run([PY, '-m', 'lwsr_plugin.cli.reproduce', '--recipe', 'IDN_x3', '--iters', '2', '--evals', '1',
                '--batch', '4', '--sets', 'Set5', '--options', os.path.join(REPO, 'options'), '--out', 'results'],
               cwd=str(work), env=without(tmp_path, 'matplotlib'))
    result = work / 'results' / 'IDN_x3'
    assert 'Traceback' not in proc.stdout
    assert sorted(os.listdir(result)) == ['curve.csv', 'experiments', 'net_g.pth', 'options.yml', 'summary.md']
    summary = (result / 'summary.md').read_text()
    assert '| Set5 |' in summary and 'The curve: curve.csv (curve.png skipped: matplotlib is not installed).' in summary
    notes = [line for line in proc.stdout.splitlines() if 'curve.png skipped' in line and 'pip install' in line]
    assert notes == ['lwsr-reproduce: curve.png skipped: matplotlib is not installed (curve.csv and summary.md are '
                     'written); for the plot install it with: pip install "lwsr_plugin[report]"']
