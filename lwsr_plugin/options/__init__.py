"""Option files, read in one place below the commands: the ``-opt`` argument of a BasicSR command line
(:func:`opt_path`; a shipped file by name, :func:`resolve_shipped`), the YAML (:func:`load_yaml`), the output root,
the test sets that are present; the checks run before BasicSR starts live in :mod:`lwsr_plugin.options.checks`, the
shipped option files (the repository's ``options/``) in :mod:`lwsr_plugin.options.shipped`. YAML only at import: no
torch. ``datasets.<phase>.num_worker_per_gpu: auto`` is resolved in :mod:`lwsr_plugin.options.workers`.

Output root (``experiments/``, ``tb_logger/``, ``results/``), first match wins:

1. ``path.root`` in the option file;
2. the environment variable ``LWSR_ROOT``;
3. the entry point's default: the working directory for ``lwsr-train``/``lwsr-test`` and for BasicSR's own
   ``train.py``/``test.py`` run from an installed BasicSR (whose own choice, the folder above the script, is
   site-packages); BasicSR's own root for its scripts run from a source checkout (``python basicsr/train.py``).
"""
import argparse
import contextlib
import os
import sys
import tempfile

import yaml

from lwsr_plugin.options.shipped import not_shipped, shipped_name, shipped_path

ENV_ROOT = 'LWSR_ROOT'


class OptionError(ValueError):
    """An option file that cannot run; the message names the key and the fix."""


def load_yaml(path):
    """The option file as a dict (BasicSR's own loader keeps key order; the order does not matter here)."""
    if not os.path.isfile(path):
        raise OptionError(f'{path}: no such option file.')
    with open(path, encoding='utf-8') as f:
        try:
            opt = yaml.safe_load(f)
        except yaml.YAMLError as err:
            mark = getattr(err, 'problem_mark', None)
            where = f' line {mark.line + 1}' if mark is not None else ''
            raise OptionError(f'{path}{where}: not valid YAML ({getattr(err, "problem", err)}). Fix the syntax.') \
                from None
    if not isinstance(opt, dict) or 'name' not in opt:
        raise OptionError(f'{path}: not a BasicSR option file (no top-level `name:`).')
    return opt


def output_root(opt, default, default_source):
    """``(root, source)``: the folder that receives ``experiments/`` etc. and a phrase saying why (see module)."""
    root = ((opt or {}).get('path') or {}).get('root')
    if root:
        return os.path.abspath(os.path.expanduser(str(root))), 'path.root in the option file'
    if os.environ.get(ENV_ROOT):
        return os.path.abspath(os.path.expanduser(os.environ[ENV_ROOT])), f'{ENV_ROOT}'
    return os.path.abspath(default), default_source


def is_site_packages(folder):
    """True for an installation folder (site-packages / dist-packages), where no run should write its outputs."""
    import site
    folder = os.path.realpath(folder)
    sites = set(site.getsitepackages() + [site.getusersitepackages()])
    return os.path.basename(folder) in ('site-packages', 'dist-packages') or \
        any(os.path.realpath(s) == folder for s in sites)


def _opt_parser():
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    parser.add_argument('--local_rank', '--local-rank')
    return parser


def opt_path(argv, rest=False):
    """The ``-opt`` value of a BasicSR command line (None when absent); with ``rest``, ``(value, other arguments)``
    (``--local_rank`` left out: it differs between the processes of one run)."""
    known, others = _opt_parser().parse_known_args(list(argv))
    return (known.opt, others) if rest else known.opt


def opt_index(argv):
    """Index in ``argv`` of the ``-opt`` value (``-opt X``), or None."""
    for i, arg in enumerate(argv[:-1]):
        if arg == '-opt':
            return i + 1
    return None


def resolve_shipped(argv):
    """Point ``-opt NAME`` in ``argv`` (a list, changed in place) at the shipped option file NAME when no file NAME
    exists here: ``train_IMDN_x4``, ``train_IMDN_x4.yml`` and ``options/train_IMDN_x4.yml`` then run from any folder.
    Returns the shipped path, or None when ``-opt`` names an existing file or a path elsewhere (which ``load_yaml``
    reports); OptionError with the closest shipped names for a name that is neither here nor shipped."""
    i = opt_index(argv)
    if i is None or os.path.exists(argv[i]):
        return None
    path = shipped_path(argv[i])
    if path is not None:
        argv[i] = path
    elif shipped_name(argv[i]) is not None:
        raise OptionError('-opt ' + not_shipped(argv[i], f'no such option file in {os.getcwd()}, nor a shipped one'))
    return path


def dataset_paths(opt, root):
    """``(option key, path under root)`` of every data path of every dataset phase of ``opt``."""
    for phase, ds in (opt.get('datasets') or {}).items():
        if not isinstance(ds, dict):
            continue
        for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file'):
            value = ds.get(key)
            if value is None:
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                yield f'datasets.{phase}.{key}', os.path.join(root, os.path.expanduser(str(v)))


def drop_absent_datasets(opt, root=None, log=print):
    """Remove from ``opt['datasets']`` (in place) every test set whose data folders do not exist under ``root``.

    Returns the names of the removed sets; each is reported through ``log`` as skipped.
    """
    root = root or os.getcwd()
    datasets = opt.get('datasets') or {}
    absent = {}
    for key, path in dataset_paths(opt, root):
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
    i = opt_index(argv)
    if i is None or not os.path.isfile(argv[i]):
        yield
        return
    original = argv[i]
    with open(original, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    if not isinstance(opt, dict) or 'train' in (opt.get('datasets') or {}) or not drop_absent_datasets(opt):
        yield
        return
    if not opt.get('datasets'):
        print(f'lwsr-test: none of the test sets of {original} is present under {os.getcwd()}. Run from the folder '
              'that holds datasets/, or make the sets with lwsr-prepare-benchmark.', file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as tmp:
        argv[i] = os.path.join(tmp, os.path.basename(original))
        with open(argv[i], 'w', encoding='utf-8') as f:
            yaml.safe_dump(opt, f, sort_keys=False)
        try:
            yield
        finally:
            argv[i] = original
