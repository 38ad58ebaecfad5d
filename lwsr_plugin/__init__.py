"""lwsr_plugin: IDN, IMDN, DRN and s-LWSR for BasicSR 1.4.2.

Importing the package makes BasicSR importable on today's torch/torchvision (``compat``) and registers every plugin
arch, model, loss, dataset and metric in BasicSR's registries, by their decorators. Importing it twice is harmless:
Python runs each module once.
"""
from . import compat  # noqa: F401  (first: basicsr cannot be imported before it)
from .version import __version__  # noqa: F401
from . import archs, data, losses, metrics, models  # noqa: F401  (registration side effects)
