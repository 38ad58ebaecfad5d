"""When and what the plugin registers in BasicSR's registries, and how a user's own modules join them.

Registration imports torch and BasicSR (seconds), so it happens once, at the moment BasicSR is imported (the
start-up finder calls :func:`register` right after ``basicsr`` finishes importing), or at once when ``basicsr`` was
already imported. Either way no registry can be read before the plugin's types are in it. Commands that only need
``--help`` or a file check therefore never pay for torch.

A user's own arch/model/loss/dataset/metric modules are named, for every entry point (``lwsr-train``,
``lwsr-test``, BasicSR's own ``train.py``/``test.py``, ``torchrun``, spawned DataLoader workers), by

* the option-file key ``user_modules: [./myarchs, mypkg.my_arch]``, and/or
* the environment variable ``LWSR_USER_MODULES=./myarchs:mypkg.my_arch`` (``os.pathsep``-separated).

Each entry is a folder (every ``*_arch.py``, ``*_model.py``, ``*_loss.py``, ``*_dataset.py`` and ``*_metric.py`` in
it is imported, as BasicSR does for its own folders; the folder goes on ``sys.path``, so spawned workers find the
modules too), a ``.py`` file, or a dotted module name importable from ``sys.path`` or the working directory.
Relative paths are read from the working directory, as BasicSR reads dataset paths.
"""
import importlib
import os
import sys

ENV_USER_MODULES = 'LWSR_USER_MODULES'
OPTION_USER_MODULES = 'user_modules'
# BasicSR scans its folders for the first four; metrics are imported by name there, a folder scan is friendlier.
SUFFIXES = ('_arch.py', '_loss.py', '_metric.py', '_dataset.py', '_model.py')
_SUBPACKAGES = (('archs', '_arch.py'), ('losses', '_loss.py'), ('metrics', '_metric.py'), ('data', '_dataset.py'),
                ('models', '_model.py'))
_state = {'plugin': None, 'user': set()}  # plugin: None | 'running' | 'done'


class UserModuleError(ImportError):
    """A ``user_modules`` entry that names nothing importable; the message names the entry and the fix."""


def module_names(folder, suffixes):
    """Sorted stems of the files in ``folder`` whose names end in ``suffixes`` (a string or tuple), hidden ones out."""
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(suffixes) and not f.startswith('.'))


def import_modules_with_suffix(package_name, folder, suffix):
    """Import ``<package>.<stem>`` for every ``<stem><suffix>`` file in ``folder`` (sorted), as BasicSR's own
    subpackages do: dropping a ``*_arch.py`` / ``*_model.py`` / ``*_loss.py`` file in the folder registers it."""
    return [importlib.import_module(f'{package_name}.{name}') for name in module_names(folder, suffix)]


def register():
    """Import the compatibility patches and every registering plugin module, then the user's modules named by
    ``LWSR_USER_MODULES``. Idempotent; a call made while registration is under way (BasicSR's import, triggered by
    it, calls back) returns at once."""
    if _state['plugin'] is not None:
        return
    _state['plugin'] = 'running'
    try:
        importlib.import_module('lwsr_plugin.patches')  # imports basicsr; applies the patches
        root = os.path.dirname(os.path.abspath(__file__))
        for sub, suffix in _SUBPACKAGES:
            import_modules_with_suffix(f'lwsr_plugin.{sub}', os.path.join(root, sub), suffix)
    except BaseException:
        _state['plugin'] = None
        raise
    _state['plugin'] = 'done'
    import_user_modules(split_env(os.environ.get(ENV_USER_MODULES, '')), source=ENV_USER_MODULES)


def is_registered():
    return _state['plugin'] == 'done'


def is_started():
    """Registration is done or under way (a module it imports must not start it again)."""
    return _state['plugin'] is not None


def split_env(value):
    return [v for v in (value or '').split(os.pathsep) if v.strip()]


def _is_path(entry):
    return entry.endswith('.py') or os.sep in entry or '/' in entry or entry in ('.', '..') or os.path.isdir(entry)


def _on_sys_path(folder):
    folder = os.path.abspath(folder)
    if folder not in (os.path.abspath(p or '.') for p in sys.path):
        sys.path.insert(0, folder)


def _import(name, entry, source):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):  # the named module itself, not one it imports
            raise UserModuleError(
                f'{source}: {entry!r} is neither a folder, a .py file nor an importable module (looked in '
                f'{os.getcwd()} and on sys.path). Fix the entry: a folder of *_arch.py files, a path to a .py '
                'file, or a dotted module name.') from None
        raise


def import_user_modules(entries, source=OPTION_USER_MODULES):
    """Import a user's modules (folders, ``.py`` files or dotted names; see the module docstring) once each.

    ``source`` names where the entries came from, for error messages. Returns the imported module names.
    """
    if isinstance(entries, str):
        entries = [entries]
    imported = []
    for raw in entries or []:
        entry = os.path.expanduser(str(raw).strip())
        key = os.path.abspath(entry) if _is_path(entry) else entry
        if not entry or key in _state['user']:
            continue
        if _is_path(entry):
            if os.path.isdir(entry):
                _on_sys_path(entry)
                names = module_names(entry, SUFFIXES)
                if not names:
                    raise UserModuleError(f'{source}: folder {entry!r} has no file ending in {", ".join(SUFFIXES)}. '
                                          'Name your modules like BasicSR does (e.g. tinysr_arch.py).')
            elif os.path.isfile(entry) and entry.endswith('.py'):
                _on_sys_path(os.path.dirname(entry) or '.')
                names = [os.path.basename(entry)[:-3]]
            else:
                raise UserModuleError(f'{source}: {entry!r} does not exist (relative paths are read from '
                                      f'{os.getcwd()}). Fix the path or run from the folder that holds it.')
        else:
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())  # `user_modules: [myarchs.tinysr_arch]` from the working directory
            names = [entry]
        for name in names:
            _import(name, entry, source)
            imported.append(name)
        _state['user'].add(key)
    return imported


def resolve_network(opt, option='network_g'):
    """The registered class for a network option dict; errors name the option: unknown ``type``, unknown kwarg."""
    import difflib
    import inspect

    from basicsr.utils.registry import ARCH_REGISTRY
    arch = opt.get('type')
    for name in (arch, f'{arch}_basicsr'):
        if name in ARCH_REGISTRY:
            cls = ARCH_REGISTRY.get(name)
            break
    else:
        close = difflib.get_close_matches(str(arch), list(ARCH_REGISTRY.keys()), n=3)
        raise KeyError(f'{option}.type: {arch!r} is not registered in BasicSR\'s ARCH_REGISTRY' +
                       (f'; did you mean {close}?' if close else '.') +
                       f' Registered: {sorted(ARCH_REGISTRY.keys())}. For your own arch, list its file or folder under '
                       '`user_modules:` in the option file (or in LWSR_USER_MODULES); see the README section '
                       'Your own arch.')
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in opt if k != 'type' and k not in params]
        if unknown:
            raise TypeError(f'{option}: {unknown} not accepted by {arch}. Remove or rename them; {arch} takes: '
                            f'{[k for k in params if k != "self"]}.')
    return cls
