"""Convert an official IDN ``.caffemodel`` (Zheng222/IDN-Caffe) into a BasicSR ``.pth`` for the plugin's IDN.

    python scripts/convert_idn_caffemodel.py IDN_x4.caffemodel experiments/pretrained_models/IDN_x4.pth [--scale 4]

The output holds ``{'params': state_dict}``; use it as ``path.pretrain_network_g`` with ``network_g: {type: IDN,
upscale: <s>}`` (Y channel in/out). No Caffe installation is needed.
"""
import sys

from lwsr_plugin.convert.caffe_idn import main

if __name__ == '__main__':
    sys.exit(main())
