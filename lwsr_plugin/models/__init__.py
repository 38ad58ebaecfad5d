"""Models registered in BasicSR's ``MODEL_REGISTRY`` (``*_model.py``): ``LWSRModel`` (BasicSR's SRModel with the
plugin's training options, the non-finite guard, gradient accumulation, safetensors checkpoints, tiled and
self-ensembled validation) and ``TwoStageSRModel`` (DRN's and IDN's two training stages). ``training_options``
parses and applies the ``train`` keys every plugin model shares (``amp``, ``channels_last``, ``compile``,
``grad_clip``, ``tf32``, ``max_nonfinite_steps``, ``accumulate``, ``deterministic``). Imported by
:func:`lwsr_plugin.register`, which runs before any module of this folder (the plugin's import finder sees to it)."""
