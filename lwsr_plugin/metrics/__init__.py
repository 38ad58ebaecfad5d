"""Every `*_metric.py` module of this folder registers its classes in BasicSR's registries. They are imported by
:func:`lwsr_plugin.register`, which runs before any module of this folder (the plugin's import finder sees to it)."""
