"""Imports every `*_dataset.py` module of this folder, which registers its classes in BasicSR's registries."""
from lwsr_plugin.utils import import_modules_with_suffix

_modules = import_modules_with_suffix(__name__, __file__, '_dataset.py')
