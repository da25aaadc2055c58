"""EplbRuntime: the online loop that records load, replans and moves experts.

    runtime = EplbRuntime(num_layers, num_experts, slots_per_rank, window_steps=4,
                          num_windows=4, rebalance_every=8)
    runtime.register_expert_tensors(layer, [w_gate, w_up, w_down])   # (S, ...) each
    # every forward, for every MoE layer:
    recv_hidden, recv_slot, handle = runtime.dispatch(layer, hidden, topk_ids)
    out = runtime.combine(layer, experts(recv_hidden, recv_slot), handle, topk_weights)
    runtime.step()                                                   # after every forward

Load. dispatch() records, in the op's own fused counting, how many of this
rank's choices went to each physical slot. Every window_steps steps those
counts become one window of logical-expert counts per layer (through the
slot -> expert map of the table in force, folded again whenever a table
changes), kept on the device; the last num_windows windows are kept.

Rebalance. Every rebalance_every steps (when no migration is pending and a
window is complete), every rank all-gathers its windows, so the planner sees
per-source-rank statistics (what rank mode routes on). Rank 0 plans every
layer from the windows (oldest first) with the tables in force as
`previous`, max_moves and a fixed table width, aligns each layer to its
previous slots, and broadcasts the tables; every rank checks they are valid
and identical (a hash all_gather). From the next step on, step() migrates
layers_per_step changed layers per call: migrate_experts() moves the layer's
registered tensors, then the layer's PreparedTable is updated in place. Both
happen inside the same step() on every rank, between two forwards, so no
forward sees a half-moved layer, and a CUDA graph captured around the
routing reads the new table on its next replay.

Cost. A step() with nothing due launches a few small device ops (folding
counts, closing a window) and never synchronises with the host. A
rebalance step synchronises (the gather, the plan on the host, the
broadcast); each migration step is one migrate_experts() call per layer.

Failure. Everything is collective and derived from agreed data, so every
rank does the same thing at the same step. If a migration fails,
migrate_experts() raises on every rank and leaves that layer's weights as
they were; the layer keeps its old table, the rest of that rebalance is
dropped, and step() re-raises. The next rebalance plans from the tables in
force.
"""
import dataclasses
import hashlib

import torch
import torch.distributed as dist

import moe_eplb

from .._ops import PreparedTable
from ._dispatch import _check_int, combine, dispatch
from ._migrate import migrate_experts
from .moe import slot_experts


@dataclasses.dataclass
class Rebalance:
    """One rebalance, as every rank sees it (this_rank_* differ by rank).

    step: the step() count at which it was planned; done_step: when its last
    layer switched (None while migrating). layers: the layers whose table
    changes. max_over_mean_before / _after: per layer, the max/mean rank load
    of the last window under the old / new table (analyze(): per-source-rank
    counts routed by the replica rule). experts_moved: per layer, experts
    received over all ranks (migration_plan's `received`); bytes_moved: those
    times the layer's slot bytes (0 for a layer without registered tensors).
    this_rank_received / this_rank_sent: experts this rank received / sent.
    """

    step: int
    layers: list
    max_over_mean_before: list
    max_over_mean_after: list
    experts_moved: list
    bytes_moved: list
    this_rank_received: int = 0
    this_rank_sent: int = 0
    done_step: int = None


