"""`--cuda_graphs=true` (EXPERIMENTAL): one iteration's forwards, losses and backward captured
as one CUDA graph and replayed, so that a small-batch iteration is not bound by kernel
launches on the host.

`GraphedIteration` runs the first `warmup` iterations eagerly (on the capture stream, so that
cuDNN / cuBLAS workspaces and autograd's stream bookkeeping settle there), then captures
`method.forward_loss` + backward on static copies of the batch, and from then on copies each
batch into those static buffers and replays the graph. The learning-rate write, the optimiser
step (SGD has no capturable path in torch 2.13), the EMA, the memory banks and the meter stay
eager in `train_step`, so the optimiser numerics do not change.

Gradients: the capture starts with every `.grad` None, so the graph ALLOCATES the gradients
(in its private memory pool) and every replay overwrites them, which is what eager
`zero_grad(set_to_none=True)` + backward computes. Nothing may reset them to None afterwards.

The pointer guard: before each replay the `data_ptr`s of every parameter, buffer, gradient and
static input are compared with those at capture. A resume, a state load or any rebind
(`p.data = ...`, `p.grad = None`) changes them; the iteration then re-captures (with a warning)
instead of replaying kernels that read and write stale memory. A batch of another shape or
dtype (e.g. a shorter last batch) runs eagerly.

Without CUDA, `emulate=True` keeps the same structure (warm-up, static inputs, the captured
callable re-run in place of `graph.replay()`, static gradients, the guard) so that the suite
can check it against the eager iteration bitwise; `check_graph_settings` refuses the real
feature on the CPU, with `--compile` and with more than one process (first version).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..methods import Method, StepInfo

DEFAULT_WARMUP = 3


def check_graph_settings(
    *, cuda_graphs: bool, device: torch.device, compile: bool, world_size: int
) -> None:
    """Refuse `--cuda_graphs=true` where this version cannot run it (named keys and values)."""
    if not cuda_graphs:
        return
    if compile:
        raise ConfigError(
            "C.cuda_graphs = True with C.compile = True: choose one (torch.compile has its own "
            "CUDA-graph mode, mode='reduce-overhead')"
        )
    if world_size > 1:
        raise ConfigError(
            f"C.cuda_graphs = True with {world_size} processes: this first version captures "
            "single-process training only (the DDP gradient all-reduce is not captured)"
        )
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(
            f"C.cuda_graphs = True needs a CUDA device; this run trains on {device} "
            "(set --cuda_graphs=false, or --device=cuda on a machine with CUDA)"
        )


def graph_refusal(method: Method) -> str | None:
    """None when `method` declares itself capturable, else the log line naming why not."""
    if method.capturable:
        return None
    return f"--cuda_graphs: method {method.name!r} runs eagerly: {method.not_capturable_because}"


def _autocast(amp: str, device_type: str) -> contextlib.AbstractContextManager:
    # The weight-cast cache must be off inside a capture (torch.cuda.graphs documents it);
    # the casts give the same values, they are only recomputed.
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=False)


class GraphedIteration:
    """`forward_loss` + backward of a capturable `method`, captured once and replayed.

    Args:
        model, method: the trained network and its (capturable) method.
        amp: "none", "bf16" or "fp16" (then `run` is given the GradScaler).
        warmup: eager iterations before the capture.
        emulate: no CUDA graph; the captured callable is re-run instead of replayed (tests).
        log: receives the re-capture warnings.
    """

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        *,
        amp: str = "none",
        warmup: int = DEFAULT_WARMUP,
        emulate: bool = False,
        log: logging.Logger | None = None,
    ) -> None:
        if not method.capturable:
            raise ConfigError(graph_refusal(method))
        if warmup < 1:
            raise ConfigError(f"cuda graph warm-up = {warmup}: expected >= 1 eager iteration")
        self.model, self.method, self.amp = model, method, amp
        self.warmup, self.emulate = int(warmup), bool(emulate)
        self.log = log if log is not None else logging.getLogger("cpcl")
        self.eager_done = 0
        self.captures = self.replays = 0
        self.graph: Any = None
        self.static_batch: dict[str, Tensor] = {}
        self.static_out: tuple[Tensor, dict[str, Tensor]] | None = None
        self.pointers: tuple[int, ...] = ()
        self._scaler: Any = None
        self._stream = torch.cuda.Stream() if not emulate else None

    # --- the captured callable ---------------------------------------------------------------

    def _forward_backward(self, batch: Mapping[str, Tensor], step: StepInfo):
        device_type = next(iter(batch.values())).device.type
        with _autocast(self.amp, device_type):
            loss, logs = self.method.forward_loss(self.model, batch, step, None)
        (self._scaler.scale(loss) if self._scaler is not None else loss).backward()
        return loss.detach(), {k: v.detach() for k, v in logs.items()}

    # --- the guard ---------------------------------------------------------------------------

    def _current_pointers(self) -> tuple[int, ...]:
        ptrs = [p.data_ptr() for p in self.model.parameters()]
        ptrs += [-1 if p.grad is None else p.grad.data_ptr() for p in self.model.parameters()]
        ptrs += [b.data_ptr() for b in self.model.buffers()]
        ptrs += [t.data_ptr() for t in self.static_batch.values()]
        return tuple(ptrs)

    def _fits(self, batch: Mapping[str, Tensor]) -> bool:
        if list(batch) != list(self.static_batch):
            return False
        return all(
            v.shape == s.shape and v.dtype == s.dtype and v.stride() == s.stride()
            for v, s in zip(batch.values(), self.static_batch.values(), strict=True)
        )

    # --- capture and replay ------------------------------------------------------------------

    def _side_stream(self) -> contextlib.AbstractContextManager:
        if self._stream is None:
            return contextlib.nullcontext()
        self._stream.wait_stream(torch.cuda.current_stream())
        return torch.cuda.stream(self._stream)

    def _join_stream(self) -> None:
        if self._stream is not None:
            torch.cuda.current_stream().wait_stream(self._stream)

    def _eager(self, batch: Mapping[str, Tensor], step: StepInfo):
        for p in self.model.parameters():
            p.grad = None
        with self._side_stream():
            out = self._forward_backward(batch, step)
        self._join_stream()
        return out

    def _capture(self, batch: Mapping[str, Tensor], step: StepInfo) -> None:
        self.graph = self.static_out = None  # free the old graph's pool first
        self.static_batch = {k: v.detach().clone() for k, v in batch.items()}
        for p in self.model.parameters():
            p.grad = None  # the graph allocates the gradients it then overwrites
        if self.emulate:
            self.static_out = self._forward_backward(self.static_batch, step)
        else:
            self.graph = torch.cuda.CUDAGraph()
            with self._side_stream(), torch.cuda.graph(self.graph, stream=self._stream):
                self.static_out = self._forward_backward(self.static_batch, step)
            self._join_stream()
            self.graph.replay()  # the capture recorded the kernels without running them
        self.captures += 1
        self.pointers = self._current_pointers()

    def _replay(self, step: StepInfo) -> None:
        self.replays += 1
        if self.graph is not None:
            self.graph.replay()
            return
        # Emulation: run the captured callable again, then put its results into the static
        # gradients and outputs, as a replay writes into the same memory.
        params = list(self.model.parameters())
        static_grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        loss, logs = self._forward_backward(self.static_batch, step)
        for p, g in zip(params, static_grads, strict=True):
            if g is not None and p.grad is not None:
                g.copy_(p.grad)
            p.grad = g
        old_loss, old_logs = self.static_out
        old_loss.copy_(loss)
        for k, v in logs.items():
            old_logs[k].copy_(v)

    def run(
        self, batch: Mapping[str, Tensor], step: StepInfo, scaler: Any = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Forwards, losses and backward of one iteration (gradients in `.grad`); returns
        the loss and the logs as new detached tensors (the static ones are overwritten by the
        next replay)."""
        self._scaler = scaler
        if self.eager_done < self.warmup:
            self.eager_done += 1
            return self._eager(batch, step)
        if self.static_out is not None and not self._fits(batch):
            return self._eager_keeping_graph(batch, step)
        if self.static_out is None:
            self._capture(batch, step)
        else:
            for key, value in batch.items():
                self.static_batch[key].copy_(value, non_blocking=True)
            if self._current_pointers() != self.pointers:
                self.log.warning(
                    "--cuda_graphs: parameters, buffers, gradients or inputs moved since the "
                    "capture (resume, state load or rebind); capturing again"
                )
                self._capture(self.static_batch, step)
            else:
                self._replay(step)
        loss, logs = self.static_out
        return loss.clone(), {k: v.clone() for k, v in logs.items()}

    def _eager_keeping_graph(self, batch: Mapping[str, Tensor], step: StepInfo):
        # Another shape (e.g. the last, shorter batch): eager, then the graph's own gradient
        # tensors hold this iteration's gradients again so the guard stays quiet.
        params = list(self.model.parameters())
        static_grads = [p.grad for p in params]
        out = self._eager(batch, step)
        for p, g in zip(params, static_grads, strict=True):
            if g is not None and p.grad is not None:
                g.copy_(p.grad)
                p.grad = g
        return out


def make_graphed_iteration(
    C: Any, model: nn.Module, method: Method, log: logging.Logger, *, is_main: bool = True
) -> GraphedIteration | None:
    """The `GraphedIteration` of a run with `C.cuda_graphs` (after `check_graph_settings`),
    or None: the option is off, or the method is not capturable (logged once)."""
    if not C.get("cuda_graphs", False):
        return None
    reason = graph_refusal(method)
    if reason is not None:
        if is_main:
            log.info("%s", reason)
        return None
    if is_main:
        log.warning("--cuda_graphs=true is EXPERIMENTAL (see docs/gpu.md)")
    return GraphedIteration(model, method, amp=str(C.amp), log=log)
