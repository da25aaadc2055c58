"""Rows of tensors as bytes: how every tensor crosses ranks in moe_eplb.distributed.

Backends lack dtypes (gloo has no bfloat16 or float8; a collective moves one
dtype per message), so every message here is uint8: a row of a (N, ...)
tensor is its bytes, and several tensors that travel together (expert
weights with their scales, fp8 hidden states with theirs) share one record
per row, each at its own offset. A new dtype is then a layout, not a code
path, and it moves bit-exact on every backend.

    layout = RowLayout.of([weights, scales])       # (N, ...) tensors
    records = layout.pack([weights, scales], rows)  # (len(rows), record_bytes) uint8
    weights_rows, scales_rows = layout.unpack(received)

One tensor packs to its rows' bytes exactly (no padding, no extra copy
beyond the row gather); several are aligned so that each can be viewed as
its dtype again.
"""
import collections

import torch

# Each tensor's bytes start at a multiple of this within a record of several
# tensors, so that they can be viewed as any dtype (complex128 is 16 bytes).
ALIGNMENT = 16

_Part = collections.namedtuple("_Part", "dtype row_shape offset size")


def row_bytes(tensor):
    """A (N, ...) tensor as an (N, row bytes) uint8 tensor (a view when the
    tensor is contiguous, else of a contiguous copy)."""
    width = tensor.element_size()
    for size in tensor.shape[1:]:
        width *= size
    return tensor.contiguous().view(-1).view(torch.uint8).view(tensor.shape[0], width)


class RowLayout:
    """Where each tensor's row lives in a byte record."""

    def __init__(self, specs):
        """specs: (dtype, row_shape) per tensor."""
        parts, offset = [], 0
        several = len(specs) > 1
        for dtype, row_shape in specs:
            numel = 1
            for size in row_shape:
                numel *= size
            size = numel * torch.empty((), dtype=dtype).element_size()
            parts.append(_Part(dtype, tuple(row_shape), offset, size))
            offset += -(-size // ALIGNMENT) * ALIGNMENT if several else size
        self.parts = parts
        self.record_bytes = offset
        self.row_bytes = sum(part.size for part in parts)  # what the rows hold, without padding

    @classmethod
    def of(cls, tensors):
        return cls([(tensor.dtype, tuple(tensor.shape[1:])) for tensor in tensors])

    def describe(self):
        """The dtypes and row shapes, as text every process spells alike."""
        return ";".join("%s%s" % (part.dtype, part.row_shape) for part in self.parts)

    def pack(self, tensors, rows=None, out=None):
        """Rows `rows` (an int64 index; None: all) of each tensor as records:
        an (n, record_bytes) uint8 tensor (`out` when given)."""
        if len(self.parts) == 1:
            data = row_bytes(tensors[0])
            if out is None:
                return data if rows is None else data.index_select(0, rows)
            if rows is None:
                return out.copy_(data)
            return torch.index_select(data, 0, rows, out=out)  # one copy, into out
        count = tensors[0].shape[0] if rows is None else rows.shape[0]
        if out is None:
            out = torch.empty((count, self.record_bytes), dtype=torch.uint8,
                              device=tensors[0].device)
        for tensor, part in zip(tensors, self.parts):
            data = row_bytes(tensor)
            out[:, part.offset:part.offset + part.size].copy_(
                data if rows is None else data.index_select(0, rows))
        return out

    def unpack(self, records, contiguous=False):
        """Each tensor's rows of (n, record_bytes) uint8 records, as views of
        the records in the tensors' dtypes and row shapes (contiguous copies
        when asked, for several tensors; one tensor's view is contiguous)."""
        count = records.shape[0]
        views = []
        for part in self.parts:
            view = records[:, part.offset:part.offset + part.size].view(part.dtype).view(
                (count,) + part.row_shape)
            views.append(view.contiguous() if contiguous else view)
        return views
