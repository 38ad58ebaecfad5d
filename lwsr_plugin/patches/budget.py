"""Time- or iteration-budgeted training of BasicSR's ``train_pipeline``: :class:`TrainingBudget`.

While a budget is active (``with budget:`` around the pipeline), the model that ``basicsr.train.build_model`` builds
and the validation loaders that ``create_train_val_dataloader`` makes are handed to it, and the model's
``update_learning_rate`` (the loop's first call in every iteration: the previous iteration is complete and the
weights are consistent) runs the budget's step:

* the budget: minutes of training time (evaluations excluded), a wall-clock deadline, and/or iterations; when it is
  spent the loop ends with :class:`BudgetSpent`, which the ``with`` block takes, after saving
  ``models/net_g_latest.pth`` as BasicSR does at its end when ``save_latest`` is set. A loop that reaches the
  option file's ``total_iter`` first ends as BasicSR ends it;
* the learning rate: BasicSR's own scheduler (``none``/``paper``), or set from the budget's progress
  (:class:`Schedule`: ``cosine`` with warm-up and end value, ``wsd``) after BasicSR's scheduler stepped;
* callbacks: ``evaluate(budget)`` at the given moments of the budget and at its end (the time it takes is not
  training time), ``show(budget)`` every iteration and once more when training ends (``budget.finished``).
* progress: the plugin's progress line and BasicSR's periodic line count the budget (``spent()``, ``eta()``), not
  the option file's ``total_iter`` (:mod:`.pipeline`).

The two BasicSR names are replaced once, on first use; with no budget active the replacements only pass through.
"""
import datetime
import math
import time

from basicsr.utils import get_root_logger

_ACTIVE = []  # the budget of the running pipeline (at most one)


class BudgetSpent(BaseException):
    """Ends BasicSR's training loop from inside it; not an Exception, so that no handler on the way (the entry point
    turns every Exception into a one-line failure) takes it for an error."""


class Schedule:
    """Learning rate as a function of the budget's progress (0..1), from each group's base rate to ``end``:
    ``cosine``: linear warm-up over ``warmup``, then a half cosine; ``wsd``: held until ``1 - decay``, then linear
    (no warm-up: the papers start at full rate)."""

    KINDS = ('cosine', 'wsd')

    def __init__(self, base_lrs, kind='cosine', warmup=0.03, decay=0.2, end=0.0):
        if kind not in self.KINDS:
            raise ValueError(f'schedule {kind!r}: expected one of {", ".join(self.KINDS)}')
        self.base_lrs = list(base_lrs)
        self.kind = kind
        self.warmup = warmup if kind == 'cosine' else 0.0
        self.decay = decay
        self.end = end

    def factor(self, progress):
        progress = min(max(progress, 0.0), 1.0)
        if progress < self.warmup:
            return progress / self.warmup
        if self.kind == 'wsd':
            return min(1.0, (1.0 - progress) / self.decay)
        return 0.5 * (1 + math.cos(math.pi * (progress - self.warmup) / (1 - self.warmup)))

    def apply(self, optimizers, progress):
        f = self.factor(progress)
        lrs = iter(self.base_lrs)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group['lr'] = self.end + (next(lrs) - self.end) * f


