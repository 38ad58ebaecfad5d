"""Former home of ``FastIMDN``; the fast inference forms of every arch now live in :mod:`lwsr_plugin.fast`."""
from lwsr_plugin.fast import FastIMDN, fast_inference_net  # noqa: F401
