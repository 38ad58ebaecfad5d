"""lwsr_plugin: IDN, IMDN, DRN and s-LWSR for BasicSR 1.4.2.

Importing the package makes every plugin arch, model, loss, dataset and metric part of BasicSR's registries: at
once if ``basicsr`` is already imported, otherwise at the moment it is (see :mod:`lwsr_plugin.registration`), so
no registry can be read without them. The import itself is cheap: torch and BasicSR are loaded only when BasicSR
is, which keeps ``--help`` and file checks of every command fast. ``lwsr_plugin.register()`` forces it.
"""
import importlib
import sys

import _lwsr_plugin_startup

from .registration import import_user_modules, register  # noqa: F401
from .version import __version__  # noqa: F401

_lwsr_plugin_startup.install()  # torchvision alias + registration on `import basicsr`, even with autoload off
if 'basicsr' in sys.modules:
    register()

_LAZY = ('archs', 'data', 'losses', 'metrics', 'models', 'inference', 'fast', 'ops', 'convert', 'patches', 'fileio')


def __getattr__(name):  # `lwsr_plugin.archs.imdn_arch` without an import statement, as before
    if name in _LAZY:
        register()
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
