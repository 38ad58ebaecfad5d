"""The commands (``lwsr-*`` console scripts): argument parsing, messages and exit codes around the engines below
(:mod:`lwsr_plugin.entry`, :mod:`lwsr_plugin.inference`, :mod:`lwsr_plugin.options`, ...). This is the top layer:
nothing outside this folder imports from it. ``lwsr-train``/``lwsr-test`` are :mod:`lwsr_plugin.train` and
:mod:`lwsr_plugin.test` (``python -m`` and ``torchrun -m`` need them at the package top); the data preparation
commands live beside their code in :mod:`lwsr_plugin.data`, the IDN converter in :mod:`lwsr_plugin.convert`."""
