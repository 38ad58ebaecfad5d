"""Converters of official releases into BasicSR checkpoints: ``caffe_idn`` reads IDN's Caffe ``.caffemodel``
files (``lwsr-convert-idn``) into ``params`` state dicts that :class:`lwsr_plugin.archs.idn_arch.IDN` loads
strictly."""
