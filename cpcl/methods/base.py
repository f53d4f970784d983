"""The interface between the generic engine and one training method.

A method is a subclass of `Method` in its own package (`cpcl/methods/<name>/`), registered
by name in `cpcl/methods/__init__.py`. The engine (`cpcl.engine`) owns everything that is the
same for every method: devices, DDP and SyncBN, autocast, backward, gradient sync, the
optimiser steps, the loop, snapshots, exact resume, SIGTERM, the NaN stop and logging. The
method owns its maths. One iteration, written out in `cpcl.engine.train_step`::

    lr = method.set_lr(optimizers, step)                  # the method's official schedule
    for opt in optimizers: opt.zero_grad(set_to_none=True)
    with autocast(amp):
        loss, logs = method.forward_loss(model, batch, step)  # forwards + losses, no backward
    loss.backward(); grad_sync(); for opt in optimizers: opt.step()   # (GradScaler with fp16)
    method.after_step(model, step)                       # e.g. EMA teacher update

What a method provides (class attributes, then methods; see `Method` for signatures):

* `name`: its `C.method` value.
* `defaults`: its official settings per dataset, `{"voc": {"lr": ...}, "cityscapes": {...}}`.
  They replace the dataset preset's values for keys that the experiment config left at the
  preset value; `--key=value` always wins (see `cpcl.engine.resolve.apply_overrides`, which records
  where every value came from; the run log prints it).
  A dataset without an entry is refused; `dataset_notes` (optional) adds why and what to use
  instead to that error, per dataset name.
* `config_keys`: new config keys of the method with their defaults (prefix them with the
  method name, e.g. `u2pl_ema_decay`); they are added to `C` so `--key=value` works.
  `config_help` gives one line of meaning per such key (`train.py --help`; a test checks it).
* `streams`: the split lists the method trains on (default `("labeled", "unlabeled")`;
  `sup`: `("labeled",)`); a split it does not declare is neither required nor read.
* `capturable` (default False) and `not_capturable_because`: whether `forward_loss` + backward
  can be captured as one CUDA graph (`--cuda_graphs=true`, EXPERIMENTAL, `cpcl.engine.graphs`):
  no host synchronisation (`.item()`, `.tolist()`, `nonzero`, boolean-mask reads, blocking
  copies), no python branch or shape that depends on the data, and nothing that depends on
  `step` (a replay repeats the captured iteration's kernels); random draws only from torch's
  generators on the device. A method that is not capturable runs eagerly, and the log says
  `not_capturable_because`.
* `derived_defaults(C)`: values of derived keys (`train_source`, `num_unsup_imgs`, ...) the
  method reads instead of the labeled-ratio ones; `cpcl.engine.resolve.finalize` fills each key the
  user left at None with them (e.g. CoSA trains on the whole `train_aug.txt`).
* `check_config(C)`: raise `ConfigError` naming the key for values the method cannot run.
* `min_images_per_rank`: the smallest per-process batch the method can train on (default 1;
  U2PL 2: its plain-BatchNorm teacher); `check_per_rank_batch(C, world_size)` names
  `batch_size` and the process count at start-up otherwise.
* `from_config(C, per_rank_batch=...)`: build the method object; read every value it needs
  from `C` here, once (the object then holds small settings, never `C`).
* `data_view()`: a picklable `cpcl.data.views.DataView`: which sample streams one batch slot
  draws (labeled / unlabeled), how a decoded uint8 sample becomes tensors (geometric
  transform, an optional uint8 photometric stage, normalisation) and what the collate adds
  (e.g. CutMix boxes). `sup` reads no unlabeled image.
* `build_model(pretrained=True)`: the trainable network(s) as ONE `nn.Module` (what is
  checkpointed under `model`, DDP-synchronised and SyncBN-converted), built with
  `cpcl.models.build_model`; `pretrained=False` skips the ImageNet file (evaluation).
* `build_optimizers(model)`: a tuple of optimisers (saved as `optimizer_1`, `optimizer_2`, ...).
* `set_lr(optimizers, step)`: write this iteration's learning rates (any number of groups,
  any multipliers) and return the headline lr for the log. A method whose official code
  writes the lr AFTER `optimizer.step()` returns here the value that step would have seen.
* `setup(model)`: called once after the model is on its device (SyncBN, broadcast done) and
  before a resume: build extra networks here, e.g. an EMA teacher (deep copy of the model).
* `forward_loss(model, batch, step, aux=None)`: the forwards and losses of one iteration,
  under the engine's autocast. Returns `(loss, logs)`: the scalar to back-propagate and a dict
  of named 0-dim tensors (kept on the device; the engine logs, averages and NaN-checks them).
  `step` carries epoch, global iteration and totals (per-epoch schedules, EMA decay).
* `after_step(model, step)`: work after the optimiser step (EMA update, memory-bank push).
* `eval_net(model)`: the network evaluated, as a plain module `x (B,3,H,W) -> logits
  (B,C,H,W)` at the input size (the evaluator's prediction core takes exactly that).
* `state_dict()` / `load_state_dict(state)`: extra state that must survive a resume
  (teacher weights, memory banks, counters); saved under `method_state` in checkpoints.
* `official_evaluator(C)` (optional): the method's own official evaluation protocol as an
  `OfficialEvaluator`, which `eval.py --eval_protocol=official` and
  `cpcl.cli.snapshot.evaluate_snapshot` run on `eval_net`; None (default): the method's official
  protocol is the project's evaluator (CPCL's sliding windows).

* `train_evaluation(model, ctx)` (optional): the evaluation during training, called by the
  loop every `C.eval_every` epochs (after the epoch's snapshot) with a `TrainEvalContext`. A
  method whose official code evaluates several networks (student and EMA teacher, model and
  EMA model) with its own protocol and keeps the best checkpoint does it here, on every rank
  (the context says which); return a dict for the run summary (``summary["last_eval"]``), or
  None (default): the engine's evaluation (`eval_net` with the project's evaluator).
* `final_evaluation(model, ctx)` (optional): once after the last epoch of a run that was not
  interrupted (e.g. score the kept best checkpoint with a final protocol); a dict goes to
  ``summary["final_eval"]``; None (default): nothing.
* `backbone_name(C)` (optional): the network named in the run-log header (default
  `C.backbone`; a method with its own encoder key names that, e.g. CoSA's ViT).
* `eval_variants(C)` (optional): the config variants one `eval.py` request expands to, each
  evaluated and reported on its own (default `({},)`: one; e.g. CoSA's
  ``cosa_eval_net=both`` -> student and teacher).
* `load_eval_state(ckpt)` (optional): after the weights of checkpoint dict `ckpt` are in the
  model, restore what evaluation needs from it (default: `load_state_dict` of its
  `method_state`); may accept a weights-only file (e.g. an official best checkpoint) and
  return a note for the log saying what is evaluated.

The evaluator needs only `cpcl.methods.eval_net_from_checkpoint(C, ckpt, device)`: build the
model, load the weights, `setup`, `load_eval_state`, return `eval_net(model)` in eval mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class StepInfo:
    """Where an iteration is: `epoch` (0-based), `iteration` (0-based, global over epochs),
    `iters_per_epoch` and `total_iters` (nepochs * iters_per_epoch)."""

    epoch: int = 0
    iteration: int = 0
    iters_per_epoch: int = 1
    total_iters: int = 1

    @property
    def iter_in_epoch(self) -> int:
        """0-based iteration inside the epoch."""
        return self.iteration - self.epoch * self.iters_per_epoch


@dataclass(frozen=True)
class OfficialEvaluator:
    """A method's own evaluation protocol, ready to run.

    `label` names it in tables and logs (e.g. "u2pl official: sliding windows 769x769 ...");
    `evaluate(net, dataset, *, device, exports, progress)` scores the plain segmenter `net`
    (`eval_net`) on `dataset` and returns a dict with at least ``iou``, ``miou``,
    ``pixel_acc``, ``hist`` and ``num_images`` (as `cpcl.evaluate.evaluate_images`).
    """

    label: str
    evaluate: Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class TrainEvalContext:
    """What the loop gives `Method.train_evaluation` / `final_evaluation`.

    `C`: the finalized config; `epoch`: the epoch just finished (0-based); `iteration`: the
    iterations done so far (global, as the official "n_iter + 1"); `device`, `rank`,
    `world_size`, `is_main`: this process; `log`: the run log; `scalars`: the run's
    `cpcl.runlog.Scalars` (TensorBoard) or None; `snapshot_dir`: where checkpoints go.
    """

    C: Any
    epoch: int
    iteration: int
    device: torch.device
    log: logging.Logger
    rank: int = 0
    world_size: int = 1
    is_main: bool = True
    scalars: Any = None
    snapshot_dir: str = ""


class Method:
    """Base class of a training method; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    config_keys: ClassVar[Mapping[str, Any]] = {}
    # Why a dataset without `defaults` is refused and what to use instead (added to the error).
    dataset_notes: ClassVar[Mapping[str, str]] = {}
    # Batch keys `forward_loss` reads; `train_step` names the missing ones in its error.
    batch_keys: ClassVar[tuple[str, ...]] = ()
    # The sample sets the method trains on, by split name ("labeled": images with masks,
    # "unlabeled": images without). Only these split lists are required, read and counted
    # (`cpcl.engine.resolve_run_config`); `data_view().streams` draws from them.
    streams: ClassVar[tuple[str, ...]] = ("labeled", "unlabeled")
    # One line of meaning per key of `config_keys` (shown by `train.py --help`).
    config_help: ClassVar[Mapping[str, str]] = {}
    # `--cuda_graphs`: forward_loss + backward capturable as one CUDA graph (module docstring).
    capturable: ClassVar[bool] = False
    not_capturable_because: ClassVar[str] = "not declared capturable (Method.capturable)"
    # The smallest batch one process can train on (e.g. BatchNorm outside SyncBN needs 2).
    min_images_per_rank: ClassVar[int] = 1

    @classmethod
    def check_config(cls, C: Any) -> None:
        """Raise `cpcl.config.ConfigError` for values this method cannot run with."""

    @classmethod
    def check_per_rank_batch(cls, C: Any, world_size: int) -> None:
        """Raise `ConfigError` when `C.batch_size` over `world_size` processes leaves a rank
        fewer than `min_images_per_rank` images."""
        per_rank = int(C.batch_size) // max(int(world_size), 1)
        if per_rank < cls.min_images_per_rank:
            raise ConfigError(
                f"C.batch_size = {C.batch_size} over {world_size} process(es) gives {per_rank} "
                f"image(s) per process; method {cls.name!r} needs at least "
                f"{cls.min_images_per_rank} per process: raise --batch_size (or use fewer "
                "processes)"
            )

    @classmethod
    def derived_defaults(cls, C: Any) -> dict[str, Any]:
        """Derived keys the method sets for config `C` (whose `dataset_path` is already
        absolute), applied by `finalize` where the user left None (default: none)."""
        return {}

    @classmethod
    def from_config(cls, C: Any, *, per_rank_batch: int) -> Method:
        """Build the method from a finalized config (read what it needs, once)."""
        raise NotImplementedError

    def data_view(self) -> Any:
        """The picklable `cpcl.data.views.DataView` this method trains on."""
        raise NotImplementedError

    def build_model(self, *, pretrained: bool = True) -> nn.Module:
        """The trainable network(s) as one module, on the CPU; `pretrained=False` skips the
        ImageNet backbone file (evaluation, where a checkpoint replaces every weight)."""
        raise NotImplementedError

    def build_optimizers(self, model: nn.Module) -> tuple[torch.optim.Optimizer, ...]:
        """The optimisers of `model`, in checkpoint order."""
        raise NotImplementedError

    def set_lr(self, optimizers: Sequence[torch.optim.Optimizer], step: StepInfo) -> float:
        """Write the learning rates of iteration `step`; return the one to log."""
        raise NotImplementedError

    def setup(self, model: nn.Module) -> None:
        """Called once when `model` is on its device, before a resume (default: nothing)."""

    def forward_loss(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        step: StepInfo,
        aux: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Forwards and losses of one iteration: `(loss, {name: 0-dim tensor})`."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: StepInfo) -> None:
        """Work after the optimiser step (default: nothing)."""

    def eval_net(self, model: nn.Module) -> nn.Module:
        """The network to evaluate: `x (B,3,H,W) -> logits (B,C,H,W)` at the input size."""
        raise NotImplementedError

    @classmethod
    def official_evaluator(cls, C: Any) -> OfficialEvaluator | None:
        """The method's own official evaluation protocol for finalized config `C`, or None
        when that protocol is the project's evaluator (default)."""
        return None

    def train_evaluation(self, model: nn.Module, ctx: TrainEvalContext) -> dict[str, Any] | None:
        """The evaluation during training (every `C.eval_every` epochs), or None (default): the
        engine evaluates `eval_net` with the project's evaluator."""
        return None

    def final_evaluation(self, model: nn.Module, ctx: TrainEvalContext) -> dict[str, Any] | None:
        """Work once after the last epoch of an uninterrupted run (default: none, None)."""
        return None

    @classmethod
    def backbone_name(cls, C: Any) -> str:
        """The backbone named in the run-log header (default: `C.backbone`)."""
        return str(C.backbone)

    @classmethod
    def eval_variants(cls, C: Any) -> tuple[dict[str, Any], ...]:
        """Config overrides, one per evaluation `eval.py` runs for config `C` (default: one
        evaluation as configured)."""
        return ({},)

    def load_eval_state(self, ckpt: Mapping[str, Any]) -> str | None:
        """Restore what evaluation needs from checkpoint dict `ckpt` (its weights are already
        in the model): by default its `method_state`. Returns a note for the log, or None."""
        self.load_state_dict(ckpt.get("method_state") or {})
        return None

    def state_dict(self) -> dict[str, Any]:
        """Extra state that a resume needs besides model and optimisers (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`; a method without extra state accepts only an empty one."""
        if state:
            raise CheckpointError(
                f"method {self.name!r} keeps no extra state but the checkpoint has "
                f"method_state keys {sorted(state)}"
            )
