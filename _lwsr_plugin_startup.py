"""Interpreter start-up hook of lwsr_plugin (run by ``lwsr_plugin_startup.pth`` in site-packages).

BasicSR 1.4.2 imports only its own folders, so an unmodified ``basicsr/train.py`` never sees plugin archs, and it
cannot even be imported on torchvision >= 0.17 (``torchvision.transforms.functional_tensor`` was removed). This module
installs one lazy meta-path finder that fixes both, at the moment they matter:

* ``torchvision.transforms.functional_tensor`` is served as an alias of the module that still holds its functions;
* right after the real ``basicsr`` package finishes importing, ``lwsr_plugin.register()`` runs, which registers every
  plugin arch, model, loss, dataset and metric in BasicSR's registries (and the user's modules named by
  ``LWSR_USER_MODULES``).

It imports neither torch nor basicsr itself: start-up stays cheap for every Python process. It is idempotent (a venv
whose ``lib64`` links to ``lib`` processes the ``.pth`` twice) and is switched off by ``LWSR_PLUGIN_AUTOLOAD=0``.
The same finder is installed by ``import lwsr_plugin``, so an environment without the ``.pth`` still works when the
plugin is imported first.

It also lets BasicSR's own ``basicsr/train.py`` / ``basicsr/test.py``, run as scripts, behave like ``lwsr-train`` /
``lwsr-test`` (see ``lwsr_plugin.entry``): that needs no work here, the patches are applied at registration.
"""
import importlib
import importlib.abc
import importlib.util
import os
import sys

_ALIASES = {
    # torchvision >= 0.17 keeps rgb_to_grayscale & co. here; BasicSR 1.4.2 imports the old public name.
    'torchvision.transforms.functional_tensor': ('torchvision.transforms._functional_tensor',
                                                 'torchvision.transforms.functional'),
}
_ENV = 'LWSR_PLUGIN_AUTOLOAD'


def autoload_enabled():
    return os.environ.get(_ENV, '1').strip().lower() not in ('0', 'false', 'no', 'off')


class _AliasLoader(importlib.abc.Loader):

    def __init__(self, candidates):
        self.candidates = candidates

    def create_module(self, spec):
        errors = []
        for name in self.candidates:
            try:
                return importlib.import_module(name)
            except ImportError as err:  # try the next home of the functions
                errors.append(f'{name}: {err}')
        raise ImportError(f'{spec.name} is an alias, but none of its targets imports: ' + '; '.join(errors))

    def exec_module(self, module):
        pass  # the target module is already executed


class _BasicsrLoader(importlib.abc.Loader):
    """Wraps the real loader of the ``basicsr`` package; imports lwsr_plugin once basicsr is complete."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        # with the automatic hook off, a process that imported lwsr_plugin itself still asked for registration
        if autoload_enabled() or 'lwsr_plugin' in sys.modules:
            importlib.import_module('lwsr_plugin').register()

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the wrapped loader
        return getattr(self.loader, name)


# Modules of the plugin that import neither torch nor BasicSR at module level: command entry points and the data
# preparation tools answer --help and check their arguments without them. Importing any other plugin module first
# registers the whole plugin, before that module runs (see LwsrPluginFinder).
_LIGHT = ('lwsr_plugin.registration', 'lwsr_plugin.version', 'lwsr_plugin.options', 'lwsr_plugin.options.shipped',
          'lwsr_plugin.options.keys', 'lwsr_plugin.options.workers',
          'lwsr_plugin.fileio', 'lwsr_plugin.entry', 'lwsr_plugin.train', 'lwsr_plugin.test', 'lwsr_plugin.cli',
          'lwsr_plugin.data', 'lwsr_plugin.spandrel_arches', 'lwsr_plugin.metrics', 'lwsr_plugin.metrics.model_cost')


def needs_registration(fullname):
    """True for a plugin module whose code may use the registries (archs, models, inference, ...)."""
    if not fullname.startswith('lwsr_plugin.'):
        return False
    if fullname in _LIGHT or fullname.startswith(('lwsr_plugin.cli.', 'lwsr_plugin.convert')):
        return False
    return not (fullname.startswith('lwsr_plugin.data.') and not fullname.endswith('_dataset'))


class _ExistingModuleLoader(importlib.abc.Loader):
    """Hands out a module that registration imported while its own import was being looked up."""

    def __init__(self, module):
        self.module = module
        self.spec = getattr(module, '__spec__', None)

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        module.__spec__ = self.spec  # back to the module's own spec


class LwsrPluginFinder(importlib.abc.MetaPathFinder):
    _busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _ALIASES:
            return importlib.util.spec_from_loader(fullname, _AliasLoader(_ALIASES[fullname]))
        if needs_registration(fullname):
            # register before the module runs: registration imports archs, models, ... in a fixed order, so no
            # plugin module is ever caught half-initialised in an import cycle, whatever the user imports first
            plugin = sys.modules.get('lwsr_plugin')
            if plugin is not None and not plugin.registration.is_started():
                plugin.register()
                if fullname in sys.modules:  # registration imported it: hand that one out instead of running it again
                    module = sys.modules[fullname]
                    spec = importlib.util.spec_from_loader(fullname, _ExistingModuleLoader(module))
                    module.__spec__ = spec  # importlib takes the spec of a module that appeared meanwhile
                    return spec
            return None
        if fullname != 'basicsr' or LwsrPluginFinder._busy:
            return None
        LwsrPluginFinder._busy = True  # find the real package with the other finders, not with us again
        try:
            spec = importlib.util.find_spec('basicsr')
        finally:
            LwsrPluginFinder._busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _BasicsrLoader(spec.loader)
        return spec


def install():
    """Put the finder first on ``sys.meta_path`` (once). Returns True if it is installed."""
    if any(isinstance(f, LwsrPluginFinder) or type(f).__name__ == 'LwsrPluginFinder' for f in sys.meta_path):
        return True
    sys.meta_path.insert(0, LwsrPluginFinder())
    return True


if autoload_enabled():
    install()
