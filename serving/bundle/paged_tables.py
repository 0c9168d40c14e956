"""Big embedding tables read row by row from the weights file instead of memory-mapped.

A 10M-item catalogue's item-id table is 10M x 64 float32 = 2.56 GB. Memory-mapped (as
``torch.load(mmap=True)`` leaves it), every row a request reads maps the kernel's whole
fault-around window (64 KB, 256 rows of 256 B) into the process, so a few hundred thousand
history look-ups make the whole table resident: RSS grows with traffic until it holds the
table. :class:`FileRowsEmbedding` reads just the rows asked for with ``pread`` from the same
file at the same offset: the bytes come from the page cache (shared by every replica on the
node and reclaimable by the kernel), and the process keeps none of them.

:func:`page_big_tables` swaps every embedding table of a loaded model above a size for one
of these, in place, keeping the same weights (the mapped tensor stays the module's
``weight``, so ``state_dict`` round-trips; nothing reads it on the request path). Smaller
tables stay as they are: reading them whole is cheaper than a system call per row.
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["PAGED_TABLE_MIN_BYTES", "FileRowsEmbedding", "page_big_tables"]

PAGED_TABLE_MIN_BYTES = 256 << 20
"""Tables of at least this many bytes are read row by row (256 MiB: 1M x 64 float32)."""
_CHECKED_ROWS = 17
logger = logging.getLogger(__name__)


class FileRowsEmbedding(nn.Module):
    """``nn.Embedding``'s forward (no gradient) over ``weight``, whose bytes lie in ``path`` at
    ``offset`` (row-major, C-contiguous); rows are read with ``pread`` per call.

    ``weight`` must be that file's content at that offset (checked on a spread of rows: the
    first is the padding row, all zeros in every table).
    Thread-safe: ``pread`` has no shared file position. The file is opened once and held: a
    bundle directory replaced or deleted while this model serves (``--overwrite``, a cache
    eviction) keeps its old bytes readable, as a mapping would, instead of reading another
    file's bytes at this offset. A deep copy opens its own descriptor (``/proc/self/fd``);
    pickling is refused (``recsys serve --workers`` spawns workers that load the bundle
    themselves).
    """

    def __init__(self, weight: torch.Tensor, path: Path, offset: int) -> None:
        super().__init__()
        if weight.dim() != 2 or not weight.is_contiguous():
            raise ValueError(f"expected a contiguous 2-d table, got shape {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.num_embeddings, self.embedding_dim = (int(n) for n in weight.shape)
        self._row_bytes = self.embedding_dim * weight.element_size()
        self._offset = offset
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)
        for row in sorted({int(r) for r in torch.linspace(0, self.num_embeddings - 1, _CHECKED_ROWS)}):
            if self._read([row]) != weight[row].numpy().tobytes():
                raise ValueError(f"{path} at offset {offset}: row {row} differs from the loaded table")

    def __deepcopy__(self, memo: dict[int, Any]) -> FileRowsEmbedding:
        return FileRowsEmbedding(self.weight.detach(), Path(f"/proc/self/fd/{self._fd}"), self._offset)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("FileRowsEmbedding reads a file by descriptor and cannot be pickled; save its weight")

    def _read(self, rows: list[int]) -> bytes:
        size, base, fd = self._row_bytes, self._offset, self._fd
        return b"".join([os.pread(fd, size, base + row * size) for row in rows])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if flat.numel() == 0:
            return self.weight.new_zeros((*ids.shape, self.embedding_dim))
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= self.num_embeddings:
            raise IndexError(f"index out of range in self: {low}..{high} for {self.num_embeddings} rows")
        unique, inverse = torch.unique(flat, return_inverse=True)
        data = bytearray(self._read(unique.tolist()))
        rows = torch.frombuffer(data, dtype=self.weight.dtype).view(len(unique), self.embedding_dim)
        return rows[inverse].view(*ids.shape, self.embedding_dim)


def page_big_tables(model: nn.Module, path: Path, min_bytes: int | None = None) -> list[str]:
    """Replace each ``nn.Embedding`` of ``model`` whose weight (memory-mapped from ``path``) is
    at least ``min_bytes`` by a :class:`FileRowsEmbedding` over the same bytes, everywhere
    it is referenced (the item-id table is shared by both towers). Returns the replaced
    modules' names. A table whose file offset cannot be found (not mapped from ``path``,
    e.g. on a system without ``/proc/self/maps``) stays as it is, with a warning. ``min_bytes`` defaults
    to :data:`PAGED_TABLE_MIN_BYTES`, read at call time.
    """
    if min_bytes is None:
        min_bytes = PAGED_TABLE_MIN_BYTES
    stat = os.stat(path)
    replaced: dict[int, FileRowsEmbedding] = {}
    names: list[str] = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Embedding) or id(module) in replaced:
            continue
        weight = module.weight.detach()
        if weight.numel() * weight.element_size() < min_bytes:
            continue
        offset = _mapped_file_offset(weight.data_ptr(), stat) if weight.is_contiguous() else None
        if offset is None:
            # Still correct, but the memory problem this module exists for comes back.
            logger.warning(
                "%s: table %s (%d MiB) is not mapped from the file; it stays in memory and its rows "
                "become resident as requests read them",
                path,
                name,
                weight.numel() * weight.element_size() >> 20,
            )
            continue
        replaced[id(module)] = FileRowsEmbedding(weight, Path(path), offset)
        names.append(name)
    if replaced:
        for parent in model.modules():
            for child_name, child in list(parent.named_children()):
                if id(child) in replaced:
                    setattr(parent, child_name, replaced[id(child)])
    return names


def _mapped_file_offset(address: int, stat: os.stat_result) -> int | None:
    """Offset in the file of ``stat`` (matched by device and inode, not by path: symlinks and
    a path replaced since do not fool it) of the byte mapped at ``address`` in this process,
    or None when no mapping of that file holds it."""
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}"
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 5 or fields[4] != str(stat.st_ino) or fields[3] != device:
                    continue
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                if start <= address < end:
                    return address - start + int(fields[2], 16)
    except OSError:
        return None
    return None
