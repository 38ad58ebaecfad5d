"""The README's main job: lwsr-demo trains IMDN x4 with BasicSR's trainer on scikit-image photos and beats bicubic."""
import os
import re

import pytest

from _utils import BIN, run


@pytest.mark.slow
def test_demo_beats_bicubic(tmp_path):
    out = run([os.path.join(BIN, 'lwsr-demo'), '--output', str(tmp_path / 'demo')], cwd=tmp_path, timeout=1500).stdout
    sr, bic = map(float, re.search(r'SR \(IMDN x4\) Y-PSNR ([\d.]+) dB \| bicubic Y-PSNR ([\d.]+) dB', out).groups())
    assert sr > bic, out[-2000:]
    images = os.listdir(tmp_path / 'demo' / 'images')
    assert 'chelsea_SR_x4.png' in images and 'chelsea_comparison.png' in images
    print(re.search(r'finished in \d+ s', out).group(0), f'SR {sr:.2f} dB vs bicubic {bic:.2f} dB')
    # a second run refuses to mix into the first one's folder
    again = run([os.path.join(BIN, 'lwsr-demo'), '--output', str(tmp_path / 'demo')], cwd=tmp_path, check=False)
    assert again.returncode != 0 and 'already holds a demo run' in again.stdout
