"""Intra-op threads that fit the CPUs other processes leave free, re-checked while training runs.

Two trainings on the same cores, each with as many OpenMP threads as there are cores, lose far more than half their
speed: a thread that waits at an OpenMP barrier spins on a CPU that the other run's threads need. The plugin's part:

* :func:`choose_threads`: the intra-op threads for ``cpus`` usable CPUs of which about ``busy`` are used by other
  processes (the free CPUs, rounded, between 1 and the process's own maximum);
* :class:`CpuMeter`: the CPUs other processes used since the last reading, from ``/proc/stat`` (the CPUs of this
  process's affinity mask) minus this process's own time and that of its children (DataLoader workers);
* :class:`ThreadGovernor`: every :data:`CHECK_SECONDS` of training sets ``torch.set_num_threads`` to the choice and
  logs one line when the number changes because of other processes;
* :func:`install`: runs the governor from ``BaseModel.update_learning_rate``, which BasicSR's training loop calls in
  its main thread once per iteration (OpenMP thread counts are a setting of the calling thread);

``LWSR_THREADS=<n>`` fixes the intra-op threads at ``n`` and switches the governor off; ``OMP_NUM_THREADS`` (set by
the user or by torchrun) and ``train.deterministic: true`` also switch it off, keeping the thread count fixed (the
kernels' results can depend on it, so a run whose threads follow the load is not reproducible to the bit).
``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once) is left to the command's environment: OpenMP reads it
when torch loads (``scripts/benchmark_contention.py``; docs/reliability.md has its table).
"""
import logging
import os
import time

ENV_THREADS = 'LWSR_THREADS'
# long enough that reading /proc costs nothing next to the iterations between two checks, short enough that a run
# started next to this one is noticed within a few dozen iterations
CHECK_SECONDS = 10.0
MIN_WINDOW = 1.0  # a shorter window holds too few clock ticks (100 a second) to tell 1.4 busy CPUs from 1.6
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (idle and iowait are free time)


def choose_threads(cpus, busy, max_threads):
    """Intra-op threads for ``cpus`` usable CPUs with about ``busy`` of them used by other processes: the free CPUs
    rounded to the nearest whole number, at least 1 and at most ``max_threads``."""
    free = cpus - max(busy, 0.0)
    return max(1, min(int(free + 0.5), max_threads, cpus))


def oversubscribed_line(cpus, busy, threads):
    """The log line for a thread count lowered because other processes use the CPUs."""
    return (f'lwsr_plugin: {cpus} CPUs, about {busy:.1f} busy with other processes: training with {threads} '
            f'intra-op thread{"s" * (threads != 1)} ({ENV_THREADS}=<n> to override)')


def fixed_threads(environ=None):
    """The thread count the user fixed (``LWSR_THREADS``, else ``OMP_NUM_THREADS``), or None: let the governor
    choose. A value that is not a whole number >= 1 raises ValueError naming the variable."""
    environ = os.environ if environ is None else environ
    for name in (ENV_THREADS, 'OMP_NUM_THREADS'):
        value = environ.get(name, '').strip()
        if not value or (name == ENV_THREADS and value == 'auto'):
            continue
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f'{name}={value!r}: use a whole number of intra-op threads >= 1'
                             + (' or auto' if name == ENV_THREADS else ''))
        return int(value)
    return None


def _read_ticks(path, first, last):
    with open(path) as f:
        fields = f.read().rsplit(')', 1)[-1].split()  # after the command name, which may hold spaces
    return sum(int(v) for v in fields[first - 3:last - 2])  # 1-based fields; the state, field 3, comes first


def _children(pid):
    kids = []
    try:
        for tid in os.listdir(f'/proc/{pid}/task'):
            with open(f'/proc/{pid}/task/{tid}/children') as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


