"""EplbRuntime: the online loop that records load, replans and moves experts.

    runtime = EplbRuntime(num_layers, num_experts, slots_per_rank)   # vLLM-like defaults
    runtime.register_expert_tensors(layer, [w13, w2, w13_scale])    # (S, ...) each
    # every forward, for every MoE layer, with this library's dispatcher:
    recv_hidden, recv_slot, handle = runtime.dispatch(layer, hidden, topk_ids)
    out = runtime.combine(layer, experts(recv_hidden, recv_slot), handle, topk_weights)
    # ... or with your own (DeepEP, an engine's all-to-all): physical ids, load recorded
    physical_ids = runtime.route(layer, topk_ids)
    runtime.step()                                                   # after every forward

Load. dispatch() and route() record, in the op's own fused counting, how
many of this rank's choices went to each physical slot. Every window_steps
steps those counts become one window of logical-expert counts per layer
(through the slot -> expert map of the table in force, folded again whenever
a table changes), kept on the device; the last num_windows windows are kept.

Rebalance. Every rebalance_every steps (when no migration is pending and a
window is complete), every rank all-gathers its windows, so the planner sees
per-source-rank statistics (what rank mode routes on). Rank 0 plans every
layer from the windows (oldest first) with the tables in force as
`previous`, max_moves, move_cost and a fixed table width, and broadcasts the
tables; every rank checks them and that they are the same everywhere. A
layer changes when its routing changes (moe_eplb.table_diff(): a row's
count or replicas, in order; a reorder counts, since the order is the
routing). From the next step on, step() switches layers_per_step changed
layers per call: migrate_experts() moves the layer's registered tensors (when
any slot's expert changes), then the layer's PreparedTable is updated in
place. Both happen inside the same step() on every rank, between two
forwards, so no forward sees a half-moved layer, and a CUDA graph captured
around the routing reads the new table on its next replay.

Weights. Every layer whose table a rebalance would change must have its
expert tensors registered (register_expert_tensors(), the same dtypes and
per-slot shapes on every rank): the runtime moves them with the table.
Otherwise that rebalance is refused on every rank (ValueError naming the
layers) and no table changes: a table that switched without its weights
would send tokens to slots holding other experts. An engine that owns its
weights registers them (e.g. vLLM's w13_weight, w2_weight and their scales,
each (local experts, ...)); they are updated in place.

Agreement. The constructor checks that every rank passed the same
configuration and initial tables, and load_state_dict() that every rank
loads the same state, in one exchange each; a bad argument or a difference
raises ValueError on every rank, naming the value and the ranks. Each
rebalance checks that every rank has taken the same number of steps and
registered the same tensors.

Inference mode. Every method works inside or outside torch.inference_mode(),
with tensors made in either: buffers the backends write are made as normal
tensors, and writes into the caller's tensors run inside inference mode.

Cost. A step() with nothing due launches a few small device ops (folding
counts, closing a window) and never synchronises with the host. A rebalance
step synchronises (the gather, the plan on the host, the broadcast); each
migration step is one migrate_experts() call per layer.

Failure. Everything is collective and derived from agreed data, so every
rank does the same thing at the same step. If a migration fails,
migrate_experts() raises on every rank and leaves that layer's weights as
they were; the layer keeps its old table, the rest of that rebalance is
dropped (Rebalance.dropped_layers), and step() re-raises. The next
rebalance plans from the tables in force.

Restart. state_dict() holds the tables in force, the windows, the counters
and the layers still to migrate; load_state_dict() on a new runtime (same
configuration) restores them, checked on every rank. The registered tensors
must then hold the restored tables' placement (load the weights after
load_state_dict(), e.g. ExpertParallelMoE.load_dense_weights()).
"""
import dataclasses
import struct

import torch
import torch.distributed as dist

import moe_eplb

from .._ops import PreparedTable
from ._checks import (Agreement, check_int, communication_device, fail, int32_table_argument,
                      group_ranks, is_int, layout_fingerprint, normal_tensors, table_fingerprint,
                      text_fingerprint, writable_problem)
