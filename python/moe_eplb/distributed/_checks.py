"""Argument checks, fingerprints and agreement for moe_eplb.distributed.

A collective entry point must never raise on one rank while its peers wait:
they would sit in the next collective until the group's timeout. So the
checks here do not raise before the ranks have communicated. Each entry point
runs its local checks inside an Agreement, which keeps this rank's verdict
(the first bad argument) together with the values every rank must pass alike;
the record travels in a collective the entry point makes anyway (dispatch's
header, combine's header, the runtime's gathers), and resolve() then raises
on every rank alike, or on none:

    agreement = Agreement("dispatch", ("hidden", "topk_ids", "table"))
    with agreement.checking():          # a BadArgument here becomes the verdict
        check_tensor("dispatch", "hidden", hidden, 2, "(T, H)")
    agreement.agree("hidden size", hidden.shape[1])
    records = exchange(agreement.record())   # one list of ints per rank
    agreement.resolve(records)          # raises on every rank, naming rank and argument

Only what cannot be exchanged raises at once: no process group, or a process
outside the group (there is no one to tell).
"""
import contextlib
import hashlib
import zlib

import torch
import torch.distributed as dist

from .._ops import int32_table, table_fingerprint

__all__ = ["Agreement", "BadArgument", "check_device", "check_int", "check_tensor",
           "communication_device", "dtype_code", "fail", "group_ranks", "int32_table_argument",
           "is_int", "layout_fingerprint", "normal_tensors", "table_fingerprint",
           "text_fingerprint", "writable_problem"]


class BadArgument(ValueError):
    """A bad argument of an operation, named as the caller named it."""

    def __init__(self, operation, argument, message):
        super().__init__("%s(): %s" % (operation, message))
        self.argument = argument


def fail(operation, argument, message, *values):
    """Raises BadArgument; `message` names the argument for the user."""
    raise BadArgument(operation, argument, message % values if values else message)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(operation, name, value, low, high=None):
    """An int (not a bool) in low..high, or >= low when high is None."""
    if high is None:
        if not (is_int(value) and value >= low):
            fail(operation, name, "%s must be an integer >= %d, got %r", name, low, value)
    elif not (is_int(value) and low <= value <= high):
        fail(operation, name, "%s must be an integer in %d..%d, got %r", name, low, high, value)


def check_tensor(operation, name, value, dims, shape_text):
    if not isinstance(value, torch.Tensor):
        fail(operation, name, "%s must be a tensor %s, got %s", name, shape_text,
             type(value).__name__)
    if value.dim() != dims:
        fail(operation, name, "%s must be %s, got shape %s", name, shape_text, tuple(value.shape))


def check_device(operation, name, value, device, whose="hidden's device"):
    if value.device != device:
        fail(operation, name, "%s must be on %s (%s), got %s", name, device, whose, value.device)


def writable_problem(tensor):
    """Why an in-place write into `tensor` would fail, or None.

    Inference tensors are written inside torch.inference_mode() by the
    callers of this, so they are fine; what remains is memory that several
    elements share (expanded or overlapping views), which no write can fix.
    """
    if torch._debug_has_internal_overlap(tensor) != 0:
        return ("it is an expanded or self-overlapping view (strides %s): several elements "
                "share memory; pass a tensor that owns each element (e.g. .clone())"
                % (tuple(tensor.stride()),))
    return None


def int32_table_argument(operation, name, table):
    """moe_eplb's one table rule (_ops.int32_table: int64 tables whose values
    fit become int32) for an argument: a value outside int32 is a BadArgument."""
    try:
        return int32_table("%s()" % operation, name, table)
    except ValueError as error:
        raise BadArgument(operation, name, str(error).split(": ", 1)[-1]) from error


@contextlib.contextmanager
def normal_tensors():
    """Runs a block outside torch.inference_mode() and without autograd, so
    that every tensor it makes is a normal one. Collectives need that for
    their outputs: gloo writes them from its own threads, where inference
    mode is off and writing an inference tensor raises ("Inplace update to
    inference tensor outside InferenceMode"). Writes into the caller's
    tensors go inside torch.inference_mode() instead (allowed for any tensor)."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def group_ranks(operation, group):
    """(group rank, group size); raises at once (there is no one to tell)
    without a process group or when this process is not a member."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("%s(): torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group() first" % operation)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("%s(): group: this process (global rank %d) is not a member"
                         % (operation, dist.get_rank()))
    return rank, dist.get_world_size(group)


