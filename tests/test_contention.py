"""The intra-op thread governor (lwsr_plugin.patches.threads): its choice for given CPU counts and busy CPUs, its log
line, the overrides, and a real training beside CPU-bound processes that lowers its threads and says so."""
import os
import re
import subprocess
import sys
import time

import pytest

from _utils import PY, link_datasets, write_options
from lwsr_plugin.options.workers import usable_cpus
from lwsr_plugin.patches import threads


@pytest.mark.parametrize('cpus, busy, max_threads, expected', [
    (2, 0.0, 2, 2), (2, 0.3, 2, 2), (2, 0.6, 2, 1), (2, 1.9, 2, 1), (2, 5.0, 2, 1),
    (16, 3.2, 16, 13), (16, 0.0, 8, 8), (4, 1.0, 1, 1)])
def test_choose_threads(cpus, busy, max_threads, expected):
    assert threads.choose_threads(cpus, busy, max_threads) == expected


class FakeMeter:
    def __init__(self, values):
        self.values = list(values)

    def busy_others(self):
        return self.values.pop(0)

    def seconds(self):
        return 5.0


def test_governor_lowers_and_restores_threads_and_logs():
    set_to, lines = [], []
    gov = threads.ThreadGovernor(2, 2, meter=FakeMeter([1.9, 1.0, 0.1]), log=lines.append, set_threads=set_to.append,
                                 interval=10)
    assert gov.check(now=100) == 1
    assert lines == ['lwsr_plugin: 2 CPUs, about 1.9 busy with other processes: training with 1 intra-op thread '
                     '(LWSR_THREADS=<n> to override)']
    assert gov.check(now=105) == 1 and set_to == [1]  # within the interval: no new reading
    assert gov.check(now=110) == 1 and set_to == [1] and len(lines) == 1  # unchanged: no line
    assert gov.check(now=120) == 2 and set_to == [1, 2]
    assert lines[-1] == ('lwsr_plugin: 2 CPUs, about 0.1 busy with other processes: training with 2 intra-op '
                         'threads again')


def test_overrides_and_wait_policy():
    assert threads.fixed_threads({}) is None
    assert threads.fixed_threads({'LWSR_THREADS': 'auto', 'OMP_NUM_THREADS': ''}) is None
    assert threads.fixed_threads({'LWSR_THREADS': '3', 'OMP_NUM_THREADS': '1'}) == 3
    assert threads.fixed_threads({'OMP_NUM_THREADS': '4'}) == 4
    with pytest.raises(ValueError, match='LWSR_THREADS'):
        threads.fixed_threads({'LWSR_THREADS': 'two'})


def test_cpu_meter_reads_this_machine():
    meter = threads.CpuMeter()
    sum(i * i for i in range(200000))  # own work, which the reading leaves out
    time.sleep(threads.MIN_WINDOW + 0.2)  # a window of many clock ticks: a short one reads whole ticks as CPUs
    busy = meter.busy_others()
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 0.5


@pytest.mark.skipif(usable_cpus() < 2, reason='one usable CPU: the governor has nothing to lower')
def test_training_beside_busy_processes_lowers_threads(tmp_path, datasets_dir):
    """A real training started while every usable CPU runs a busy loop of another process logs the governor's line
    and trains with fewer intra-op threads than CPUs."""
    work = link_datasets(tmp_path, datasets_dir)
    # the governor's first reading needs threads.MIN_WINDOW seconds since the plugin loaded: start-up alone can be
    # shorter, so the run must train on for a while (this tiny IMDN: a few dozen iterations a second at most)
    opt = write_options(tmp_path / 'opt.yml', **{'train.total_iter': 60})
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'LWSR_THREADS')}
    burners = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(usable_cpus())]
    try:
        proc = subprocess.run([PY, '-m', 'lwsr_plugin.train', '-opt', opt], cwd=work,
                              env=dict(env, PYTHONUNBUFFERED='1'), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert proc.returncode == 0, proc.stdout[-4000:]
    found = re.search(r'lwsr_plugin: (\d+) CPUs, about [\d.]+ busy with other processes: training with (\d+) '
                      r'intra-op threads? \(LWSR_THREADS=<n> to override\)', proc.stdout)
    assert found, proc.stdout[-4000:]
    assert int(found[1]) == usable_cpus() and int(found[2]) < usable_cpus()


def test_cpu_meter_own_time_matches_os_times():
    """The meter's own-process ticks (utime + stime of /proc/self/stat) are this process's CPU time."""
    sum(i * i for i in range(300000))
    ticks = threads._read_ticks('/proc/self/stat', 14, 15) / os.sysconf('SC_CLK_TCK')
    times = os.times()
    assert abs(ticks - (times.user + times.system)) < 0.1