class EplbRuntime:
    """Per-layer EPLB tables, load windows and expert tensors of one process
    group, rebalanced online. Every rank of the group constructs it and calls
    every method in the same order with the same layer indices (dispatch()
    and combine() take each rank's own tokens).

    Args:
        num_layers: L MoE layers.
        num_experts: E logical experts per layer.
        slots_per_rank: S physical slots per rank (1 <= S <= E <= W * S).
        group: the process group (default: the world); no shared-expert ranks.
        balance_mode: the replica rule, 0 by rank, 1 by token.
        initial_tables: None (plan for uniform load, every layer alike), an
            (E, F) int32 table for every layer, or (L, E, F) / a list of L
            tables; the same on every rank.
        window_steps: steps per load window.
        num_windows: windows kept for the planner.
        rebalance_every: steps between rebalances.
        layers_per_step: layers migrated per step() after a rebalance.
        ranks_per_node: ranks per node (0: one node), for the planner and the
            migration's source choice.
        max_moves: per layer and rebalance, at most this many slots change
            expert (None: no cap).
        move_cost: >= 0, the predicted max/mean a move must buy to be made
            (the planner's option; 0: balance first).
        device: where tables, counts and expert tensors live (default: the
            current CUDA device for NCCL, else the CPU).

    Attributes: group, rank, world_size, num_layers, num_experts,
    slots_per_rank, balance_mode, device, num_columns (F of every table),
    steps (step() calls so far), rebalances (list of Rebalance).
    """

    def __init__(self, num_layers, num_experts, slots_per_rank, *, group=None, balance_mode=0,
                 initial_tables=None, window_steps, num_windows, rebalance_every,
                 layers_per_step=1, ranks_per_node=0, max_moves=None, move_cost=0.0,
                 device=None):
        if not dist.is_initialized():
            raise ValueError("EplbRuntime(): torch.distributed is not initialized (call "
                             "torch.distributed.init_process_group first)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if self.rank < 0:
            raise ValueError("EplbRuntime(): group: this process is not a member of it")
        for name, value, low in (("num_layers", num_layers, 1), ("num_experts", num_experts, 1),
                                 ("slots_per_rank", slots_per_rank, 1),
                                 ("window_steps", window_steps, 1),
                                 ("num_windows", num_windows, 1),
                                 ("rebalance_every", rebalance_every, 1),
                                 ("layers_per_step", layers_per_step, 1),
                                 ("ranks_per_node", ranks_per_node, 0)):
            _check_int("EplbRuntime", name, value, low)
        if balance_mode not in (0, 1) or isinstance(balance_mode, bool):
            raise ValueError("EplbRuntime(): balance_mode must be 0 or 1, got %r" % (balance_mode,))
        if max_moves is not None:
            _check_int("EplbRuntime", "max_moves", max_moves, 0)
        if isinstance(move_cost, bool) or not isinstance(move_cost, (int, float)) or \
                not move_cost >= 0:
            raise ValueError("EplbRuntime(): move_cost must be a number >= 0, got %r"
                             % (move_cost,))
        num_slots = self.world_size * slots_per_rank
        if not slots_per_rank <= num_experts <= num_slots:
            raise ValueError("EplbRuntime(): expected slots_per_rank <= num_experts <= world_size "
                             "* slots_per_rank, got slots_per_rank=%d, num_experts=%d, "
                             "world_size=%d" % (slots_per_rank, num_experts, self.world_size))
        if ranks_per_node and self.world_size % ranks_per_node:
            raise ValueError("EplbRuntime(): ranks_per_node must divide world_size %d, got %d"
                             % (self.world_size, ranks_per_node))
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.slots_per_rank = slots_per_rank
        self.balance_mode = balance_mode
        self.window_steps = window_steps
        self.num_windows = num_windows
        self.rebalance_every = rebalance_every
        self.layers_per_step = layers_per_step
        self.ranks_per_node = ranks_per_node
        self.max_moves = max_moves
        self.move_cost = float(move_cost)
        self.device = _default_device(group) if device is None else torch.device(device)
        self.steps = 0
        self.rebalances = []

        tables = self._initial_tables(initial_tables)
        self.num_columns = tables.shape[2]
        self._check_same_on_all_ranks(tables, "initial_tables")
        self._tables = [tables[layer].clone() for layer in range(num_layers)]
        self._prepared = [self._prepare(table) for table in self._tables]
        self._tensors = [None] * num_layers
        # Load: per-slot counts since the last fold, folded into the current
        # window's per-expert counts (column E collects unused slots).
        self._slot_counts = torch.zeros((num_layers, num_slots), dtype=torch.int64,
                                        device=self.device)
        self._window = torch.zeros(num_layers * (num_experts + 1), dtype=torch.int64,
                                   device=self.device)
        self._fold_index = torch.empty((num_layers, num_slots), dtype=torch.int64,
                                       device=self.device)
        for layer in range(num_layers):
            self._set_fold_index(layer)
        self._windows = []  # completed windows, oldest first, each (L, E) on the device
        self._pending = []  # (layer, new table) still to migrate
        self._migration_plans = {}

    # ------------------------------------------------------------ public API

    def register_expert_tensors(self, layer, tensors):
        """Registers layer's (S, ...) tensors (weights, scales, ...) that move
        with its experts; they are updated in place, so the caller's tensor
        objects stay the ones its experts read. Same dtypes and shapes on
        every rank; on self.device."""
        self._check_layer("register_expert_tensors", layer)
        if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)) or \
                not tensors:
            raise ValueError("EplbRuntime.register_expert_tensors(): tensors must be a non-empty "
                             "list of (S, ...) tensors, got %s" % type(tensors).__name__)
        for idx, tensor in enumerate(tensors):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() < 1 or \
                    tensor.shape[0] != self.slots_per_rank:
                raise ValueError("EplbRuntime.register_expert_tensors(): tensors[%d] must be "
                                 "(slots_per_rank=%d, ...), got %s" % (
                                     idx, self.slots_per_rank,
                                     tuple(tensor.shape) if isinstance(tensor, torch.Tensor)
                                     else type(tensor).__name__))
            if tensor.device != self.device:
                raise ValueError("EplbRuntime.register_expert_tensors(): tensors[%d] must be on "
                                 "%s, got %s" % (idx, self.device, tensor.device))
        self._tensors[layer] = list(tensors)

    def dispatch(self, layer, hidden, topk_ids):
        """moe_eplb.distributed.dispatch() through layer's table in force,
        recording this rank's choices into the current window."""
        self._check_layer("dispatch", layer)
        return dispatch(hidden, topk_ids, self._prepared[layer],
                        slots_per_rank=self.slots_per_rank, balance_mode=self.balance_mode,
                        group=self.group, load_counts=self._slot_counts[layer])

    def combine(self, layer, expert_out, handle, topk_weights):
        """moe_eplb.distributed.combine() of layer's dispatch()."""
        self._check_layer("combine", layer)
        return combine(expert_out, handle, topk_weights)

    def table(self, layer):
        """The (E, F) int32 table in force for layer (a CPU copy)."""
        self._check_layer("table", layer)
        return self._tables[layer].clone()

    def prepared_table(self, layer):
        """layer's moe_eplb.PreparedTable (on self.device): its routes are
        updated in place when the layer's table changes."""
        self._check_layer("prepared_table", layer)
        return self._prepared[layer]

    def windows(self):
        """This rank's completed windows, oldest first: (L, E) int64 counts of
        this rank's routed choices per logical expert."""
        return list(self._windows)

    @property
    def migrating(self):
        """Whether layers of the last rebalance are still waiting to move."""
        return bool(self._pending)

    def step(self):
        """Called once after every forward, on every rank: closes a window
        every window_steps steps, migrates the next layers of a pending
        rebalance, and replans every rebalance_every steps (see the module
        docstring). Returns the Rebalance planned at this step, or None.
        Raises what migrate_experts() raised if a migration fails (the
        layer keeps its table and weights; the rest of that rebalance is
        dropped)."""
        self.steps += 1
        if self.steps % self.window_steps == 0:
            self._close_window()
        if self._pending:
            self._migrate_next_layers()
        if self.steps % self.rebalance_every == 0 and not self._pending and self._windows:
            return self._rebalance()
        return None

    # ------------------------------------------------------------ tables

    def _initial_tables(self, initial_tables):
        layers, experts = self.num_layers, self.num_experts
        width = min(self.world_size, self.world_size * self.slots_per_rank - experts + 1) + 1
        if initial_tables is None:
            table = moe_eplb.plan(torch.ones(experts), self.world_size, self.slots_per_rank,
                                  balance_mode=self.balance_mode,
                                  ranks_per_node=self.ranks_per_node, num_columns=width)
            return table.unsqueeze(0).repeat(layers, 1, 1)
        if isinstance(initial_tables, (list, tuple)):
            if len(initial_tables) != layers or not all(
                    isinstance(t, torch.Tensor) and t.dim() == 2 for t in initial_tables):
                raise ValueError("EplbRuntime(): initial_tables must be a list of %d (E, F) "
                                 "tensors" % layers)
            if len({t.shape[1] for t in initial_tables}) > 1:
                width_given = max(t.shape[1] for t in initial_tables)
                initial_tables = [_pad_columns(t.cpu(), width_given) for t in initial_tables]
            initial_tables = torch.stack([t.cpu() for t in initial_tables])
        if not isinstance(initial_tables, torch.Tensor) or initial_tables.dim() not in (2, 3):
            raise ValueError("EplbRuntime(): initial_tables must be None, an (E, F) tensor, an "
                             "(L, E, F) tensor or a list of L (E, F) tensors, got %s"
                             % type(initial_tables).__name__)
        tables = initial_tables.detach().cpu()
        if tables.dim() == 2:
            tables = tables.unsqueeze(0).repeat(layers, 1, 1)
        if tables.dtype != torch.int32 or tables.shape[0] != layers or tables.shape[1] != experts:
            raise ValueError("EplbRuntime(): initial_tables must be int32 (L, E, F) with L = %d "
                             "and E = %d, got %s of shape %s"
                             % (layers, experts, tables.dtype, tuple(tables.shape)))
        tables = _pad_columns(tables, max(width, tables.shape[2]))
        for layer in range(layers):
            _validate(tables[layer], self.world_size, self.slots_per_rank,
                      "initial_tables[%d]" % layer)
        return tables.contiguous()

    def _prepare(self, table):
        # Validated on the host; the routes live on self.device.
        return PreparedTable(table, self.rank, self.world_size, balance_mode=self.balance_mode,
                             num_physical_experts=self.world_size * self.slots_per_rank,
                             device=self.device)

    def _check_same_on_all_ranks(self, tables, what):
        """Raises on every rank unless every rank holds the same tables."""
        digest = hashlib.blake2b(tables.contiguous().numpy().tobytes(), digest_size=8).digest()
        mine = torch.tensor([int.from_bytes(digest, "little", signed=True)], dtype=torch.int64,
                            device=self.device)
        hashes = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(hashes, mine, group=self.group)
        differing = [r for r, h in enumerate(hashes) if h.item() != hashes[0].item()]
        if differing:
            raise ValueError("EplbRuntime: %s differ between ranks: ranks %s hold other tables "
                             "than rank 0" % (what, differing))

    def _set_fold_index(self, layer):
        experts = torch.tensor(slot_experts(self._tables[layer], self.world_size *
                                            self.slots_per_rank), dtype=torch.int64)
        experts[experts < 0] = self.num_experts
        self._fold_index[layer].copy_(experts + layer * (self.num_experts + 1))

    # ------------------------------------------------------------ load

    def _fold(self):
        """Moves the per-slot counts into the current window's per-expert
        counts (device ops only)."""
        self._window.index_add_(0, self._fold_index.view(-1), self._slot_counts.view(-1))
        self._slot_counts.zero_()

    def _close_window(self):
        self._fold()
        window = self._window.view(self.num_layers, self.num_experts + 1)[:, :-1].clone()
        self._windows = (self._windows + [window])[-self.num_windows:]
        self._window.zero_()

    # ------------------------------------------------------------ rebalance

    def _rebalance(self):
        world_size, num_slots = self.world_size, self.world_size * self.slots_per_rank
        mine = torch.stack(self._windows)  # (num_windows, L, E)
        gathered = [torch.empty_like(mine) for _ in range(world_size)]
        dist.all_gather(gathered, mine, group=self.group)
        # windows[w] is (L, W, E): per layer, per source rank, per expert.
        windows = torch.stack(gathered, dim=2).cpu()
        old = torch.stack(self._tables)
        new = torch.empty_like(old)
        error = None
        if self.rank == 0:
            try:
                new = self._plan(list(windows.unbind(0)), old)
            except Exception as caught:  # told to every rank below, then re-raised
                error = caught
        status = torch.tensor([0 if error is None else 1], dtype=torch.int64, device=self.device)
        dist.broadcast(status, 0, group=self.group)
        if error is not None:
            raise error
        if status.item():
            raise RuntimeError("EplbRuntime.step(): planning failed on rank 0 (its error says "
                               "why); the tables in force stay")
        on_device = new.to(self.device)
        dist.broadcast(on_device, 0, group=self.group)
        new = on_device.cpu()
        for layer in range(self.num_layers):
            _validate(new[layer], world_size, self.slots_per_rank, "the planned table of layer %d"
                      % layer)
        self._check_same_on_all_ranks(new, "the broadcast tables")

        last = windows[-1]
        record = Rebalance(step=self.steps, layers=[], max_over_mean_before=[],
                           max_over_mean_after=[], experts_moved=[], bytes_moved=[])
        for layer in range(self.num_layers):
            options = dict(balance_mode=self.balance_mode, ranks_per_node=self.ranks_per_node)
            record.max_over_mean_before.append(moe_eplb.analyze(
                old[layer], last[layer], world_size, self.slots_per_rank,
                **options)["max_over_mean"])
            record.max_over_mean_after.append(moe_eplb.analyze(
                new[layer], last[layer], world_size, self.slots_per_rank,
                **options)["max_over_mean"])
            plan = moe_eplb.migration_plan(old[layer], new[layer], world_size,
                                           self.slots_per_rank, ranks_per_node=self.ranks_per_node,
                                           expert_bytes=self._slot_bytes(layer))
            record.experts_moved.append(plan.received)
            record.bytes_moved.append(plan.bytes_received)
            if slot_experts(old[layer], num_slots) != slot_experts(new[layer], num_slots):
                record.layers.append(layer)
                self._pending.append((layer, new[layer].clone()))
        if not self._pending:
            record.done_step = self.steps
        self.rebalances.append(record)
        return record

    def _plan(self, windows, old):
        """Rank 0: new (L, E, F) tables from the windows, aligned to `old`."""
        new = moe_eplb.plan(windows, self.world_size, self.slots_per_rank,
                            balance_mode=self.balance_mode, ranks_per_node=self.ranks_per_node,
                            num_columns=self.num_columns, previous=old,
                            max_moves=self.max_moves, move_cost=self.move_cost)
        new = new.reshape(self.num_layers, self.num_experts, self.num_columns)
        return torch.stack([
            moe_eplb.align_to_previous(new[layer], old[layer], self.world_size,
                                       self.slots_per_rank)
            for layer in range(self.num_layers)])

    def _migrate_next_layers(self):
        batch, self._pending = (self._pending[:self.layers_per_step],
                                self._pending[self.layers_per_step:])
        record = self.rebalances[-1]
        for layer, new in batch:
            try:
                if self._tensors[layer] is not None:
                    stats = migrate_experts(self._tensors[layer], self._tables[layer], new,
                                            slots_per_rank=self.slots_per_rank, group=self.group,
                                            ranks_per_node=self.ranks_per_node)
                    record.this_rank_received += stats.received
                    record.this_rank_sent += stats.sent
            except Exception:
                self._pending = []  # the layer keeps its table and weights; drop the rest
                raise
            # Counts so far were routed by the old table: fold them under it.
            self._fold()
            self._prepared[layer].update(new)  # validated on the host, copied in place
            self._tables[layer] = new
            self._set_fold_index(layer)
        if not self._pending:
            record.done_step = self.steps

    def _slot_bytes(self, layer):
        tensors = self._tensors[layer] or []
        return sum((t.numel() // self.slots_per_rank) * t.element_size() for t in tensors)

    def _check_layer(self, method, layer):
        if isinstance(layer, bool) or not isinstance(layer, int) or \
                not 0 <= layer < self.num_layers:
            raise ValueError("EplbRuntime.%s(): layer must be an int in 0..%d, got %r"
                             % (method, self.num_layers - 1, layer))


def _default_device(group):
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _pad_columns(tables, width):
    if tables.shape[-1] >= width:
        return tables
    pad = torch.full(tables.shape[:-1] + (width - tables.shape[-1],), -1, dtype=tables.dtype)
    return torch.cat([tables, pad], dim=-1)


def _validate(table, world_size, slots_per_rank, what):
    """ValueError naming `what` unless the table is valid for the slots."""
    try:
        torch.ops.moe_eplb.prepare_table(table, 0, world_size,
                                         num_physical_experts=world_size * slots_per_rank)
    except (ValueError, RuntimeError) as error:
        raise ValueError("EplbRuntime: %s is not a valid table for world_size %d and %d slots: %s"
                         % (what, world_size, world_size * slots_per_rank, error)) from error
