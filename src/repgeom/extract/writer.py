"""Host-side chunk buffers and a writer thread, so that row chunks are written while the next one computes."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from repgeom.store.writing import GroupWriter

# zarr has no bfloat16; bf16 values travel as their raw 16 bits (int16 in torch, uint16 in the store).
TORCH_STORAGE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.int16}


def to_storage(values: torch.Tensor, store_dtype: str) -> torch.Tensor:
    if store_dtype == "bfloat16":
        return values.to(torch.bfloat16).view(torch.int16)
    return values.to(TORCH_STORAGE[store_dtype])


@dataclass
class HostBuffer:
    """One row chunk's results in the order they were computed; pinned on CUDA so copies run asynchronously."""
    reps: torch.Tensor            # [rows, n_layers, D]
    letter_lens: torch.Tensor     # [rows, n_layers, 4]: the logit lens; its last layer is the prediction
    argmax_token: torch.Tensor    # [rows]
    sample: torch.Tensor | None   # [cap, n_sampled_layers, D]

    @classmethod
    def allocate(cls, rows: int, n_layers: int, hidden: int, store_dtype: str, sample_shape: tuple[int, int] | None,
                 pin: bool) -> "HostBuffer":
        dtype = TORCH_STORAGE[store_dtype]
        return cls(reps=torch.empty((rows, n_layers, hidden), dtype=dtype, pin_memory=pin),
                   letter_lens=torch.empty((rows, n_layers, 4), dtype=torch.float32, pin_memory=pin),
                   argmax_token=torch.empty((rows,), dtype=torch.int64, pin_memory=pin),
                   sample=None if sample_shape is None
                   else torch.empty((sample_shape[0], sample_shape[1], hidden), dtype=dtype, pin_memory=pin))


@dataclass
class FilledChunk:
    chunk: int
    buffer: HostBuffer
    row_order: np.ndarray     # chunk-relative row of each buffer row
    sample_order: np.ndarray  # sample slot of each buffer sample row
    ready: torch.cuda.Event | None  # recorded after the last copy into `buffer`


def numpy_storage(values: torch.Tensor) -> np.ndarray:
    array = values.numpy()
    return array.view(np.uint16) if array.dtype == np.int16 else array


class AsyncChunkWriter:
    """Writes filled chunks on a thread; two buffers let the main thread fill one while the other is written."""

    def __init__(self, group: GroupWriter, buffers: list[HostBuffer], sample_cap: int):
        self.group = group
        self.sample_cap = sample_cap
        self.free: queue.Queue[HostBuffer] = queue.Queue()
        for buffer in buffers:
            self.free.put(buffer)
        self.filled: queue.Queue[FilledChunk | None] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
        self.thread.start()

    def acquire(self) -> HostBuffer:
        while True:
            self._raise_if_failed()
            try:
                return self.free.get(timeout=1.0)
            except queue.Empty:
                continue

    def submit(self, filled: FilledChunk) -> None:
        self._raise_if_failed()
        self.filled.put(filled)

    def close(self) -> None:
        """Wait until every submitted chunk is written; re-raise a write error in the caller's thread."""
        self.filled.put(None)
        self.thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing to {self.group.node.store_path} failed: {self.error}") from self.error

    def _run(self) -> None:
        while (filled := self.filled.get()) is not None:
            if self.error is None:
                try:
                    self._write(filled)
                except BaseException as err:  # handed to the main thread
                    self.error = err
            self.free.put(filled.buffer)

    def _write(self, filled: FilledChunk) -> None:
        if filled.ready is not None:
            filled.ready.synchronize()
        n_rows, n_sample = len(filled.row_order), len(filled.sample_order)
        chunk_order = np.argsort(filled.row_order)
        buffer = filled.buffer
        reps = numpy_storage(buffer.reps[:n_rows])[chunk_order]          # [rows, L, D], chunk order
        sample = None
        if buffer.sample is not None:
            computed = numpy_storage(buffer.sample[:n_sample])              # [n, Ls, D]
            sample = np.zeros((computed.shape[1], self.sample_cap, computed.shape[2]), dtype=computed.dtype)
            sample[:, filled.sample_order] = computed.transpose(1, 0, 2)
        letter_lens = buffer.letter_lens[:n_rows].numpy()[chunk_order]
        # The prediction is the lens's last layer: the two arrays agree exactly.
        self.group.write_chunk(filled.chunk, np.ascontiguousarray(reps.transpose(1, 0, 2)), letter_lens[:, -1],
                               buffer.argmax_token[:n_rows].numpy()[chunk_order], sample, letter_lens)