class CpuMeter:
    """CPUs used by other processes between two readings (:meth:`busy_others`), on the CPUs this process may use."""

    def __init__(self, pid=None):
        self.pid = pid or os.getpid()
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None
        self._last = self._read()

    def _read(self):
        """(busy ticks of the usable CPUs, ticks of this process and its live children, monotonic seconds)."""
        busy = 0
        with open('/proc/stat') as f:
            for line in f:
                name, *values = line.split()
                if not name.startswith('cpu') or name == 'cpu':
                    continue
                if self.cpus is None or int(name[3:]) in self.cpus:
                    busy += sum(int(values[i]) for i in _BUSY_FIELDS if i < len(values))
        own = 0
        for pid in [self.pid] + _children(self.pid):
            try:
                own += _read_ticks(f'/proc/{pid}/stat', 14, 15)
            except (OSError, ValueError):
                pass  # a worker that ended between the listing and the read
        return busy, own, time.monotonic()

    def busy_others(self):
        """CPUs that other processes kept busy, on average, since the previous call (or since construction)."""
        now = self._read()
        busy, own, seconds = (a - b for a, b in zip(now, self._last))
        self._last = now
        ticks = os.sysconf('SC_CLK_TCK') * max(seconds, 1e-3)
        return max(busy - own, 0) / ticks

    def seconds(self):
        """Seconds since the previous reading."""
        return time.monotonic() - self._last[2]


class ThreadGovernor:
    """Keeps torch's intra-op threads at :func:`choose_threads` of the latest :class:`CpuMeter` reading."""

    def __init__(self, cpus, max_threads, meter=None, log=None, set_threads=None, interval=CHECK_SECONDS):
        self.cpus, self.max_threads, self.interval = cpus, max_threads, interval
        self.meter = meter or CpuMeter()
        self.log = log or logging.getLogger('basicsr').info
        if set_threads is None:
            import torch
            set_threads = torch.set_num_threads
        self.set_threads = set_threads
        self.threads = max_threads
        self.next_check = 0.0

    def check(self, now=None):
        """Re-choose the thread count when :attr:`interval` seconds passed since the last choice; returns it."""
        now = time.monotonic() if now is None else now
        if now < self.next_check or self.meter.seconds() < MIN_WINDOW:
            return self.threads
        self.next_check = now + self.interval
        busy = self.meter.busy_others()
        threads = choose_threads(self.cpus, busy, self.max_threads)
        if threads != self.threads:
            self.set_threads(threads)
            if threads < self.max_threads:
                self.log(oversubscribed_line(self.cpus, busy, threads))
            else:
                self.log(f'lwsr_plugin: {self.cpus} CPUs, about {busy:.1f} busy with other processes: training '
                         f'with {threads} intra-op threads again')
            self.threads = threads
        return threads


def governor_for(environ=None):
    """A :class:`ThreadGovernor` for this process, or None when the thread count is fixed (``LWSR_THREADS``,
    ``OMP_NUM_THREADS``) or already 1; a fixed ``LWSR_THREADS`` is set here."""
    import torch

    from lwsr_plugin.options.workers import usable_cpus
    fixed = fixed_threads(environ)
    if fixed is not None:
        if fixed != torch.get_num_threads():
            torch.set_num_threads(fixed)
        return None
    max_threads = torch.get_num_threads()  # torch's default, or what the run set (1 on a GPU run)
    if max_threads <= 1:
        return None
    meter = _METER[0] if _METER and _METER[0].pid == os.getpid() else None  # not one a forked parent took
    return ThreadGovernor(usable_cpus(), max_threads, meter=meter)


def wrap_update_learning_rate(original):
    """``update_learning_rate`` that first lets the model's governor re-check the thread count (training only)."""

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        if getattr(self, 'is_train', False):
            governor = self.__dict__.get('_lwsr_threads', False)
            if governor is False:
                # train.deterministic: a thread count that follows the machine's load would change the reduction
                # order of the kernels, and with it the run's numbers
                deterministic = bool((self.opt.get('train') or {}).get('deterministic', False))
                governor = self._lwsr_threads = None if deterministic else governor_for()
            if governor is not None:
                governor.check()
        return original(self, current_iter, warmup_iter)

    update_learning_rate.__wrapped__ = original
    update_learning_rate._lwsr_threads = True
    return update_learning_rate


_METER = []  # the reading taken at install, so that the first check measures the whole start-up


def install():
    """Run the governor from BasicSR's per-iteration ``update_learning_rate`` (once)."""
    if not _METER:
        _METER.append(CpuMeter())
    from basicsr.models import base_model
    BaseModel = base_model.BaseModel
    if not getattr(BaseModel.update_learning_rate, '_lwsr_threads', False):
        BaseModel.update_learning_rate = wrap_update_learning_rate(BaseModel.update_learning_rate)