class TrainingBudget:
    """The budget of one training run and its hooks (see the module docstring).

    ``minutes``: training time, evaluations excluded; ``deadline``: a ``time.time()`` by which training ends, turned
    into training seconds when the first iteration starts (at least ``min_seconds``, with a warning that ends with
    ``fix``); ``iters``: iterations. Whichever is spent first ends the loop; the progress is the larger fraction.
    ``moments`` for ``evaluate`` count training seconds when the budget has a time, iterations otherwise.
    ``schedule``: ``none``/``paper`` (BasicSR's scheduler), ``cosine`` (``warmup`` share, down to ``end_lr``) or
    ``wsd`` (the last ``decay`` share linear to ``end_lr``).

    What the callbacks read: ``model``, ``val_loaders``, ``done`` (iterations complete), ``train_s``, ``eval_s``,
    ``wall_s``, ``seconds`` (the time budget, once known), ``iters``, ``progress()``, ``rate()``, ``left_s()``,
    ``eta()``, ``spent()``, ``finished`` and ``reason`` ('time' or 'iterations' when the budget ended the loop).
    """

    SCHEDULES = ('none', 'paper') + Schedule.KINDS

    def __init__(self, minutes=None, iters=None, deadline=None, min_seconds=0.0, fix='', schedule='none',
                 warmup=0.03, decay=0.2, end_lr=0.0, moments=(), evaluate=None, show=None, save_latest=False):
        if not (minutes or iters or deadline):
            raise ValueError('a training budget needs minutes, iters or a deadline')
        if schedule not in self.SCHEDULES:
            raise ValueError(f'schedule {schedule!r}: expected one of {", ".join(self.SCHEDULES)}')
        self.seconds = minutes * 60 if minutes else None
        self.iters = iters
        self.deadline, self.min_seconds, self.fix = deadline, min_seconds, fix
        self.schedule_kind = schedule
        self.schedule_args = {'warmup': warmup, 'decay': decay, 'end': end_lr}
        self.schedule = None
        self.moments = sorted(moments)
        self.evaluate, self.show, self.save_latest = evaluate, show, save_latest
        self.model, self.val_loaders = None, []
        self.done, self.train_s, self.eval_s = 0, 0.0, 0.0
        self.finished, self.reason = False, None
        self.start = None  # perf_counter of the first iteration: data loading and model building are not training
        self._last = None  # perf_counter from which the running iteration's time counts
        self._iter = 0
        self._evaluated_at = None

    # ------------------------------------------------------------------------------------------ what callbacks read
    @property
    def wall_s(self):
        return time.perf_counter() - self.start if self.start is not None else 0.0

    def progress(self):
        """Share of the budget spent: of the training time or of the iterations, whichever is nearer its end."""
        fractions = [self.done / self.iters] if self.iters else []
        if self.seconds is not None:
            fractions.append(self.train_s / max(self.seconds, 1e-9))
        return min(max(fractions), 1.0)

    def rate(self):
        return self.done / self.train_s if self.train_s > 0 else 0.0

    def left_s(self):
        """Training seconds left: of the time budget, or at the present rate of the iterations, whichever is less."""
        left = self.seconds - self.train_s if self.seconds is not None else math.inf
        rate = self.rate()
        if self.iters and rate:
            left = min(left, (self.iters - self.done) / rate)
        return max(left, 0.0)

    def eta(self):
        """``left_s()`` as a ``timedelta`` of whole seconds; None while it is unknown (no iteration timed yet)."""
        left = self.left_s()
        return None if math.isinf(left) else datetime.timedelta(seconds=int(left))

    def spent(self):
        """What is spent of the budget and its total, e.g. ``budget 1.2/3.0 min`` or ``budget 155/700 iters`` (both
        parts when the budget has both)."""
        parts = []
        if self.seconds is not None:  # seconds under two minutes: a tenth of a minute would hide the progress
            unit, scale = ('min', 60) if self.seconds >= 120 else ('s', 1)
            parts.append(f'{self.train_s / scale:.1f}/{self.seconds / scale:.1f} {unit}')
        if self.iters:
            parts.append(f'{self.done:,}/{self.iters:,} iters')
        return 'budget ' + ', '.join(parts)

    # ------------------------------------------------------------------------------------------------ the hooks
    def __enter__(self):
        install()
        if _ACTIVE:
            raise RuntimeError('a training budget is already active in this process')
        _ACTIVE.append(self)
        return self

    def __exit__(self, exc_type, exc, tb):
        _ACTIVE.clear()
        if exc_type is None and self.start is not None and not self.finished:
            # BasicSR's loop reached total_iter: the last iteration it started is complete
            self.train_s += time.perf_counter() - self._last
            self.done = self._iter
            self._finish()
        return exc_type is not None and issubclass(exc_type, BudgetSpent)

    def attach(self, model):
        """Runs the budget's step first in every iteration of ``model`` and its schedule after BasicSR's."""
        self.model = model
        update = model.update_learning_rate

        def update_learning_rate(current_iter, warmup_iter=-1):
            self.step(current_iter)
            update(current_iter, warmup_iter)
            if self.schedule is not None:  # BasicSR's scheduler stepped; the budget's schedule wins
                self.schedule.apply(model.optimizers, self.progress())
            if self.show is not None:
                self.show(self)

        update_learning_rate.__wrapped__ = update
        model.update_learning_rate = update_learning_rate

    def step(self, current_iter):
        """Start of iteration ``current_iter``: count its predecessor's time, evaluate when a moment has come, end the
        loop when the budget is spent."""
        now = time.perf_counter()
        if self.start is None:
            self._begin(now)
        else:
            self.train_s += now - self._last
        self._iter, self.done = current_iter, current_iter - 1
        position = self.train_s if self.seconds is not None else self.done
        while self.moments and position >= self.moments[0] - 1e-9 and self.done > 0:
            self.moments.pop(0)
            self._evaluate()
        if self.seconds is not None and self.train_s >= self.seconds:
            self._end('time')
        if self.iters and self.done >= self.iters:
            self._end('iterations')
        if self.schedule is None and self.schedule_kind in Schedule.KINDS:
            self.schedule = Schedule([g['initial_lr'] if 'initial_lr' in g else g['lr']
                                      for o in self.model.optimizers for g in o.param_groups],
                                     self.schedule_kind, **self.schedule_args)
        self._last = time.perf_counter()

    def _begin(self, now):
        self.start = now
        if self.deadline is None:
            return
        left = self.deadline - time.time()
        if left < self.min_seconds:
            get_root_logger().warning(f'The time budget is used up before training starts; training '
                                      f'{self.min_seconds:.0f} s anyway. {self.fix}'.rstrip())
            left = self.min_seconds
        self.seconds = left if self.seconds is None else min(self.seconds, left)

    def _evaluate(self):
        if self.evaluate is None:
            return
        begin = time.perf_counter()
        self.evaluate(self)
        self._evaluated_at = self.done
        self.eval_s += time.perf_counter() - begin
        self._last = time.perf_counter()  # evaluation time is not training time

    def _finish(self):
        self.finished = True
        if self.show is not None:
            self.show(self)

    def _end(self, reason):
        self.reason = reason
        if self._evaluated_at != self.done:
            self._evaluate()
        self._finish()
        if self.save_latest:
            what = 'Time' if reason == 'time' else 'Iteration'
            get_root_logger().info(f'{what} budget used: training stopped after {self.done} iterations. '
                                   'Save the latest model.')
            self.model.save(epoch=-1, current_iter=-1)  # what train_pipeline saves when its loop ends
        raise BudgetSpent(reason)


def active():
    """The budget of the running pipeline, or None."""
    return _ACTIVE[0] if _ACTIVE else None


def install():
    """Hands the model and the validation loaders of BasicSR's training pipeline to the active budget (once)."""
    import basicsr.train as train_mod
    if hasattr(train_mod.build_model, '_lwsr_budget'):
        return
    original_build, original_loaders = train_mod.build_model, train_mod.create_train_val_dataloader

    def build_model(opt):
        model = original_build(opt)
        if _ACTIVE:
            _ACTIVE[0].attach(model)
        return model

    def create_train_val_dataloader(opt, logger):
        result = original_loaders(opt, logger)
        if _ACTIVE:
            _ACTIVE[0].val_loaders = result[2]
        return result

    build_model._lwsr_budget = True
    build_model.__wrapped__ = original_build
    create_train_val_dataloader.__wrapped__ = original_loaders
    train_mod.build_model, train_mod.create_train_val_dataloader = build_model, create_train_val_dataloader