from ._dispatch import combine, dispatch
from ._migrate import migrate_experts

_STATE_FORMAT = "moe_eplb.EplbRuntime/1"
_CONFIG = ("num_layers", "num_experts", "slots_per_rank", "balance_mode", "window_steps",
           "num_windows", "rebalance_every", "layers_per_step", "ranks_per_node", "max_moves",
           "move_cost")


@dataclasses.dataclass
class Rebalance:
    """One rebalance, as every rank sees it (this_rank_* differ by rank).

    step: the step() count at which it was planned; done_step: when its last
    layer switched (None while migrating). layers: the layers whose table
    changes (their routing: moe_eplb.table_diff().rows_changed > 0);
    installed_layers: those switched so far (weights and table, every rank);
    dropped_layers: those a failed migration dropped (they keep their old
    table). max_over_mean_before / _after: per layer, the max/mean rank load
    of the last window under the table in force / the table installed
    (analyze(): per-source-rank counts routed by the replica rule; equal for
    a layer that does not change). experts_moved: per layer, experts received
    over all ranks (migration_plan's `received`, 0 for a reorder);
    bytes_moved: those times the layer's slot bytes. this_rank_received /
    this_rank_sent: experts this rank received / sent.
    """

    step: int
    layers: list
    max_over_mean_before: list
    max_over_mean_after: list
    experts_moved: list
    bytes_moved: list
    installed_layers: list = dataclasses.field(default_factory=list)
    dropped_layers: list = dataclasses.field(default_factory=list)
    this_rank_received: int = 0
    this_rank_sent: int = 0
    done_step: int = None


