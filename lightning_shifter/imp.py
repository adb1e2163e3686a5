"""Iterative magnitude pruning with rewinding, as a Lightning callback (DNNShifter step 1).

Phases inside one ``Trainer.fit``: round 0 trains the dense model for ``epochs_per_round`` epochs;
each later round prunes the smallest surviving weights (global magnitude), rewinds the survivors,
the optimizer and every LR scheduler to their state at ``rewind_step``, and trains the same
schedule again. The tensor work lives in :mod:`lightning_shifter.masks`; this module only decides
when it happens.

When things happen (checked against Lightning 2.6's loops):

* rewind snapshot: after optimizer step ``rewind_step`` (``on_train_batch_end``, which runs after the
  step-interval scheduler update), or at ``on_train_start`` for ``rewind_step=0``;
* masks: re-applied by an optimizer step post-hook, right after every ``optimizer.step()``;
* round end (record, loggers, ``on_pruning_round_end`` of other callbacks): after the end-of-epoch
  validation of the round's last epoch (``on_validation_end``), or at ``on_train_epoch_end`` when no
  validation ran. ``ModelCheckpoint`` runs after us in both hooks, so its checkpoint already holds
  the record;
* prune + rewind: ``on_train_epoch_start`` of the next round's first epoch, after Lightning stepped
  the epoch-interval schedulers of the previous epoch, so the restored scheduler state is not
  stepped once more.

Learning-rate schedules (``schedule_per_round=True``): from the callback's ``setup`` until
``on_fit_start``, i.e. while the module's ``setup`` and ``configure_optimizers`` run,
``trainer.max_epochs`` is ``epochs_per_round``, so schedules sized from it or from
``trainer.estimated_stepping_batches`` span one round. A round after a rewind starts at the rewind
step of that schedule, so it reaches the point where round 0 ended before the round is over: from
there until the next rewind Lightning does not step the scheduler (its ``frequency`` is set out of
reach), and the round trains on at round 0's last learning rate instead of running past the
schedule's end (``OneCycleLR`` would raise). Every round thus follows round 0's learning-rate curve
from the rewind step on.

Everything needed to resume is in :meth:`IterativeMagnitudePruning.state_dict` (tensors, lists,
dicts, numbers and strings only, so checkpoints load with ``weights_only=True``), and each of the
steps above is decided from that state, so a resume from any checkpoint (mid-round, at a round
boundary before the prune, or after it) continues exactly like an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_shifter import masks as M
from lightning_shifter._lightning import Callback, MisconfigurationException, classes, package_of, timer_duration
from lightning_shifter.batches import batch_inputs, example_input
from lightning_shifter.criteria import Criterion, describe, magnitude
from lightning_shifter.portfolio import atomic_write

__all__ = ["IterativeMagnitudePruning", "RoundRecord", "prune_fraction_for"]


@dataclass
class RoundRecord:
    """What one round produced; passed to ``on_pruning_round_end`` listeners.

    ``density`` is nonzero / total prunable weights of the trained sparse model, ``epoch`` the last
    epoch of the round, ``metrics`` ``trainer.callback_metrics`` at round end (as floats) and
    ``seconds`` the wall time of the round.
    """

    round: int
    density: float
    target_density: float
    epoch: int
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def _cpu_copy(obj: Any) -> Any:
    """Deep copy of a (nested) state dict with every tensor detached and cloned to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {key: _cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(value) for value in obj)
    return copy.deepcopy(obj)


def prune_fraction_for(final_density: float, rounds: int) -> float:
    """The fraction of the remaining weights to prune per round to reach ``final_density`` after
    ``rounds`` rounds: ``1 - final_density ** (1 / rounds)``.

    Example::

        >>> round(prune_fraction_for(0.005, 15), 4)  # 15 rounds of 29.8% each end at density 0.5%
        0.2976
    """
    if not isinstance(final_density, (int, float)) or not 0.0 < final_density < 1.0:
        raise MisconfigurationException(
            f"final_density must lie in (0, 1) (0.005 keeps 0.5% of the prunable weights), got {final_density!r}"
        )
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise MisconfigurationException(f"rounds must be a positive integer, got {rounds!r}")
    return 1.0 - final_density ** (1.0 / rounds)


