"""The networks, one ``<family>_arch.py`` per paper, each class registered in BasicSR's ``ARCH_REGISTRY`` by
``@ARCH_REGISTRY.register()``; the ``network_g`` keys of an option file are its keyword arguments, named as in the
paper. ``imdn_arch`` (IMDN, IMDN_AS, IMDN_RTC), ``idn_arch`` (IDN), ``drn_arch`` (DRN, DRN+), ``slwsr_arch``
(s-LWSR16/32/64/32c); ``blocks`` holds the layers several families share. Pure torch: nothing here imports the rest
of the plugin. Imported by :func:`lwsr_plugin.register`, which runs before any module of this folder (the plugin's
import finder sees to it)."""
