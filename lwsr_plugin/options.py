"""A BasicSR option file read before BasicSR runs (YAML only: no torch), and where a run writes its outputs.

Output root (``experiments/``, ``tb_logger/``, ``results/``), first match wins:

1. ``path.root`` in the option file;
2. the environment variable ``LWSR_ROOT``;
3. the entry point's default: the working directory for ``lwsr-train``/``lwsr-test`` and for BasicSR's own
   ``train.py``/``test.py`` run from an installed BasicSR (whose own choice, the folder above the script, is
   site-packages); BasicSR's own root for its scripts run from a source checkout (``python basicsr/train.py``).
"""
import os

import yaml

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