class IterativeMagnitudePruning(Callback):
    r"""Train, prune the smallest weights globally, rewind, repeat: all inside one ``Trainer.fit``.

    Args:
        rounds: number of pruning rounds ``R``. The fit runs round 0 (dense) to round ``R``, i.e.
            ``(R + 1) * epochs_per_round`` epochs, and ends at density ``(1 - prune_fraction) ** R``.
        epochs_per_round: epochs of training in every round.
        prune_fraction: fraction of the remaining weights removed by each round, in (0, 1);
            0.2 (DNNShifter's) when neither it nor ``final_density`` is given.
        final_density: instead of ``prune_fraction``, the density to reach after ``rounds`` rounds;
            each round then prunes ``1 - final_density ** (1 / rounds)``
            (:func:`prune_fraction_for`).
        target_densities: instead of ``rounds``/``prune_fraction``, the density after each pruning
            round: strictly decreasing values in (0, 1), e.g. ``[0.8, 0.64, 0.5]``.
        rewind_step: optimizer step whose weights, optimizer and LR-scheduler state every round
            restarts from. ``0`` is the original initialization (lottery-ticket setting); a few
            hundred steps ("late rewinding") works better for deeper nets. Must fall inside round 0.
        schedule_per_round: size learning-rate schedules per round without changing the module: while
            its ``configure_optimizers`` runs, ``trainer.max_epochs`` is ``epochs_per_round`` (and
            ``trainer.estimated_stepping_batches`` one round's optimizer steps), schedulers are not
            stepped past the point where round 0 ended, and a scheduler whose length still exceeds a
            round is warned about at the start of training. ``False`` shows the module the whole fit
            and steps schedulers as Lightning would without this callback.
        include: module types or ``fnmatch`` patterns over module names whose ``weight`` is scored;
            by default every ``Conv*d`` and ``Linear``. Biases and norm layers are never scored.
        exclude: module types or name patterns removed from the selection, e.g. ``["fc"]`` to keep
            the classifier dense.
        mask_norm_affine: also zero (and keep zero) the weight and bias of the per-channel norm
            layer (BatchNorm / InstanceNorm) that directly reads a filter or neuron once it is
            entirely pruned, so that channel outputs exact zeros and compaction can remove it.
        summary_file: JSON file of the per-round records, rewritten after every round by rank 0;
            a relative path is resolved against the logger's folder (``trainer.log_dir``), without a
            logger against ``Trainer(default_root_dir=...)``; with neither, a relative path writes
            nothing (Lightning's fallback is the current folder). ``None`` writes nothing.
        verbose: print a table of the rounds at the end of fit (rank 0).
        criterion: how weights are scored before the globally highest ``density`` of them are kept
            (:mod:`lightning_shifter.criteria`). :func:`~lightning_shifter.criteria.magnitude`
            (``|w|``, DNNShifter's) by default;
            :class:`~lightning_shifter.criteria.ChannelAwareMagnitude` also weighs each filter's and
            input channel's strength, so whole filters die sooner and compaction pays in fewer rounds.

    **Which schedule pays.** Compaction removes a filter, channel or neuron only once *all* its
    weights are pruned. Under plain magnitude pruning that happens late: on the benchmark's real
    runs (``bench/real_runs.py``, README "Real IMP runs": a VGG-style net and ResNet-18, 15 rounds of
    30%) variants stay full-size down to 3-4% density and reach 4.6-6.2x smaller only at 0.5%. Aim
    ``final_density`` at 0.5% or below for over-parameterized nets (DNNShifter: 25 rounds of 20%) and
    let ``Compaction`` keep the rounds worth keeping. With
    ``criterion=ChannelAwareMagnitude(alpha=3.0)`` whole filters start to go from 10-20% density:
    the same runs passed 5.14x at 6% density (round 8 of 15) on both nets within a point of the best
    accuracy, and ended 33x (VGG) and 135x (ResNet-18, whose residual filters the criterion empties
    together) smaller at 0.5%, where plain magnitude ended 4.6-6.2x.

    A criterion with a ``for_model(model, example_inputs)`` method (``ChannelAwareMagnitude`` has
    one) is bound to the module once per fit, before the first prune, with an input of the first
    training batch's shape (batch size 1); a module it cannot trace keeps the unbound criterion and
    a warning says why.

    Other callbacks that define ``on_pruning_round_end(trainer, pl_module, record)`` are called at
    the end of every round (round 0 and the last one included) with the trained sparse model in
    ``pl_module``, before the next prune and rewind. The last round sets ``trainer.should_stop``,
    so a larger ``max_epochs`` is fine.

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning_shifter import IterativeMagnitudePruning
        >>> from lightning_shifter.demo import DigitsDataModule, DigitsResNet
        >>> imp = IterativeMagnitudePruning(rounds=2, epochs_per_round=1, rewind_step=5, verbose=False,
        ...                                 summary_file=None)
        >>> trainer = pl.Trainer(max_epochs=imp.epochs_needed, callbacks=[imp], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False, limit_train_batches=8, limit_val_batches=2)
        >>> trainer.fit(DigitsResNet(width=4, schedule_epochs=1), datamodule=DigitsDataModule())
        >>> [round(r.target_density, 2) for r in imp.records]
        [1.0, 0.8, 0.64]
    """

    def __init__(
        self,
        rounds: int | None = None,
        *,
        epochs_per_round: int,
        prune_fraction: float | None = None,
        final_density: float | None = None,
        target_densities: Sequence[float] | None = None,
        rewind_step: int = 200,
        criterion: Criterion = magnitude,
        schedule_per_round: bool = True,
        include: Sequence[type[nn.Module] | str] = M.DEFAULT_PRUNABLE_TYPES,
        exclude: Sequence[type[nn.Module] | str] = (),
        mask_norm_affine: bool = True,
        summary_file: str | os.PathLike | None = "imp_rounds.json",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(epochs_per_round, int) or isinstance(epochs_per_round, bool) or epochs_per_round < 1:
            raise MisconfigurationException(f"epochs_per_round must be a positive integer, got {epochs_per_round!r}")
        if not isinstance(rewind_step, int) or isinstance(rewind_step, bool) or rewind_step < 0:
            raise MisconfigurationException(
                f"rewind_step must be a non-negative integer (0 = original initialization), got {rewind_step!r}"
            )
        if not callable(criterion):
            raise MisconfigurationException(
                f"criterion must be a callable (weights, layers) -> scores such as "
                f"lightning_shifter.criteria.magnitude or ChannelAwareMagnitude(alpha=1.0), got {criterion!r}"
            )
        self._densities = self._schedule(rounds, prune_fraction, final_density, target_densities)
        self.criterion = criterion
        self.epochs_per_round = epochs_per_round
        self.rewind_step = rewind_step
        self.schedule_per_round = schedule_per_round
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.mask_norm_affine = mask_norm_affine
        self.summary_file = summary_file
        self.verbose = verbose

        self.records: list[RoundRecord] = []
        self._round = 0
        self._masks: dict[str, Tensor] = {}
        self._norm_masks: dict[str, Tensor] = {}
        self._norm_pairs: list[list[str]] | None = None
        self._input_spec: tuple[list[int], str] | None = None  # one training input's shape and dtype
        self._scorer: Criterion | None = None  # the criterion bound to this fit's model (for_model)
        self._rewind: dict[str, Any] | None = None
        self._round_started = time.monotonic()
        self._resumed = False
        self._schedule_end: list[int | None] | None = None  # scheduler positions of round 0's last step
        self._summary_path: str | None = None  # the summary file this schedule writes, kept across resumes
        # runtime-only: live parameters and their float masks for the hot path, hook handles
        self._weights: dict[str, nn.Parameter] = {}
        self._enforced: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._hooks: list[Any] = []
        self._recorder: ExitStack | None = None
        self._norm_sources: dict[str, set[str] | None] | None = None
        self._full_max_epochs: int | None = None  # the Trainer's, while the module is shown one round
        self._positions: list[int | None] = []
        self._held: dict[int, int] = {}  # lr_scheduler_configs index -> its own frequency
        self._stop_seen: str | None = None  # where trainer.should_stop was first seen set by another

    @staticmethod
    def _schedule(rounds: int | None, prune_fraction: float | None, final_density: float | None,
                  target_densities: Sequence[float] | None) -> list[float]:
        if target_densities is not None:
            if rounds is not None or prune_fraction is not None or final_density is not None:
                raise MisconfigurationException(
                    "pass either target_densities or rounds (with prune_fraction or final_density), not both"
                )
            densities = [float(d) for d in target_densities]
            if not densities:
                raise MisconfigurationException("target_densities is empty: give at least one density in (0, 1)")
            if any(not 0.0 < d < 1.0 for d in densities):
                raise MisconfigurationException(f"target_densities must all lie in (0, 1), got {densities}")
            if any(b >= a for a, b in zip(densities, densities[1:])):
                raise MisconfigurationException(f"target_densities must be strictly decreasing, got {densities}")
            return densities
        if rounds is None:
            raise MisconfigurationException(
                "give the schedule: rounds=R (prunes prune_fraction of the remaining weights R times, or "
                "reaches final_density in R rounds) or target_densities=[0.8, 0.64, ...]"
            )
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise MisconfigurationException(f"rounds must be a positive integer, got {rounds!r}")
        if final_density is not None:
            if prune_fraction is not None:
                raise MisconfigurationException(
                    "pass prune_fraction or final_density, not both: final_density=d prunes "
                    "1 - d ** (1 / rounds) of the remaining weights each round"
                )
            prune_fraction = prune_fraction_for(final_density, rounds)
        elif prune_fraction is None:
            prune_fraction = 0.2
        if not isinstance(prune_fraction, (int, float)) or not 0.0 < prune_fraction < 1.0:
            raise MisconfigurationException(
                f"prune_fraction must lie in (0, 1) (0.2 removes 20% of the remaining weights), got {prune_fraction!r}"
            )
        return [(1.0 - prune_fraction) ** r for r in range(1, rounds + 1)]

    # ------------------------------------------------------------------ public state
    @property
    def num_rounds(self) -> int:
        """Number of pruning rounds ``R`` (round 0, the dense one, comes in addition)."""
        return len(self._densities)

    @property
    def target_densities(self) -> list[float]:
        """Scheduled density of each round, round 0 (1.0) to round ``R``."""
        return [1.0, *self._densities]

    @property
    def epochs_needed(self) -> int:
        """Epochs the whole schedule takes: ``(R + 1) * epochs_per_round``."""
        return (self.num_rounds + 1) * self.epochs_per_round

    @property
    def current_round(self) -> int:
        """The round being trained (0 = dense)."""
        return self._round

    @property
    def masks(self) -> dict[str, Tensor]:
        """Boolean keep-masks of the prunable weights, by parameter name (empty during round 0)."""
        return dict(self._masks)

    @property
    def norm_masks(self) -> dict[str, Tensor]:
        """Boolean keep-masks of norm affine parameters whose input channel is entirely pruned."""
        return dict(self._norm_masks)

    @property
    def norm_pairs(self) -> list[list[str]] | None:
        """``[layer, norm]`` pairs found in the first training batch (None before it)."""
        return None if self._norm_pairs is None else [list(p) for p in self._norm_pairs]

    # ------------------------------------------------------------------ setup-time checks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        for callback in trainer.callbacks:  # of lightning.pytorch or of pytorch_lightning
            if isinstance(callback, classes("callbacks.EarlyStopping")):
                raise MisconfigurationException(
                    f"{type(callback).__name__} would end the fit before the last pruning round: remove it "
                    "(IterativeMagnitudePruning stops the fit itself after round "
                    f"{self.num_rounds}; pick the variant you want from the per-round records instead)"
                )
            if isinstance(callback, classes("callbacks.Timer")) and timer_duration(callback) is not None:
                raise MisconfigurationException(
                    "a Timer with a duration (Trainer(max_time=...)) could cut the pruning rounds short: "
                    "remove max_time / the Timer, or lower rounds or epochs_per_round to fit your time budget"
                )
        needed = self.epochs_needed
        schedule = f"{self.num_rounds} pruning rounds + the dense round 0, {self.epochs_per_round} epoch(s) each"
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs != -1 and max_epochs < needed:
            raise MisconfigurationException(
                f"Trainer(max_epochs={max_epochs}) is too small for the pruning schedule ({schedule}): "
                f"set max_epochs >= {needed} (IterativeMagnitudePruning stops the fit after the last round)"
            )
        min_epochs = trainer.fit_loop.min_epochs
        if min_epochs is not None and min_epochs > needed:
            raise MisconfigurationException(
                f"Trainer(min_epochs={min_epochs}) would train past the last pruning round ({schedule}, "
                f"{needed} epochs): set min_epochs <= {needed} or add rounds"
            )
        try:
            self._weights = M.prunable_weights(pl_module, self.include, self.exclude)
        except (ValueError, TypeError) as err:
            raise MisconfigurationException(str(err)) from None
        if not self._weights:
            raise MisconfigurationException(
                f"no prunable parameters in {type(pl_module).__name__}: include={self._describe(self.include)} "
                f"exclude={self._describe(self.exclude)} selects no module with a weight of 2+ dimensions; "
                "widen include (module types or name patterns) or narrow exclude"
            )
        self._summary_path = None  # a resumed schedule brings its own (load_state_dict runs after setup)
        self._stop_seen = None
        if self.schedule_per_round:
            # Shown until on_fit_start: the module's setup and configure_optimizers run in between.
            # trainer.estimated_stepping_batches is computed from it, so it shows one round too.
            self._full_max_epochs = trainer.fit_loop.max_epochs
            trainer.fit_loop.max_epochs = self.epochs_per_round

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._show_whole_fit(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._show_whole_fit(trainer)
        self._release_schedulers(trainer)
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero and self._unfinished():
            rank_zero_warn(self._unfinished_message("it was interrupted (KeyboardInterrupt)", "resume it"))

    def _show_whole_fit(self, trainer: pl.Trainer) -> None:
        if self._full_max_epochs is not None:
            trainer.fit_loop.max_epochs = self._full_max_epochs
            self._full_max_epochs = None

    @staticmethod
    def _describe(selectors: Sequence[Any]) -> list[str]:
        return [s if isinstance(s, str) else s.__name__ for s in selectors]

    def _steps_per_epoch(self, trainer: pl.Trainer) -> float:
        batches = trainer.num_training_batches
        return math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else math.inf

    # ------------------------------------------------------------------ training hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        round0_steps = self.epochs_per_round * self._steps_per_epoch(trainer)
        if self._rewind is None and self.rewind_step > round0_steps:
            raise MisconfigurationException(
                f"rewind_step={self.rewind_step} lies beyond round 0, which has {round0_steps} optimizer steps "
                f"({self.epochs_per_round} epoch(s) x {self._steps_per_epoch(trainer)} steps): set "
                f"rewind_step <= {round0_steps}, or raise epochs_per_round"
            )
        total_steps = self.epochs_needed * self._steps_per_epoch(trainer)
        if trainer.max_steps != -1 and trainer.max_steps < total_steps:
            raise MisconfigurationException(
                f"Trainer(max_steps={trainer.max_steps}) is too small for the pruning schedule: it needs "
                f"{total_steps} optimizer steps; set max_steps >= {total_steps} or -1"
            )
        min_steps = trainer.fit_loop.min_steps
        if min_steps is not None and min_steps > total_steps:
            raise MisconfigurationException(
                f"Trainer(min_steps={min_steps}) would train past the last pruning round ({total_steps} "
                f"steps): set min_steps <= {total_steps}"
            )
        self._weights = M.prunable_weights(pl_module, self.include, self.exclude)
        if self._masks and set(self._masks) != set(self._weights):
            raise MisconfigurationException(
                "the checkpoint's pruning masks do not match the model's prunable weights "
                f"(checkpoint: {len(self._masks)}, model: {len(self._weights)}): resume with the same model "
                "and the same include/exclude"
            )
        self._refresh_enforced(pl_module)
        M.apply_masks_(*self._enforced)
        for optimizer in trainer.optimizers:
            self._hooks.append(optimizer.register_step_post_hook(self._after_optimizer_step))
        if self._rewind is None and self.rewind_step == 0 and trainer.global_step == 0:
            self._rewind = self._snapshot(trainer, pl_module)
        if not self._resumed:
            self._round_started = time.monotonic()
        if self.schedule_per_round:
            if trainer.is_global_zero:
                for warning in self._long_schedules(trainer):
                    rank_zero_warn(warning)
            self._hold_finished_schedulers(trainer)
        if len(self.records) == self.num_rounds + 1:  # resumed from a checkpoint of a finished schedule
            trainer.should_stop = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == 0:
            pl_module.log("round", self._round, prog_bar=True, logger=False, on_step=True, on_epoch=False,
                          batch_size=1)
        if self.schedule_per_round and self._schedule_end is None:  # round 0: where its last step stands
            self._positions = _scheduler_positions(trainer)
        # what a criterion with for_model is bound with: looked for once an epoch until found, not every step
        if batch_idx == 0 and self._input_spec is None and callable(getattr(self.criterion, "for_model", None)):
            self._input_spec = _input_spec_of(pl_module, batch)
        if self._norm_pairs is None and self.mask_norm_affine and self._recorder is None:
            self._recorder = ExitStack()
            self._norm_sources = self._recorder.enter_context(M.record_norm_successors(pl_module, self._layer_names()))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self._norm_pairs = M.norm_pairs(self._norm_sources or {})
            self._recorder = self._norm_sources = None
        if self._rewind is None and trainer.global_step == self.rewind_step:
            self._rewind = self._snapshot(trainer, pl_module)
        if self.schedule_per_round:
            self._hold_finished_schedulers(trainer)  # after Lightning's step-interval scheduler update
        self._note_stop(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress
        end_of_epoch = progress.is_last_batch or progress.current.ready >= trainer.num_training_batches
        if end_of_epoch:
            self._maybe_end_round(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note_stop(trainer)
        self._maybe_end_round(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scheduled = trainer.current_epoch // self.epochs_per_round
        if scheduled > self._round and self._round < self.num_rounds:
            self._prune_and_rewind(trainer, pl_module, self._round + 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self._release_schedulers(trainer)
        if not trainer.is_global_zero:
            return
        if self.verbose and self.records:
            from rich.console import Console

            Console().print(self.summary_table())
        if self._unfinished():
            rank_zero_warn(self._unfinished_message(self._stop_cause(trainer, pl_module)))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._show_whole_fit(trainer)
        self._release_schedulers(trainer)
        self._remove_hooks()
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = self._norm_sources = None

    # ------------------------------------------------------------------ the work
    def _layer_names(self) -> list[str]:
        return [name.rpartition(".")[0] for name in self._weights]

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        M.apply_masks_(*self._enforced)

    def _refresh_enforced(self, pl_module: pl.LightningModule) -> None:
        """Move the masks next to their parameters and pre-convert them for the hot path."""
        params = dict(pl_module.named_parameters())
        tensors, floats = [], []
        for masks in (self._masks, self._norm_masks):
            for name, mask in masks.items():
                param = params.get(name)
                if param is None:
                    raise MisconfigurationException(
                        f"pruning mask for {name!r} has no matching parameter in {type(pl_module).__name__}: "
                        "resume with the model the checkpoint was written from"
                    )
                masks[name] = mask.to(param.device)
                tensors.append(param)
                floats.append(masks[name].to(param.dtype))
        self._enforced = (tensors, floats)

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {
            "global_step": trainer.global_step,
            "model": _cpu_copy(pl_module.state_dict()),
            "optimizers": [_cpu_copy(opt.state_dict()) for opt in trainer.optimizers],
            "lr_schedulers": [_cpu_copy(cfg.scheduler.state_dict()) for cfg in trainer.lr_scheduler_configs],
        }

    def _maybe_end_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last_epoch = (self._round + 1) * self.epochs_per_round - 1
        if trainer.current_epoch != last_epoch or len(self.records) > self._round:
            return
        if self._rewind is None:
            raise MisconfigurationException(
                f"round 0 ended at step {trainer.global_step} before rewind_step={self.rewind_step} was reached: "
                f"set rewind_step <= {trainer.global_step}"
            )
        record = RoundRecord(
            round=self._round,
            density=M.density(self._weights.values()),
            target_density=self.target_densities[self._round],
            epoch=trainer.current_epoch,
            global_step=trainer.global_step,
            metrics={k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1},
            seconds=time.monotonic() - self._round_started,
        )
        self.records.append(record)
        if self._round == 0 and self.schedule_per_round:
            self._schedule_end = self._positions
        for logger in trainer.loggers:
            logger.log_metrics(
                {"imp/round": record.round, "imp/density": record.density,
                 "imp/target_density": record.target_density, "imp/seconds": record.seconds},
                step=trainer.global_step,
            )
        # trainer.log_dir is a collective call: every rank asks, rank 0 writes
        log_dir = trainer.log_dir if self.summary_file is not None and trainer.loggers else None
        if trainer.is_global_zero:
            self._write_summary(trainer, log_dir)
        for callback in trainer.callbacks:
            listener = getattr(callback, "on_pruning_round_end", None)
            if callback is not self and callable(listener):
                listener(trainer, pl_module, record)
        if self._round == self.num_rounds:
            trainer.should_stop = True

    def _bind_criterion(self, pl_module: pl.LightningModule) -> Criterion:
        """The criterion bound to the model's structure by its ``for_model`` (the criterion itself
        when it has none); a model that cannot be traced keeps the unbound criterion, with a warning.

        Bound with a deterministic input of the recorded training input's shape, not a real batch: the
        structure does not depend on values, and a resumed run binds again before its first batch.
        """
        bind = getattr(self.criterion, "for_model", None)
        if not callable(bind):
            return self.criterion
        why = "no training batch with an input tensor was seen (batch[0] or example_input_array)"
        if self._input_spec is not None:
            shape, dtype = self._input_spec
            example = example_input(shape, dtype).to(pl_module.device)
            try:
                return bind(pl_module, (example,))
            except Exception as exc:  # a model the analysis cannot read still trains, unbound
                why = f"{type(exc).__name__}: {exc}"
        rank_zero_warn(
            f"the pruning criterion {describe(self.criterion)} scores each layer on its own in this fit: it could "
            f"not read the model's structure ({why}). Channels that several layers write (residual additions) "
            "then empty later. Compaction needs the same trace: make forward() traceable by torch.fx with the "
            "batch's input tensor, or pass coupled=False to score per layer without this warning."
        )
        return self.criterion

    def _prune_and_rewind(self, trainer: pl.Trainer, pl_module: pl.LightningModule, new_round: int) -> None:
        if len(self.records) != new_round:
            raise MisconfigurationException(
                f"cannot start pruning round {new_round}: round {new_round - 1} has no record (the checkpoint and "
                "this schedule disagree); resume with the IterativeMagnitudePruning settings of the original run"
            )
        total = sum(w.numel() for w in self._weights.values())
        keep = M.keep_count(total, self.target_densities[new_round])
        modules = dict(pl_module.named_modules())
        layers = {name: modules[name.rpartition(".")[0]] for name in self._weights}
        if self._scorer is None:
            self._scorer = self._bind_criterion(pl_module)
        masks = M.global_score_masks(self._scorer(self._weights, layers), keep, self._masks or None)
        # every rank computed masks from identical weights; broadcasting rank 0's makes them identical
        # by construction, whatever the floating-point noise
        masks_cpu, pairs = trainer.strategy.broadcast(
            ({n: m.cpu() for n, m in masks.items()}, self._norm_pairs), src=0
        )
        self._norm_pairs = pairs
        self._masks = {n: masks_cpu[n].to(self._weights[n].device) for n in self._weights}
        self._norm_masks = (
            M.norm_affine_masks(pl_module, self._norm_pairs, self._masks)
            if self.mask_norm_affine and self._norm_pairs is not None
            else {}
        )
        self._rewind_to_snapshot(trainer, pl_module)
        self._release_schedulers(trainer)
        self._refresh_enforced(pl_module)
        M.apply_masks_(*self._enforced)
        self._round = new_round
        self._round_started = time.monotonic()

    def _rewind_to_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._rewind is not None
        # copies: optimizers and schedulers keep (and update in place) the tensors they are given
        pl_module.load_state_dict(self._rewind["model"])
        for optimizer, state in zip(trainer.optimizers, self._rewind["optimizers"]):
            optimizer.load_state_dict(copy.deepcopy(state))
        for config, state in zip(trainer.lr_scheduler_configs, self._rewind["lr_schedulers"]):
            config.scheduler.load_state_dict(copy.deepcopy(state))

    # ------------------------------------------------------------------ learning-rate schedules
    def _long_schedules(self, trainer: pl.Trainer) -> list[str]:
        """A warning for each scheduler whose length exceeds one round: rewound every round, it never ends."""
        steps = self.epochs_per_round * self._steps_per_epoch(trainer)
        warnings = []
        for index, config in enumerate(trainer.lr_scheduler_configs):
            length = scheduler_length(config.scheduler)
            per_round = (self.epochs_per_round if config.interval == "epoch" else steps) / config.frequency
            if length is None or not math.isfinite(per_round) or length <= per_round:
                continue
            every = f"{'' if config.frequency == 1 else f'{config.frequency} '}{config.interval}"
            warnings.append(
                f"{type(config.scheduler).__name__} (learning-rate scheduler {index}, stepped every {every}) is "
                f"{length} steps long, but a pruning round steps it {_times(per_round)}: every round rewinds it "
                "before its later part runs. In configure_optimizers, size it from self.trainer.max_epochs or "
                "self.trainer.estimated_stepping_batches (they show one round there) instead of a fixed length, "
                f"or from the round ({_count(self.epochs_per_round, 'epoch')}, {_count(steps, 'optimizer step')})"
            )
        return warnings

    def _hold_finished_schedulers(self, trainer: pl.Trainer) -> None:
        """From round 1 on, stop stepping a scheduler once it stands where round 0's last step used it."""
        if self._round == 0 or not self._schedule_end:
            return
        positions = _scheduler_positions(trainer)
        configs = trainer.lr_scheduler_configs
        for index, (end, now) in enumerate(zip(self._schedule_end, positions)):
            if index not in self._held and end is not None and now is not None and now >= end:
                # Lightning steps a scheduler when (batch or epoch index + 1) % frequency == 0: never, now
                self._held[index] = configs[index].frequency
                configs[index].frequency = sys.maxsize

    def _release_schedulers(self, trainer: pl.Trainer) -> None:
        configs = trainer.lr_scheduler_configs
        for index, frequency in self._held.items():
            if index < len(configs):
                configs[index].frequency = frequency
        self._held = {}

    # ------------------------------------------------------------------ a fit that ends early
    def _unfinished(self) -> bool:
        return len(self.records) < self.num_rounds + 1

    def _unfinished_message(self, cause: str, remedy: str = "remove what stopped the fit and resume it") -> str:
        return (
            f"IterativeMagnitudePruning: the fit ended after {len(self.records)} of {self.num_rounds + 1} scheduled "
            f"rounds because {cause}. The completed rounds are recorded (and saved, with Compaction); to train the "
            f"others, {remedy} with trainer.fit(..., ckpt_path=<last checkpoint>)"
        )

    def _note_stop(self, trainer: pl.Trainer) -> None:
        # our own stop comes with the last round's record, after which the fit is finished anyway
        if trainer.should_stop and self._stop_seen is None and self._unfinished():
            self._stop_seen = f"epoch {trainer.current_epoch}, step {trainer.global_step}"

    def _stop_cause(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """What ended the fit before the schedule did, as precisely as the Trainer tells."""
        for callback in trainer.callbacks:
            if getattr(callback, "stopped_epoch", 0):  # EarlyStopping and look-alikes record it
                return f"{type(callback).__name__} stopped it at epoch {callback.stopped_epoch}"
            remaining = callback.time_remaining() if isinstance(callback, classes("callbacks.Timer")) else None
            if remaining is not None and remaining <= 0:
                return f"{type(callback).__name__} (Trainer(max_time=...)) ran out of time"
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            return f"Trainer(max_steps={trainer.max_steps}) was reached at step {trainer.global_step}"
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs != -1 and trainer.current_epoch >= max_epochs:
            return f"Trainer(max_epochs={max_epochs}) was reached"
        if self._stop_seen is not None or trainer.should_stop:
            others = [type(c).__name__ for c in trainer.callbacks
                      if package_of(c) not in ("lightning", "pytorch_lightning", "lightning_shifter")]
            by = f"{type(pl_module).__name__} (the LightningModule)" + "".join(f" or {n}" for n in others)
            seen = f", first seen at {self._stop_seen}" if self._stop_seen else ""
            return f"trainer.should_stop was set by {by}{seen}"
        return "the training loop ended without trainer.should_stop (a limit of the Trainer or its loop)"

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _write_summary(self, trainer: pl.Trainer, log_dir: str | None) -> None:
        if self.summary_file is None:
            return
        path = Path(self.summary_file)
        began = None if self._summary_path is None else Path(self._summary_path)
        if began is not None and began.match(str(path)) and began.parent.is_dir():
            path = began  # a resumed fit logs to a new version folder: go on with the file the schedule began
        elif not path.is_absolute():
            folder = Path(log_dir or trainer.default_root_dir)
            if log_dir is None and folder.resolve() == Path.cwd().resolve():
                return  # no logger and no default_root_dir: Lightning's fallback, the current folder, is nobody's
            path = folder / path
        self._summary_path = os.path.abspath(path)
        payload = {"target_densities": self.target_densities, "epochs_per_round": self.epochs_per_round,
                   "rewind_step": self.rewind_step, "rounds": [r.to_dict() for r in self.records]}
        atomic_write(path, json.dumps(payload, indent=2).encode())

    # ------------------------------------------------------------------ reporting
    def summary_table(self) -> Any:
        """A ``rich`` table of the rounds so far: density, metrics, steps and time."""
        from rich.table import Table

        metric_names = sorted({k for r in self.records for k in r.metrics if k.startswith("val")})
        table = Table(title="Iterative magnitude pruning")
        for column in ("round", "target density", "density", "epoch", "step", *metric_names, "seconds"):
            table.add_column(column, justify="right")
        for r in self.records:
            values = [f"{r.metrics[k]:.4f}" if k in r.metrics else "-" for k in metric_names]
            table.add_row(str(r.round), f"{r.target_density:.4f}", f"{r.density:.4f}", str(r.epoch),
                          str(r.global_step), *values, f"{r.seconds:.1f}")
        return table

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "target_densities": list(self._densities),
            "epochs_per_round": self.epochs_per_round,
            "rewind_step": self.rewind_step,
            "criterion": describe(self.criterion),
            "current_round": self._round,
            "masks": {n: m.cpu() for n, m in self._masks.items()},
            "norm_masks": {n: m.cpu() for n, m in self._norm_masks.items()},
            "norm_pairs": self.norm_pairs,
            "input_spec": self._input_spec,
            "records": [r.to_dict() for r in self.records],
            "rewind": self._rewind,
            "round_seconds": time.monotonic() - self._round_started,
            "schedule_end": self._schedule_end,
            "summary_path": self._summary_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = (state_dict["target_densities"], state_dict["epochs_per_round"], state_dict["rewind_step"])
        current = (self._densities, self.epochs_per_round, self.rewind_step)
        if saved != current:
            raise MisconfigurationException(
                "the checkpoint was written with a different pruning schedule: (target_densities, "
                f"epochs_per_round, rewind_step) = {saved}, this callback has {current}; resume with the "
                "original settings"
            )
        saved_criterion = state_dict.get("criterion", "magnitude")
        if saved_criterion != describe(self.criterion):
            raise MisconfigurationException(
                f"the checkpoint was written with the pruning criterion {saved_criterion}, this callback has "
                f"{describe(self.criterion)}; resume with the original criterion"
            )
        self._round = int(state_dict["current_round"])
        self._masks = dict(state_dict["masks"])
        self._norm_masks = dict(state_dict["norm_masks"])
        self._norm_pairs = state_dict["norm_pairs"]
        self.records = [RoundRecord.from_dict(r) for r in state_dict["records"]]
        self._rewind = state_dict["rewind"]
        self._round_started = time.monotonic() - float(state_dict["round_seconds"])
        self._resumed = True
        # absent from checkpoints of earlier versions
        self._schedule_end = state_dict.get("schedule_end")
        self._summary_path = state_dict.get("summary_path")
        self._input_spec = state_dict.get("input_spec")


def _input_spec_of(pl_module: pl.LightningModule, batch: Any) -> tuple[list[int], str] | None:
    """Shape (batch size 1) and dtype name of one input of ``batch`` (else of the module's
    ``example_input_array``), or None when neither is a tensor."""
    try:
        x = batch_inputs(batch)
    except ValueError:
        x = getattr(pl_module, "example_input_array", None)
    if not isinstance(x, Tensor) or x.dim() == 0:
        return None
    return [1, *x.shape[1:]], str(x.dtype).removeprefix("torch.")


def scheduler_length(scheduler: Any) -> int | None:
    """Steps after which a learning-rate schedule has run its course; ``None`` when it has no end
    (``StepLR``, ``ExponentialLR``, ``LambdaLR``, cyclic schedules, ...).

    Example::

        >>> import torch
        >>> from lightning_shifter.imp import scheduler_length
        >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> scheduler_length(torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=300))
        300
        >>> scheduler_length(torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)) is None
        True
    """
    from torch.optim import lr_scheduler as S

    if isinstance(scheduler, S.OneCycleLR):
        return int(scheduler.total_steps)
    if isinstance(scheduler, S.CosineAnnealingLR):
        return int(scheduler.T_max)
    if isinstance(scheduler, (S.LinearLR, S.ConstantLR, S.PolynomialLR)):
        return int(scheduler.total_iters)
    if isinstance(scheduler, S.MultiStepLR):
        return max(scheduler.milestones, default=None)
    if isinstance(scheduler, S.SequentialLR):
        last = scheduler_length(scheduler._schedulers[-1])
        return None if last is None else scheduler._milestones[-1] + last
    if isinstance(scheduler, S.ChainedScheduler):
        lengths = [scheduler_length(s) for s in scheduler._schedulers]
        return None if None in lengths else max(lengths)
    return None


def _count(n: float, noun: str) -> str:
    return f"{n:g} {noun}{'' if n == 1 else 's'}"


def _times(n: float) -> str:
    return "once" if n == 1 else f"{n:g} times"


def _scheduler_positions(trainer: pl.Trainer) -> list[int | None]:
    """Steps taken by each scheduler Lightning steps (``last_epoch``); None for plateau and unknown kinds."""
    return [None if config.reduce_on_plateau else getattr(config.scheduler, "last_epoch", None)
            for config in trainer.lr_scheduler_configs]