class EplbRuntime:
    """Per-layer EPLB tables, load windows and expert tensors of one process
    group, rebalanced online. Every rank of the group constructs it and calls
    every method in the same order with the same layer indices (dispatch(),
    combine() and route() take each rank's own tokens).

    Args:
        num_layers: L MoE layers.
        num_experts: E logical experts per layer.
        slots_per_rank: S physical slots per rank (1 <= S <= E <= W * S).
        group: the process group (default: the world); no shared-expert ranks.
        balance_mode: the replica rule (update_expert()'s), 0 by rank, 1 by
            token, 2 vLLM's hash of the token index; the planner plans for it.
        initial_tables: None (plan for uniform load, every layer alike), an
            (E, F) table for every layer, or (L, E, F) / a list of L tables;
            int32 (or int64 with int32 values), the same on every rank.
        window_steps: steps per load window (default 250).
        num_windows: windows kept for the planner (default 4: the last 1000
            steps, vLLM's default window, in four parts so that the planner
            can tell what persists from what is noise).
        rebalance_every: steps between rebalances (default 3000, vLLM's
            default step interval).
        layers_per_step: layers switched per step() after a rebalance.
        ranks_per_node: ranks per node (0: one node), for the planner and the
            migration's source choice.
        max_moves: per layer and rebalance, at most this many slots change
            (None: no cap; see moe_eplb.plan()).
        move_cost: >= 0, the predicted max/mean a move must buy to be made
            (the planner's option; 0: balance first).
        device: where tables, counts and expert tensors live: the group's
            communication device (the current CUDA device for NCCL, else the
            CPU), which is the default.

    Attributes: group, rank, world_size, num_layers, num_experts,
    slots_per_rank, balance_mode, window_steps, num_windows, rebalance_every,
    layers_per_step, ranks_per_node, max_moves, move_cost, device,
    num_columns (F of every table), steps (step() calls so far), rebalances
    (list of Rebalance).
    """

    def __init__(self, num_layers, num_experts, slots_per_rank, *, group=None, balance_mode=0,
                 initial_tables=None, window_steps=250, num_windows=4, rebalance_every=3000,
                 layers_per_step=1, ranks_per_node=0, max_moves=None, move_cost=0.0,
                 device=None):
        self.group = group
        self.rank, self.world_size = group_ranks("EplbRuntime", group)
        config = dict(num_layers=num_layers, num_experts=num_experts,
                      slots_per_rank=slots_per_rank, balance_mode=balance_mode,
                      window_steps=window_steps, num_windows=num_windows,
                      rebalance_every=rebalance_every, layers_per_step=layers_per_step,
                      ranks_per_node=ranks_per_node, max_moves=max_moves, move_cost=move_cost)
        agreement = Agreement("EplbRuntime", _CONFIG + ("device", "initial_tables"))
        tables = None
        with normal_tensors():
            with agreement.checking():
                self.device = self._check_config(config, device)
                tables = self._initial_tables(initial_tables, config)
            for name in _CONFIG:
                agreement.agree(name, _config_value(config[name]) if agreement.ok else 0,
                                shown=name != "move_cost")
            agreement.agree("initial_tables (their content)",
                            _tables_fingerprint(tables) if agreement.ok else 0, shown=False)
            _exchange_and_resolve(agreement, group, self.world_size,
                                  "no runtime was made on any rank")
            self.__dict__.update(config)
            self.move_cost = float(move_cost)
            self.num_columns = tables.shape[2]
            self.steps = 0
            self.rebalances = []
            self._tables = [tables[layer].clone() for layer in range(num_layers)]
            self._prepared = [self._prepare(table) for table in self._tables]
            self._tensors = [None] * num_layers
            num_slots = self.world_size * slots_per_rank
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
            self._pending = []  # (layer, new table) still to switch

    # ------------------------------------------------------------ public API

    def register_expert_tensors(self, layer, tensors):
        """Registers layer's (S, ...) tensors (weights, scales, ...) that move
        with its experts; they are updated in place, so the caller's tensor
        objects stay the ones its experts read. Same dtypes and shapes on
        every rank (checked at each rebalance); on self.device; each must own
        its elements (no expanded view). Replaces any earlier registration."""
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
            problem = writable_problem(tensor)
            if problem is not None:
                raise ValueError("EplbRuntime.register_expert_tensors(): tensors[%d] cannot be "
                                 "updated in place: %s" % (idx, problem))
        self._tensors[layer] = list(tensors)

    def dispatch(self, layer, hidden, topk_ids, **options):
        """moe_eplb.distributed.dispatch() through layer's table in force,
        recording this rank's choices into the current window. options:
        max_tokens_per_rank, checked (see dispatch())."""
        self._check_layer("dispatch", layer)
        return dispatch(hidden, topk_ids, self._prepared[layer],
                        slots_per_rank=self.slots_per_rank, balance_mode=self.balance_mode,
                        group=self.group, load_counts=self._slot_counts[layer], **options)

    def combine(self, layer, expert_out, handle, topk_weights):
        """moe_eplb.distributed.combine() of layer's dispatch()."""
        self._check_layer("combine", layer)
        return combine(expert_out, handle, topk_weights)

    def route(self, layer, topk_ids):
        """(T, K) physical slot ids of this rank's choices through layer's
        table in force, with the load recorded, for engines that bring their
        own dispatcher (DeepEP, an all-to-all of their own). The library op
        and nothing else: no communication, no host synchronisation, safe
        inside CUDA graphs (a replay reads the table in force). A bad id
        raises IndexError on the CPU; on CUDA it becomes -1 and is counted
        (moe_eplb.read_error_counter()). Every rank must use the slots it is
        given: the tables are the same everywhere."""
        self._check_layer("route", layer)
        return self._prepared[layer].map(topk_ids, load_counts=self._slot_counts[layer])

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
        """Whether layers of the last rebalance are still waiting to switch."""
        return bool(self._pending)

    def step(self):
        """Called once after every forward, on every rank: closes a window
        every window_steps steps, switches the next layers of a pending
        rebalance, and replans every rebalance_every steps (see the module
        docstring). Returns the Rebalance planned at this step, or None.
        Raises what migrate_experts() raised if a migration fails (the layer
        keeps its table and weights; the rest of that rebalance is dropped),
        and ValueError on every rank when a rebalance is refused."""
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("EplbRuntime.step(): called while a CUDA graph is being captured; "
                               "capture the forward only and call step() between replays")
        with normal_tensors():
            self.steps += 1
            if self.steps % self.window_steps == 0:
                self._close_window()
            if self._pending:
                self._switch_next_layers()
            if self.steps % self.rebalance_every == 0 and not self._pending and self._windows:
                return self._rebalance()
        return None

    def state_dict(self):
        """What a restart needs, as a dict of plain values and CPU tensors
        (torch.save-able), this rank's: the configuration, steps, the tables
        in force, the current window's counts so far, the completed windows,
        the layers still to switch and the rebalance history."""
        with normal_tensors():
            self._fold()
            return dict(
                format=_STATE_FORMAT, world_size=self.world_size, rank=self.rank,
                config={name: getattr(self, name) for name in _CONFIG},
                num_columns=self.num_columns, steps=self.steps,
                tables=torch.stack(self._tables).clone(),
                window=self._window.view(self.num_layers, self.num_experts + 1)[:, :-1].cpu(),
                windows=[window.cpu() for window in self._windows],
                pending_layers=[layer for layer, _ in self._pending],
                pending_tables=[table.clone() for _, table in self._pending],
                rebalances=[dataclasses.asdict(record) for record in self.rebalances])

    def load_state_dict(self, state):
        """Restores a state_dict() of a runtime with the same configuration
        and group size (each rank its own). Collective: every rank checks its
        state, then all agree on steps, tables and pending layers; a bad or
        differing state raises ValueError on every rank and changes nothing.
        Afterwards the registered expert tensors must hold the restored
        tables' placement."""
        agreement = Agreement("EplbRuntime.load_state_dict", ("state",))
        with normal_tensors():
            with agreement.checking():
                restored = self._check_state(state)
            agreement.agree("steps", state["steps"] if agreement.ok else -1)
            agreement.agree("the tables in force", _tables_fingerprint(restored["tables"])
                            if agreement.ok else 0, shown=False)
            agreement.agree("the layers still to switch", text_fingerprint(
                repr(restored["pending"])) if agreement.ok else 0, shown=False)
            _exchange_and_resolve(agreement, self.group, self.world_size,
                                  "no rank changed its runtime")
            self.steps = state["steps"]
            for layer in range(self.num_layers):
                self._install(layer, restored["tables"][layer])
            self._window.zero_()
            self._window.view(self.num_layers, self.num_experts + 1)[:, :-1].copy_(
                restored["window"])
            self._slot_counts.zero_()
            self._windows = [window.to(self.device) for window in restored["windows"]]
            self._pending = restored["pending"]
            self.rebalances = [Rebalance(**record) for record in state["rebalances"]]

    # ------------------------------------------------------------ configuration

    def _check_config(self, config, device):
        """The device; raises BadArgument naming the first bad value."""
        for name in ("num_layers", "num_experts", "slots_per_rank", "window_steps",
                     "num_windows", "rebalance_every", "layers_per_step"):
            check_int("EplbRuntime", name, config[name], 1)
        check_int("EplbRuntime", "balance_mode", config["balance_mode"], 0, 2)
        check_int("EplbRuntime", "ranks_per_node", config["ranks_per_node"], 0)
        if config["ranks_per_node"] and self.world_size % config["ranks_per_node"]:
            fail("EplbRuntime", "ranks_per_node", "ranks_per_node must divide world_size %d, "
                 "got %d", self.world_size, config["ranks_per_node"])
        if config["max_moves"] is not None:
            check_int("EplbRuntime", "max_moves", config["max_moves"], 0)
        move_cost = config["move_cost"]
        if isinstance(move_cost, bool) or not isinstance(move_cost, (int, float)) or \
                not move_cost >= 0 or move_cost == float("inf"):
            fail("EplbRuntime", "move_cost", "move_cost must be a finite number >= 0, got %r",
                 move_cost)
        num_experts, slots_per_rank = config["num_experts"], config["slots_per_rank"]
        if not slots_per_rank <= num_experts <= self.world_size * slots_per_rank:
            fail("EplbRuntime", "num_experts", "expected slots_per_rank <= num_experts <= "
                 "world_size * slots_per_rank, got slots_per_rank=%d, num_experts=%d, "
                 "world_size=%d", slots_per_rank, num_experts, self.world_size)
        expected = communication_device(self.group)
        if device is None:
            return expected
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            fail("EplbRuntime", "device", "device: %s", error)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device != expected:
            fail("EplbRuntime", "device", "device must be %s, where this group's backend "
                 "communicates, got %s", expected, device)
        return device

    def _initial_tables(self, initial_tables, config):
        """(L, E, F) int32 CPU tables, validated; F at least the widest plan."""
        layers, experts = config["num_layers"], config["num_experts"]
        slots_per_rank = config["slots_per_rank"]
        width = moe_eplb.widest_plan_columns(experts, self.world_size, slots_per_rank)
        if initial_tables is None:
            table = moe_eplb.plan(torch.ones(experts), self.world_size, slots_per_rank,
                                  balance_mode=config["balance_mode"],
                                  ranks_per_node=config["ranks_per_node"],
                                  num_columns=width).table
            return table.unsqueeze(0).repeat(layers, 1, 1)
        if isinstance(initial_tables, (list, tuple)):
            if len(initial_tables) != layers or not all(
                    isinstance(t, torch.Tensor) and t.dim() == 2 for t in initial_tables):
                fail("EplbRuntime", "initial_tables", "initial_tables must be a list of %d "
                     "(E, F) tensors", layers)
            width_given = max(t.shape[1] for t in initial_tables)
            initial_tables = torch.stack([_pad_columns(t.detach().cpu(), width_given)
                                          for t in initial_tables])
        if not isinstance(initial_tables, torch.Tensor) or initial_tables.dim() not in (2, 3):
            fail("EplbRuntime", "initial_tables", "initial_tables must be None, an (E, F) tensor, "
                 "an (L, E, F) tensor or a list of L (E, F) tensors, got %s",
                 type(initial_tables).__name__)
        tables = initial_tables.detach().cpu()
        if tables.dim() == 2:
            tables = tables.unsqueeze(0).repeat(layers, 1, 1)
        if tables.dtype not in (torch.int32, torch.int64) or tables.shape[0] != layers or \
                tables.shape[1] != experts:
            fail("EplbRuntime", "initial_tables", "initial_tables must be int32 (or int64) "
                 "(L, E, F) with L = %d and E = %d, got %s of shape %s", layers, experts,
                 tables.dtype, tuple(tables.shape))
        tables = _pad_columns(int32_table_argument("EplbRuntime", "initial_tables", tables),
                              max(width, tables.shape[2]))
        for layer in range(layers):
            problem = _table_problem(tables[layer], self.world_size, slots_per_rank)
            if problem:
                fail("EplbRuntime", "initial_tables", "initial_tables[%d] is not a valid table "
                     "for world_size %d and %d slots: %s", layer, self.world_size,
                     self.world_size * slots_per_rank, problem)
        return tables.contiguous()

    def _prepare(self, table):
        # Validated on the host; the routes live on self.device.
        return PreparedTable(table, self.rank, self.world_size, balance_mode=self.balance_mode,
                             num_physical_experts=self.world_size * self.slots_per_rank,
                             device=self.device)

    def _set_fold_index(self, layer):
        experts = moe_eplb.slot_experts(self._tables[layer], self.world_size,
                                        self.slots_per_rank).clone()
        experts[experts < 0] = self.num_experts
        self._fold_index[layer].copy_(experts + layer * (self.num_experts + 1))

    def _install(self, layer, table):
        """Switches layer's table (its weights already match): folds the
        counts routed by the old one first."""
        self._fold()
        self._prepared[layer].update(table)  # validated on the host, copied in place
        self._tables[layer] = table
        self._set_fold_index(layer)

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
        world_size = self.world_size
        windows = self._gather_windows()  # (n, L, W, E) on the CPU, agreed
        old = torch.stack(self._tables)
        new = self._plan_on_rank_0(windows, old)
        self._check_planned(new)
        changed = [layer for layer in range(self.num_layers)
                   if moe_eplb.table_diff(old[layer], new[layer], world_size,
                                          self.slots_per_rank).rows_changed]
        unregistered = [layer for layer in changed if self._tensors[layer] is None]
        if unregistered:  # the same on every rank: registration was agreed
            raise ValueError(
                "EplbRuntime.step(): the rebalance at step %d would change layer(s) %s, whose "
                "expert tensors were never registered: the table would switch without the "
                "weights, and tokens would reach slots that hold other experts. Register them "
                "(register_expert_tensors(), e.g. ExpertParallelMoE does it); no table "
                "changed" % (self.steps, unregistered))
        last = windows[-1]
        record = Rebalance(step=self.steps, layers=changed, max_over_mean_before=[],
                           max_over_mean_after=[], experts_moved=[], bytes_moved=[])
        for layer in range(self.num_layers):
            options = dict(balance_mode=self.balance_mode, ranks_per_node=self.ranks_per_node)
            before = moe_eplb.analyze(old[layer], last[layer], world_size, self.slots_per_rank,
                                      layout="WE", **options).max_over_mean
            record.max_over_mean_before.append(before)
            moved = 0
            if layer in changed:
                record.max_over_mean_after.append(moe_eplb.analyze(
                    new[layer], last[layer], world_size, self.slots_per_rank, layout="WE",
                    **options).max_over_mean)
                moved = moe_eplb.migration_plan(old[layer], new[layer], world_size,
                                                self.slots_per_rank,
                                                ranks_per_node=self.ranks_per_node).received
                self._pending.append((layer, new[layer].clone()))
            else:
                record.max_over_mean_after.append(before)
            record.experts_moved.append(moved)
            record.bytes_moved.append(moved * self._slot_bytes(layer))
        if not self._pending:
            record.done_step = self.steps
        self.rebalances.append(record)
        return record

    def _gather_windows(self):
        """Every rank's windows, (n, L, W, E) int64 on the CPU, in one
        all_gather of a fixed-size record that also carries each rank's
        steps and registrations, which must agree."""
        layers, experts = self.num_layers, self.num_experts
        registration = torch.tensor(
            [1 if tensors is not None else 0 for tensors in self._tensors] +
            [layout_fingerprint(tensors) if tensors is not None else 0
             for tensors in self._tensors], dtype=torch.int64, device=self.device)
        padded = torch.zeros((self.num_windows, layers, experts), dtype=torch.int64,
                             device=self.device)
        if self._windows:
            padded[:len(self._windows)] = torch.stack(self._windows)
        mine = torch.cat([torch.tensor([self.steps, len(self._windows)], dtype=torch.int64,
                                       device=self.device), registration, padded.view(-1)])
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine, group=self.group)
        gathered = torch.stack(gathered).cpu()
        head = gathered[:, :2 + 2 * layers].tolist()
        for index, what in ((0, "steps taken (every rank calls step() after every forward)"),
                            (1, "completed windows")):
            values = [row[index] for row in head]
            if len(set(values)) > 1:
                raise ValueError("EplbRuntime.step(): the ranks disagree on %s (by rank: %s); no "
                                 "table changed" % (what, values))
        for layer in range(layers):
            registered = [(row[2 + layer], row[2 + layers + layer]) for row in head]
            if len(set(registered)) > 1:
                raise ValueError(
                    "EplbRuntime.step(): layer %d's registered expert tensors differ between "
                    "ranks (registered on ranks %s, and dtypes or per-slot shapes differ "
                    "unless all alike); every rank must register the same; no table changed"
                    % (layer, [r for r, (flag, _) in enumerate(registered) if flag]))
        count = head[0][1]
        windows = gathered[:, 2 + 2 * layers:].view(self.world_size, self.num_windows, layers,
                                                    experts)[:, :count]
        return windows.permute(1, 2, 0, 3).contiguous()  # (n, L, W, E)

    def _plan_on_rank_0(self, windows, old):
        """Rank 0 plans; every rank receives its tables (or its failure) in one
        broadcast of [status, tables]."""
        status_and_tables = torch.zeros(1 + old.numel(), dtype=torch.int64, device=self.device)
        error = None
        if self.rank == 0:
            try:
                status_and_tables[1:] = self._plan(windows, old).reshape(-1).to(torch.int64)
            except Exception as caught:  # told to every rank below, then re-raised
                error = caught
                status_and_tables[0] = 1
        dist.broadcast(status_and_tables, 0, group=self.group)
        if error is not None:
            raise error
        if status_and_tables[0].item():
            raise RuntimeError("EplbRuntime.step(): planning failed on rank 0 (its error says "
                               "why); the tables in force stay")
        return status_and_tables[1:].cpu().to(torch.int32).view_as(old)

    def _plan(self, windows, old):
        """Rank 0's plan: (L, E, F) int32 tables from the (n, L, W, E) windows
        against the tables in force."""
        return moe_eplb.plan(list(windows.unbind(0)), self.world_size, self.slots_per_rank,
                             balance_mode=self.balance_mode, ranks_per_node=self.ranks_per_node,
                             num_columns=self.num_columns, previous=old,
                             max_moves=self.max_moves, move_cost=self.move_cost).table

    def _check_planned(self, new):
        """Every rank checks the broadcast tables and that all hold the same."""
        agreement = Agreement("EplbRuntime.step", ("the planned tables",))
        with agreement.checking():
            for layer in range(self.num_layers):
                problem = _table_problem(new[layer], self.world_size, self.slots_per_rank)
                if problem:
                    fail("EplbRuntime.step", "the planned tables", "the planned table of layer "
                         "%d is not valid: %s", layer, problem)
        agreement.agree("the planned tables", _tables_fingerprint(new), shown=False)
        _exchange_and_resolve(agreement, self.group, self.world_size, "no table changed")

    def _switch_next_layers(self):
        batch, self._pending = (self._pending[:self.layers_per_step],
                                self._pending[self.layers_per_step:])
        record = self.rebalances[-1]
        for position, (layer, new) in enumerate(batch):
            try:
                if moe_eplb.table_diff(self._tables[layer], new, self.world_size,
                                       self.slots_per_rank).slots_changed:
                    stats = migrate_experts(self._tensors[layer], self._tables[layer], new,
                                            slots_per_rank=self.slots_per_rank, group=self.group,
                                            ranks_per_node=self.ranks_per_node)
                    record.this_rank_received += stats.received
                    record.this_rank_sent += stats.sent
            except Exception:
                # The layer keeps its table and weights; the rest is dropped.
                record.dropped_layers = [layer for layer, _ in batch[position:] + self._pending]
                self._pending = []
                raise
            self._install(layer, new)
            record.installed_layers.append(layer)
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

    # ------------------------------------------------------------ restart

    def _check_state(self, state):
        """The restored tables, windows and pending layers; BadArgument if
        `state` is not a state_dict() of a runtime like this one."""
        def bad(message, *values):
            fail("EplbRuntime.load_state_dict", "state", "state: " + message, *values)
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            bad("expected a dict from EplbRuntime.state_dict() (format %r)", _STATE_FORMAT)
        config = {name: getattr(self, name) for name in _CONFIG}
        if state.get("config") != config or state.get("world_size") != self.world_size or \
                state.get("num_columns") != self.num_columns:
            bad("it is the state of another configuration (%s, world_size %s, num_columns %s); "
                "this runtime has %s, world_size %d, num_columns %d", state.get("config"),
                state.get("world_size"), state.get("num_columns"), config, self.world_size,
                self.num_columns)
        if not is_int(state.get("steps")) or state["steps"] < 0:
            bad("steps must be an int >= 0, got %r", state.get("steps"))
        shape = (self.num_layers, self.num_experts, self.num_columns)
        tables = state.get("tables")
        if not isinstance(tables, torch.Tensor) or tuple(tables.shape) != shape:
            bad("tables must be a tensor of shape %s", shape)
        tables = int32_table_argument("EplbRuntime.load_state_dict", "state",
                                      tables.cpu()).contiguous()
        for layer in range(self.num_layers):
            problem = _table_problem(tables[layer], self.world_size, self.slots_per_rank)
            if problem:
                bad("tables[%d] is not valid: %s", layer, problem)
        counts_shape = (self.num_layers, self.num_experts)
        window = state.get("window")
        windows = state.get("windows")
        if not isinstance(window, torch.Tensor) or tuple(window.shape) != counts_shape or \
                not isinstance(windows, list) or len(windows) > self.num_windows or \
                not all(isinstance(w, torch.Tensor) and tuple(w.shape) == counts_shape
                        for w in windows):
            bad("window and windows must be (L, E) = %s count tensors, at most %d windows",
                counts_shape, self.num_windows)
        pending = []
        layers, pending_tables = state.get("pending_layers"), state.get("pending_tables")
        if not isinstance(layers, list) or not isinstance(pending_tables, list) or \
                len(layers) != len(pending_tables):
            bad("pending_layers and pending_tables must be lists of one length")
        for layer, table in zip(layers, pending_tables):
            if not is_int(layer) or not 0 <= layer < self.num_layers or \
                    not isinstance(table, torch.Tensor) or tuple(table.shape) != shape[1:]:
                bad("a pending layer must be an int in 0..%d with an (E, F) table",
                    self.num_layers - 1)
            table = int32_table_argument("EplbRuntime.load_state_dict", "state",
                                         table.cpu()).contiguous()
            problem = _table_problem(table, self.world_size, self.slots_per_rank)
            if problem:
                bad("the pending table of layer %d is not valid: %s", layer, problem)
            pending.append((layer, table))
        if not isinstance(state.get("rebalances"), list):
            bad("rebalances must be a list")
        return dict(tables=tables, window=window.to(torch.int64).to(self.device),
                    windows=[w.to(torch.int64).cpu() for w in windows], pending=pending)


