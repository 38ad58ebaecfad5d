"""Measurements of networks.

- Metrics registered in BasicSR's ``METRIC_REGISTRY`` (``*_metric.py``): ``ifc_metric`` is the information fidelity
  criterion of IDN's Table 3. The metric modules are imported by :func:`lwsr_plugin.register`, which runs before any
  of them (the plugin's import finder sees to it).
- ``paper_tables`` runs a test option file in-process as ``lwsr-test`` computes it, and measures the published tables
  of IDN and IMDN through the shipped test option files (``lwsr-test --paper-tables``).
- ``model_cost`` measures what a network costs to run: parameters, MACs, CPU/GPU latency and peak memory
  (``lwsr-report``). It imports neither torch nor BasicSR at module level, and neither does this package, so
  ``lwsr-report --help`` stays light.
"""
