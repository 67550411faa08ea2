"""Resumable training states written behind the training (docs/reliability.md): `StateWriter`
copies a state's tensors off the device when it is taken and writes the file on one background
thread, as `checkpoint.save_state` would; `_Staging` makes those copies (CUDA tensors through one
reused page-locked buffer)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from goodfit_cli.io.checkpoint import _save_tensors, _state_parts


class StateWriter:
    """Training states written behind the training. `save` takes a copy of the state's tensors
    on the CPU before it returns (the steps that follow cannot change what is written), then
    writes the file as `save_state` does (atomically: a crash mid-write leaves the previous
    state the newest complete file) on one background thread. One write at a time: `save`
    first waits for the previous one. `prune` (the removal of older states) runs before the
    write, on the caller's thread once the previous write is done, and after it, on the
    writer's: so at any moment a kill can land, at most one state more than the pruning keeps
    exists, also when a resumed run starts from a killed run's leftovers.
    `close()` returns once everything is on disk and raises a write's error; `close(quiet=True)`
    (the training itself failed: its error is the one to see) only waits.

    CUDA tensors are copied into one reused page-locked buffer by asynchronous copies queued on
    the current stream (`_Staging`): the caller does not wait for them, the training's next
    kernels run after them (so the copy is what the tensors held at `save`), and the writer
    thread waits for them before it reads the buffer. Other tensors are copied as they are."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._staging = _Staging()

    def save(self, path: str | os.PathLike, state: Any,
             prune: Callable[[], None] | None = None) -> None:
        self.wait()
        if prune is not None:
            prune()
        tensors, metadata = _state_parts(state)
        copies, ready = self._staging.stage(tensors)

        def write() -> None:
            ready()
            _save_tensors(path, copies, metadata)
            if prune is not None:
                prune()

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="goodfit-state")
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        """Until the last write is done; its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, quiet: bool = False) -> None:
        try:
            self.wait()
        except Exception:  # noqa: BLE001
            if not quiet:
                raise
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            self._staging = _Staging()  # the kept copies are freed with the stage


class _Staging:
    """Host copies of a state's tensors for StateWriter. `stage(tensors)` returns (the copies by
    key, a function that returns once they hold the values). CUDA tensors go into one
    page-locked buffer, kept between states and grown when a state needs more, by
    non-blocking copies on the current device's current stream and one event (tensors on another
    device are copied as CPU ones are); the caller must not stage again
    before the previous copies were used (StateWriter waits for the previous write first).
    CPU tensors are copied before `stage` returns, each into the copy kept from the previous
    state under its key (same shape and dtype; a new one otherwise); tensors on another device,
    or CUDA tensors where page-locked memory cannot be had, with `.to("cpu")`."""

    ALIGN = 64  # bytes: every tensor's offset in the buffer (any dtype's alignment)

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None  # uint8, page-locked
        self._cpu: dict[str, torch.Tensor] = {}  # the last state's copies of CPU tensors, by key

    def _cpu_copy(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """A copy of CPU tensor `t` in the copy kept from the last state under `key` when it
        has the same shape and dtype (no fresh memory to fault in: a ResNet-18 state with its
        AdamW moments is ~180 MB), else in a new one, kept for the next state."""
        have = self._cpu.get(key)
        if have is None or have.shape != t.shape or have.dtype != t.dtype:
            have = self._cpu[key] = torch.empty_like(t, memory_format=torch.contiguous_format)
        return have.copy_(t)

    def _host(self, nbytes: int) -> torch.Tensor | None:
        if self._buffer is None or self._buffer.numel() < nbytes:
            self._buffer = None  # the old one is released before a larger one is pinned
            try:
                self._buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            except RuntimeError:  # page-locked memory refused (limits, a huge state)
                return None
        return self._buffer

    def stage(self, tensors: Mapping[str, torch.Tensor]
              ) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
        here = torch.cuda.current_device() if any(t.is_cuda for t in tensors.values()) else -1
        on_cuda = [k for k, t in tensors.items() if t.is_cuda and t.get_device() == here]
        offsets, end = {}, 0
        for k in on_cuda:
            offsets[k] = end
            t = tensors[k]
            end += -(-t.numel() * t.element_size() // self.ALIGN) * self.ALIGN
        buffer = self._host(end) if on_cuda else None
        copies: dict[str, torch.Tensor] = {}
        for k, t in tensors.items():
            t = t.detach()
            if buffer is not None and k in offsets:
                n = t.numel() * t.element_size()
                dst = buffer[offsets[k]:offsets[k] + n].view(t.dtype).view(t.shape)
                dst.copy_(t, non_blocking=True)
                copies[k] = dst
            elif t.device.type == "cpu":
                copies[k] = self._cpu_copy(k, t)
            else:
                copies[k] = t.to("cpu", copy=True)
        if buffer is None:
            return copies, lambda: None
        done = torch.cuda.Event()
        done.record()  # after the copies, on the current stream of the current device
        return copies, done.synchronize