def _exchange_and_resolve(agreement, group, world_size, what_happened):
    """Every rank's Agreement record, one all_gather, then resolve()."""
    device = communication_device(group)
    mine = agreement.record(device)
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine, group=group)
    agreement.resolve([record.tolist() for record in gathered], what_happened)


def _config_value(value):
    """A configuration value as an int every process spells alike."""
    if value is None:
        return -1
    if isinstance(value, float):
        return struct.unpack("<q", struct.pack("<d", value))[0]
    return int(value)


def _tables_fingerprint(tables):
    """One int naming (L, E, F) tables' routing, layer by layer."""
    return text_fingerprint(",".join(str(int(table_fingerprint(table)))
                                     for table in tables.unbind(0)))


def _pad_columns(tables, width):
    if tables.shape[-1] >= width:
        return tables
    pad = torch.full(tables.shape[:-1] + (width - tables.shape[-1],), -1, dtype=tables.dtype)
    return torch.cat([tables, pad], dim=-1)


def _table_problem(table, world_size, slots_per_rank):
    """Why `table` is not a valid table for the slots, or None."""
    try:
        torch.ops.moe_eplb.prepare_table(table, 0, world_size,
                                         num_physical_experts=world_size * slots_per_rank)
    except (ValueError, RuntimeError) as error:
        return str(error)
    return None