def communication_device(group):
    """Where the group's collectives run: the current CUDA device for NCCL,
    else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def dtype_code(dtype):
    """A small int naming a dtype, the same in every process."""
    return zlib.crc32(str(dtype).encode()) & 0x7FFFFFFF


def text_fingerprint(text):
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little",
                          signed=True)


def layout_fingerprint(tensors):
    """An int naming the dtypes and per-row shapes of (N, ...) tensors."""
    return text_fingerprint(";".join("%s%s" % (t.dtype, tuple(t.shape[1:])) for t in tensors))


class Agreement:
    """This rank's verdict on its arguments and the values every rank must
    agree on, as one int64 record: [verdict, value, value, ...].

    The verdict is 0 when every check passed, else 1 + the index in
    `arguments` of the first bad one ("arguments" is appended: a check that
    raised something unexpected). Values are ints, or one-element int64
    tensors (a table's fingerprint kept on the device), written by write().
    """

    def __init__(self, operation, arguments):
        self.operation = operation
        self.arguments = tuple(arguments) + ("arguments",)
        self.error = None
        self.names = []
        self.values = []
        self.shown = []

    @property
    def ok(self):
        return self.error is None

    @contextlib.contextmanager
    def checking(self):
        """Runs checks; the first BadArgument (or unexpected error) becomes
        the verdict instead of propagating. Checks after a failure are skipped
        by the caller testing `ok`."""
        try:
            yield
        except BadArgument as error:
            if error.argument not in self.arguments:
                raise
            self.error = error
        except Exception as error:  # told to every rank like a bad argument
            self.error = BadArgument(self.operation, "arguments", "checking the arguments raised "
                                     "%s: %s" % (type(error).__name__, error))
            self.error.__cause__ = error

    def agree(self, name, value, shown=True):
        """A value every rank must pass alike. shown=False for fingerprints
        (the message lists the ranks that differ rather than the values)."""
        self.names.append(name)
        self.values.append(value)
        self.shown.append(shown)

    @property
    def verdict(self):
        return 0 if self.error is None else 1 + self.arguments.index(self.error.argument)

    @property
    def width(self):
        return 1 + len(self.values)

    def write(self, out):
        """Writes the record into `out`, an int64 tensor whose last dimension
        is `width` (every row alike); device values are copied on the device."""
        record = [self.verdict] + [0 if isinstance(value, torch.Tensor) else int(value)
                                   for value in self.values]
        out.copy_(torch.tensor(record, dtype=torch.int64).to(out.device).expand_as(out))
        for column, value in enumerate(self.values, 1):
            if isinstance(value, torch.Tensor):  # kept on the device: copied there
                out[..., column] = value.reshape(()).to(out.device)
        return out

    def record(self, device):
        return self.write(torch.empty(self.width, dtype=torch.int64, device=device))

    def resolve(self, records, what_happened="no rank exchanged anything"):
        """Raises on every rank alike unless every record is [0, same values].

        records: one list of ints per rank (rank order), each `width` long.
        This rank's own bad argument re-raises its error; the other ranks
        raise ValueError naming the rank(s) and the argument.
        """
        failed = [(rank, record[0]) for rank, record in enumerate(records) if record[0] != 0]
        if failed:
            if self.error is not None:  # as a plain ValueError, like every other rank's
                raise ValueError(str(self.error)) from self.error.__cause__
            first_rank, verdict = failed[0]
            others = [rank for rank, _ in failed[1:]]
            raise ValueError("%s(): rank %d rejected its argument %s (its error says why)%s; %s"
                             % (self.operation, first_rank, self.arguments[verdict - 1],
                                ", as did ranks %s" % others if others else "", what_happened))
        for index, (name, shown) in enumerate(zip(self.names, self.shown), 1):
            values = [record[index] for record in records]
            if len(set(values)) == 1:
                continue
            if shown:
                detail = "by rank: %s" % values
            else:
                detail = "ranks %s differ from rank 0" % [
                    rank for rank, value in enumerate(values) if value != values[0]]
            raise ValueError("%s(): the ranks disagree on %s (%s); every rank must pass the "
                             "same; %s" % (self.operation, name, detail, what_happened))

    def device_status(self, records):
        """Device-side resolve() for a (W, width) int64 tensor of records:
        a one-element int64 tensor, nonzero when resolve() would raise. No
        host synchronisation."""
        bad = (records[:, 0] != 0).any()
        if records.shape[1] > 1:
            bad = bad | (records[:, 1:] != records[:1, 1:]).any()
        return bad.to(torch.int64).reshape(1)
