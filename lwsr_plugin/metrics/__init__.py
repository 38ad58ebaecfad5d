"""Metrics registered in BasicSR's ``METRIC_REGISTRY`` (``*_metric.py``): ``ifc_metric`` is the information
fidelity criterion of IDN's Table 3. ``paper_tables`` measures the published tables of IDN and IMDN through the
shipped test option files (``lwsr-test --paper-tables``). The metric modules are imported by :func:`lwsr_plugin.register`, which runs before any module of this
folder (the plugin's import finder sees to it)."""
