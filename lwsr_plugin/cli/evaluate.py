"""Evaluation over the benchmark sets that are present (``lwsr-test`` / ``lwsr-evaluate -opt options/test_X.yml``).

The shipped test option files list Set5, Set14, BSD100, Urban100 and Manga109 at every scale; a set whose folders are
missing (Manga109 is not redistributed; Urban100 may have x4 only) is reported as skipped instead of stopping the
run. Everything else is ``lwsr-test``'s: results go to ``results/<name>`` under the current directory.
"""
import contextlib
import os
import sys
import tempfile

import yaml

from lwsr_plugin.cli.checks import _dataset_paths


def drop_absent_datasets(opt, root=None, log=print):
    """Remove from ``opt['datasets']`` (in place) every test set whose data folders do not exist under ``root``.

    Returns the names of the removed sets; each is reported through ``log`` as skipped.
    """
    root = root or os.getcwd()
    datasets = opt.get('datasets') or {}
    absent = {}
    for key, path in _dataset_paths(opt, root):
        phase = key.split('.')[1]
        if not phase.startswith('train') and not os.path.exists(path):
            absent.setdefault(phase, path)
    skipped = []
    for phase, path in absent.items():
        name = datasets[phase].get('name', phase)
        log(f'skipped {name}: {path} does not exist')
        skipped.append(name)
        del datasets[phase]
    return skipped


@contextlib.contextmanager
def present_datasets_only(argv):
    """While active, ``-opt X`` in ``argv`` (a list, changed in place) points to a temporary copy of X without its
    absent test sets; each is reported as skipped. A training option file (with a ``train`` set) is left alone:
    there a missing folder is an error, which ``checks`` reports."""
    if '-opt' not in argv or argv.index('-opt') + 1 >= len(argv) or not os.path.isfile(argv[argv.index('-opt') + 1]):
        yield
        return
    i = argv.index('-opt') + 1
    original = argv[i]
    with open(original, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    if not isinstance(opt, dict) or 'train' in (opt.get('datasets') or {}) or not drop_absent_datasets(opt):
        yield
        return
    if not opt.get('datasets'):
        sys.exit(f'lwsr-test: none of the test sets of {original} is present under {os.getcwd()}.')
    with tempfile.TemporaryDirectory() as tmp:
        argv[i] = os.path.join(tmp, os.path.basename(original))
        with open(argv[i], 'w', encoding='utf-8') as f:
            yaml.safe_dump(opt, f, sort_keys=False)
        try:
            yield
        finally:
            argv[i] = original


def main(argv=None):
    """``lwsr-evaluate``: the same as ``lwsr-test`` (which skips absent sets too)."""
    from lwsr_plugin.test import main as test_main
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    return test_main()


if __name__ == '__main__':
    main()
