"""The planner, the analyzer, table validation and the migration plan from Python.

Thin adapters over torch.ops.moe_eplb.{plan, analyze, validate_table,
migration_plan, align_to_previous, table_diff, slot_experts,
widest_plan_columns} (C++, torch/csrc/plan_ops.cpp and table_ops.cpp): they
turn CPU tensors or NumPy arrays into the ops' inputs, check what the ops
cannot name, and shape the results, one result type per function (a tensor or
a dataclass whose field names come from C++). Every value is computed by the
C++ core; the same core backs the `moe-eplb plan` command, so both give the
same table for the same input.

Tables are Ascend eplb_tables: (E, F) int32, row e = [c, p_1 .. p_c, -1 ...];
slot p lives on rank p // slots_per_rank. Two tables are passed in (old, new)
order everywhere. Loads say their layout when their shape cannot: a 2-D load
is per source rank (layout="WE") or per layer (layout="LE").

Errors: a wrong Python type is TypeError, a wrong value ValueError, each
naming the function and the argument, e.g. "plan(): world_size must be an
int, got float".
"""
import dataclasses
import enum
import numbers

import torch

from ._ops import int32_table

try:
    import numpy
except ImportError:  # NumPy is optional; tensors work without it
    numpy = None

_OPS = torch.ops.moe_eplb

# Names read from C++ (torch.ops.moe_eplb.names), never kept here.
ALGORITHMS = tuple(_OPS.names("plan_algorithms"))  # plan(algorithm=...)
RULES = tuple(_OPS.names("replica_rules"))  # plan(rule=...), analyze(rule=...)
BALANCE_MODE_RULES = tuple(_OPS.names("balance_modes"))  # the rule of balance_mode 0, 1, 2
_PLAN_REPORT_FIELDS = tuple(_OPS.names("plan_report"))
# analyze()'s scalars in the order of the op's third output; the counts are ints.
ANALYZE_FIELDS = tuple(_OPS.names("analyze"))
_ANALYZE_COUNTS = {"num_replicas", "dead_replicas", "idle_replicas", "replicas_sharing_rank",
                   "slots_claimed_twice", "unused_slots"}

MigrationAction = enum.IntEnum(
    "MigrationAction", [(name.upper(), value)
                        for value, name in enumerate(_OPS.names("slot_actions"))])
MigrationAction.__doc__ = """What a destination slot is made from (C++ moe_eplb::SlotAction,
whose names these are): KEEP the slot already holds its expert, or the new
table leaves it unused; COPY_LOCAL copy the OLD content of local slot
source_slot; RECEIVE receive the OLD content of (source_rank, source_slot);
COPY_RECEIVED copy the NEW content of local slot source_slot, a RECEIVE slot."""
MigrationAction.__module__ = __name__

# The load layouts: the dimensions of a load array, named by their letters.
LAYOUTS = ("E", "WE", "LE", "LWE")


@dataclasses.dataclass
class PlanResult:
    """What plan() returns: the table and what the planner estimated.

    table: int32 CPU tensor, (E, F) for a one-layer load (layout E or WE),
        (L, E, F) for a per-layer one (LE or LWE).
    persistence, predicted_max_over_mean, predicted_low, predicted_high,
    slots_changed: lists with one entry per layer (one for a one-layer load).
        persistence: share of each source rank's deviation from the global
        share that persists from window to window, in [0, 1];
        predicted_*: the predicted max/mean per-rank load on the next window
        and an interval of about one standard deviation either side (moe-eplb
        only; 0 for the baselines); slots_changed: slots whose expert or
        replica position in its row differs from `previous` (the position is
        the routing); 0 without it.
    """

    table: torch.Tensor
    persistence: list
    predicted_max_over_mean: list
    predicted_low: list
    predicted_high: list
    slots_changed: list


@dataclasses.dataclass
class BalanceReport:
    """What analyze() returns: how a table balances a load when an engine
    routes it (C++ moe_eplb::BalanceReport, field for field; the scalars' names
    are ANALYZE_FIELDS, read from C++).

    rule: the replica rule that routed it (one of RULES);
    slot_load: float64 tensor (W * S,), tokens per physical slot;
    rank_load: float64 tensor (W,), tokens per rank;
    total_load, mean_rank_load, max_rank_load;
    max_over_mean: max / mean per-rank load (1.0 with no traffic);
    imbalance: (max - mean) / mean;
    num_replicas; dead_replicas: the mode never selects them; idle_replicas:
    selectable but got no tokens; replicas_sharing_rank; slots_claimed_twice;
    unused_slots;
    local_rank_share: tokens served on their source rank; local_node_share:
    on their source node (-1.0 when ranks_per_node is 0).
    """

    rule: str
    world_size: int
    slots_per_rank: int
    slot_load: torch.Tensor
    rank_load: torch.Tensor
    total_load: float
    mean_rank_load: float
    max_rank_load: float
    max_over_mean: float
    imbalance: float
    num_replicas: int
    dead_replicas: int
    idle_replicas: int
    replicas_sharing_rank: int
    slots_claimed_twice: int
    unused_slots: int
    local_rank_share: float
    local_node_share: float


@dataclasses.dataclass
class TableReport:
    """What validate_table() returns (C++ moe_eplb::TableReport).

    ok: no errors (warnings allowed). errors, warnings: the messages, e.g.
    "row 2: replica count 0 is outside 1..3 (F - 1)", at most max_issues in
    all; total_errors, total_warnings: exact counts. num_physical_experts:
    the slot count checked against (inferred when -1 was given:
    num_physical_experts_inferred). str(report) lists every issue, one per
    line.
    """

    ok: bool
    errors: list
    warnings: list
    total_errors: int
    total_warnings: int
    num_physical_experts: int
    num_physical_experts_inferred: bool

    def __str__(self):
        lines = ["error: " + message for message in self.errors]
        lines += ["warning: " + message for message in self.warnings]
        left = self.total_errors + self.total_warnings - len(lines)
        if left > 0:
            lines.append("... and %d more" % left)
        return "\n".join(lines)


@dataclasses.dataclass
class MigrationPlan:
    """How the expert weights move from one table to the next.

    action, source_rank, source_slot: int64 tensors (world_size *
    slots_per_rank,), indexed by destination physical slot p (on rank
    p // slots_per_rank, local slot p % slots_per_rank). action holds
    MigrationAction values; source_rank is the slot's own rank except for
    RECEIVE; source_slot is a local slot index on source_rank.
    kept, local_copies (COPY_LOCAL + COPY_RECEIVED), received (RECEIVE, one
    per rank and expert new to it), cross_node (receives from another node):
    counts over all slots. received_per_rank, sent_per_rank: lists of
    world_size ints. bytes_received: received * expert_bytes.
    """

    action: torch.Tensor
    source_rank: torch.Tensor
    source_slot: torch.Tensor
    kept: int
    local_copies: int
    received: int
    cross_node: int
    received_per_rank: list
    sent_per_rank: list
    bytes_received: int
    world_size: int
    slots_per_rank: int


def _call(op, *args, **kwargs):
    """Runs an op; the core's errors (RuntimeError or IndexError from the
    dispatcher) become ValueError with the core's message."""
    try:
        return op(*args, **kwargs)
    except ValueError:
        raise
    except (RuntimeError, IndexError) as error:
        raise ValueError(str(error)) from error


def _int(operation, name, value, minimum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError("%s: %s must be an int, got %s" % (operation, name, type(value).__name__))
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError("%s: %s must be at least %d, got %d" % (operation, name, minimum, value))
    return value


def _tensor(operation, name, value):
    """A CPU tensor from a tensor or a NumPy array (shared memory, detached)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif numpy is not None and isinstance(value, numpy.ndarray):
        try:
            tensor = torch.from_numpy(value)
        except TypeError as error:
            raise TypeError("%s: %s has NumPy dtype %s, which torch cannot read"
                            % (operation, name, value.dtype)) from error
    else:
        raise TypeError("%s: %s must be a CPU tensor or a NumPy array, got %s"
                        % (operation, name, type(value).__name__))
    if tensor.device.type != "cpu":
        raise ValueError("%s: %s must be on the CPU (planning runs on the host), got %s"
                         % (operation, name, tensor.device))
    return tensor


def _load(operation, name, value, dims):
    """A float64 load of one of the ranks in `dims` (counts of any real dtype)."""
    tensor = _tensor(operation, name, value)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError("%s: %s must hold real counts (integer or floating point), got %s"
                        % (operation, name, tensor.dtype))
    if tensor.dim() not in dims:
        raise ValueError("%s: %s must have %s dimensions, got shape %s"
                         % (operation, name, " or ".join(map(str, dims)), tuple(tensor.shape)))
    return tensor.to(torch.float64).contiguous()


def _layout(operation, layout, allowed=LAYOUTS):
    """The layout argument as the ops take it ("" = from the dimensions)."""
    if layout is None:
        return ""
    if not isinstance(layout, str):
        raise TypeError("%s: layout must be a str (one of %s) or None, got %s"
                        % (operation, ", ".join(allowed), type(layout).__name__))
    if layout not in allowed:
        raise ValueError("%s: layout must be one of %s, got %r"
                         % (operation, ", ".join(allowed), layout))
    return layout


def _check_2d_layout(operation, name, load, layout):
    """A 2-D load without a layout: rows of ranks or of layers? Say how to say which."""
    if layout == "" and load.dim() == 2:
        raise ValueError(
            "%s: %s of shape %s is 2-D: are its rows source ranks (W, E) or layers (L, E)? "
            "Pass layout='WE' or layout='LE'" % (operation, name, tuple(load.shape)))


def _table(operation, name, value, dims=(2,)):
    """An int32 table ((E, F), or (L, E, F) when 3 is in dims), by the one
    table rule (int32, or int64 whose values fit: moe_eplb.int32_table)."""
    tensor = _tensor(operation, name, value)
    if tensor.dim() not in dims:
        expected = " or ".join({2: "(E, F)", 3: "(L, E, F)"}[d] for d in dims)
        raise ValueError("%s: %s must be %s, got shape %s"
                         % (operation, name, expected, tuple(tensor.shape)))
    tensor = int32_table(operation, name, tensor)
    if tensor.dtype != torch.int32:
        raise TypeError("%s: %s must be int32 (or int64 whose values fit), got %s"
                        % (operation, name, tensor.dtype))
    return tensor.contiguous()


def _rule(operation, rule, balance_mode):
    """The ops' (balance_mode, rule) pair: the C++ core resolves and checks them."""
    if rule is not None and not isinstance(rule, str):
        raise TypeError("%s: rule must be a str, one of %s, got %s"
                        % (operation, RULES, type(rule).__name__))
    if balance_mode is not None:
        balance_mode = _int(operation, "balance_mode", balance_mode)
    return dict(balance_mode=balance_mode, rule=rule)


def plan(load, world_size, slots_per_rank, *, layout=None, rule=None, balance_mode=None,
         ranks_per_node=0, num_columns=0, algorithm="moe-eplb", num_groups=1, previous=None,
         max_moves=None, move_cost=0.0, threads=0):
    """Plans an EPLB table from expert load statistics (the `moe-eplb plan` planner).

    Args:
        load: counts of routed choices per expert, a CPU tensor or NumPy array
            of any real dtype, or a list/tuple of such windows, oldest first,
            all of one shape. Its dimensions, as `layout` names them:
            "E" (E,) global; "WE" (W, E) per source rank (W == world_size);
            "LE" (L, E) global per layer; "LWE" (L, W|1, E) per layer.
        world_size: W, the expert-parallel ranks.
        slots_per_rank: S, physical slots per rank (1..E; W * S >= E).
        layout: one of "E", "WE", "LE", "LWE"; None reads it from the number
            of dimensions, which a 2-D load cannot say (ValueError: pass "WE"
            or "LE").
        rule: the replica rule to plan for, one of RULES: "ascend-rank"
            (the default), "ascend-token", "vllm", "sglang-static",
            "sglang-dynamic", "trtllm" (docs/SPEC.md, "Replica rules").
        balance_mode: or the operator's mode that routes the table: 0
            (ascend-rank), 1 (ascend-token), 2 (vllm). Give rule or
            balance_mode (both only when they agree).
        ranks_per_node: ranks per node for locality and for sglang-static's
            nodes (0 = one node); divides W.
        num_columns: F of the table; 0 = the smallest that fits.
        algorithm: one of ALGORITHMS: "moe-eplb" (rule-aware), "deepseek"
            (DeepSeek EPLB) or "flashlb" (FlashLB as published).
        num_groups: DeepSeek's expert groups (deepseek only).
        previous: the table in force, (E, F') or (L, E, F') int32 (or int64
            whose values fit), for migration-aware replanning (None: from scratch).
        max_moves: per layer, at most this many slots whose expert or
            replica position differs from `previous` (None: no cap; 0 keeps
            `previous`'s rows exactly). Needs `previous`.
        move_cost: >= 0, the predicted max/mean a move must buy. Needs `previous`.
        threads: layers planned side by side on this many threads; 0 = one
            per hardware thread, 1 = the calling thread alone. Every value
            gives the same table.

    Returns:
        PlanResult: .table, int32 CPU tensor (E, F) for a one-layer load (E
        or WE) and (L, E, F) for a per-layer one (LE or LWE), and the
        planner's per-layer estimates.
    """
    operation = "plan()"
    if isinstance(load, (list, tuple)):
        if not load:
            raise ValueError("plan(): load is an empty list; expected at least one window")
        names = ["load[%d]" % idx for idx in range(len(load))]
        windows = list(load)
    else:
        names, windows = ["load"], [load]
    layout = _layout(operation, layout)
    windows = [_load(operation, name, window, (1, 2, 3)) for name, window in zip(names, windows)]
    _check_2d_layout(operation, names[0], windows[0], layout)
    for name, window in zip(names[1:], windows[1:]):
        if window.shape != windows[0].shape:
            raise ValueError("plan(): %s has shape %s but %s has %s; every window must have the "
                             "same shape" % (name, tuple(window.shape), names[0],
                                             tuple(windows[0].shape)))
    if not isinstance(algorithm, str):
        raise TypeError("plan(): algorithm must be a str, got %s" % type(algorithm).__name__)
    if algorithm not in ALGORITHMS:
        raise ValueError("plan(): algorithm must be one of %s, got %r" % (ALGORITHMS, algorithm))
    if isinstance(move_cost, bool) or not isinstance(move_cost, numbers.Real):
        raise TypeError("plan(): move_cost must be a number, got %s" % type(move_cost).__name__)
    if previous is None and (max_moves is not None or move_cost != 0.0):
        raise ValueError("plan(): max_moves and move_cost need previous=, the table in force")
    if previous is not None:
        previous = _table(operation, "previous", previous, (2, 3))
    table, report = _call(
        _OPS.plan.default, windows, _int(operation, "world_size", world_size),
        _int(operation, "slots_per_rank", slots_per_rank), layout=layout,
        **_rule(operation, rule, balance_mode),
        ranks_per_node=_int(operation, "ranks_per_node", ranks_per_node),
        num_columns=_int(operation, "num_columns", num_columns), algorithm=algorithm,
        num_groups=_int(operation, "num_groups", num_groups), previous=previous,
        max_moves=-1 if max_moves is None else _int(operation, "max_moves", max_moves, 0),
        move_cost=float(move_cost), threads=_int(operation, "threads", threads, 0),
    )
    per_layer = layout in ("LE", "LWE") or (layout == "" and windows[0].dim() == 3)
    estimates = dict(zip(_PLAN_REPORT_FIELDS, report.t().tolist()))
    estimates["slots_changed"] = [int(value) for value in estimates["slots_changed"]]
    return PlanResult(table=table if per_layer else table[0], **estimates)


def analyze(table, load, world_size, slots_per_rank, *, layout=None, rule=None,
            balance_mode=None, ranks_per_node=0):
    """How `table` balances `load` when an engine routes it by its rule (the analyzer).

    Args:
        table: (E, F) int32 eplb_table, CPU tensor or NumPy array.
        load: one layer's counts, any real dtype: (W, E) per source rank
            (layout="WE"; W == world_size; routed exactly by the replica
            rule) or (E,) global counts (spread evenly over the ranks). Values
            finite and >= 0.
        world_size, slots_per_rank: the topology (slot p on rank p // S).
        layout: "WE" or "E"; None reads it from the dimensions, which a 2-D
            load cannot say (ValueError: pass layout="WE").
        rule: the replica rule that routes it, one of RULES (default
            "ascend-rank"); the rules that pick a replica per source rank
            (ascend-rank, sglang-static) route exactly, the others by the
            expected even split.
        balance_mode: or the operator's mode: 0, 1, 2 (as plan()).
        ranks_per_node: for local_node_share and sglang-static's nodes (0 = one node).

    Returns:
        BalanceReport.
    """
    operation = "analyze()"
    world_size = _int(operation, "world_size", world_size)
    slots_per_rank = _int(operation, "slots_per_rank", slots_per_rank)
    rules = _rule(operation, rule, balance_mode)
    layout = _layout(operation, layout, ("E", "WE"))
    load = _load(operation, "load", load, (1, 2))
    if layout == "" and load.dim() == 2:
        raise ValueError("analyze(): load of shape %s is 2-D: pass layout='WE' if its rows are "
                         "the source ranks (analyze() scores one layer)" % (tuple(load.shape),))
    slot_load, rank_load, values = _call(
        _OPS.analyze.default, _table(operation, "table", table), load, world_size,
        slots_per_rank, layout=layout, **rules,
        ranks_per_node=_int(operation, "ranks_per_node", ranks_per_node))
    if rule is None:
        rule = "ascend-rank" if balance_mode is None else BALANCE_MODE_RULES[rules["balance_mode"]]
    scalars = {name: int(value) if name in _ANALYZE_COUNTS else value
               for name, value in zip(ANALYZE_FIELDS, values.tolist())}
    return BalanceReport(rule=rule, world_size=world_size, slots_per_rank=slots_per_rank,
                         slot_load=slot_load, rank_load=rank_load, **scalars)


def validate_table(eplb_table, world_size, num_physical_experts=-1, *, profile="native",
                   warnings=True, max_issues=1000):
    """Every problem of an eplb_table, as `moe-eplb validate` lists them.

    Args:
        eplb_table: (E, F) int32 (or int64 that fits) table, any device or a
            NumPy array; read on the host.
        world_size: W; -1 when unknown (token mode: the per-rank checks are
            skipped).
        num_physical_experts: W * slots_per_rank; -1 infers the smallest
            multiple of world_size above the largest slot.
        profile: "native", "ascend" or "ascend_seed" limits.
        warnings: also warn about replicas rank mode never selects and slots
            no row names.
        max_issues: list at most this many issues (the totals stay exact).

    Returns:
        TableReport; report.ok is False when the operator would refuse the
        table (str(report) lists why).
    """
    operation = "validate_table()"
    if isinstance(eplb_table, torch.Tensor) and eplb_table.device.type != "cpu":
        eplb_table = eplb_table.cpu()
    if not isinstance(profile, str):
        raise TypeError("validate_table(): profile must be a str, got %s"
                        % type(profile).__name__)
    if not isinstance(warnings, bool):
        raise TypeError("validate_table(): warnings must be a bool, got %s"
                        % type(warnings).__name__)
    errors, found, total_errors, total_warnings, num_physical, inferred = _call(
        _OPS.validate_table.default, _table(operation, "eplb_table", eplb_table),
        _int(operation, "world_size", world_size),
        _int(operation, "num_physical_experts", num_physical_experts), profile=profile,
        warnings=warnings, max_issues=_int(operation, "max_issues", max_issues, 0))
    return TableReport(ok=total_errors == 0, errors=list(errors), warnings=list(found),
                       total_errors=total_errors, total_warnings=total_warnings,
                       num_physical_experts=num_physical, num_physical_experts_inferred=inferred)


def migration_plan(old_table, new_table, world_size, slots_per_rank, *, ranks_per_node=0,
                   expert_bytes=0):
    """How to move expert weights from `old_table` to `new_table` (C++, deterministic).

    Args:
        old_table, new_table: (E, F) int32 eplb_tables valid for world_size *
            slots_per_rank slots; the same E, F may differ.
        world_size, slots_per_rank: the topology (slot p on rank p // S).
        ranks_per_node: 0 = one node; else divides world_size.
        expert_bytes: bytes of one expert's tensors, for bytes_received.

    Returns:
        MigrationPlan. For destination slot p (rank r = p // S):
          KEEP           p's expert is unchanged, or no new row names p;
          COPY_LOCAL     rank r held the expert in the old table: copy the old
                         content of (r, source_slot);
          RECEIVE        receive the old content of (source_rank, source_slot)
                         from another rank: once per (rank, expert new to it),
                         from a holder on r's node when there is one, else any
                         holder, spreading the sends over the holders;
          COPY_RECEIVED  r's further slots of an expert it receives: copy the
                         new content of (r, source_slot), the RECEIVE slot.

    Executing it: first read every old content that COPY_LOCAL and RECEIVE
    name (the sender's old slots; a slot may be both a source and a
    destination, and moves may form cycles), then write all RECEIVE and
    COPY_LOCAL destinations, then the COPY_RECEIVED ones from their RECEIVE
    slots. KEEP slots are not touched. Afterwards slot p holds what the old
    placement held for new_table's expert at p.
    """
    operation = "migration_plan()"
    world_size = _int(operation, "world_size", world_size)
    slots_per_rank = _int(operation, "slots_per_rank", slots_per_rank)
    expert_bytes = _int(operation, "expert_bytes", expert_bytes, 0)
    moves, received_per_rank, sent_per_rank, totals = _call(
        _OPS.migration_plan.default, _table(operation, "old_table", old_table),
        _table(operation, "new_table", new_table), world_size, slots_per_rank,
        ranks_per_node=_int(operation, "ranks_per_node", ranks_per_node))
    moves = moves.to(torch.int64)
    kept, local_copies, received, cross_node = totals.tolist()
    return MigrationPlan(
        action=moves[:, 0].contiguous(), source_rank=moves[:, 1].contiguous(),
        source_slot=moves[:, 2].contiguous(), kept=kept, local_copies=local_copies,
        received=received, cross_node=cross_node, received_per_rank=received_per_rank.tolist(),
        sent_per_rank=sent_per_rank.tolist(), bytes_received=received * expert_bytes,
        world_size=world_size, slots_per_rank=slots_per_rank)


def align_to_previous(old_table, new_table, world_size, slots_per_rank):
    """Permutes each rank's slots of `new_table` so that an expert staying on
    a rank keeps its slot in `old_table`; no rank's set of experts changes (so
    balance is unchanged) and each row's replica order is kept.

    Args: (E, F) int32 tables in (old, new) order (any F each, the same E)
    valid for world_size * slots_per_rank slots. Returns an int32 (E, F)
    tensor with new_table's F.
    """
    operation = "align_to_previous()"
    return _call(_OPS.align_to_previous.default, _table(operation, "old_table", old_table),
                 _table(operation, "new_table", new_table),
                 _int(operation, "world_size", world_size),
                 _int(operation, "slots_per_rank", slots_per_rank))


@dataclasses.dataclass
class TableDiff:
    """What changes from one table to the next (C++ diff_tables()).

    slots_changed: slots whose logical expert differs (each needs a copy);
    rows_changed: rows whose count or replica slots, in order, differ; the
    order is the routing (replica j serves source-rank group j in rank mode,
    tokens b with b % c == j - 1 in token mode), so the tables route every
    token alike exactly when rows_changed == 0; experts_received: summed over
    ranks, the distinct experts new to a rank; received_per_rank: (W,) list.
    """

    slots_changed: int
    rows_changed: int
    experts_received: int
    received_per_rank: list


def table_diff(old_table, new_table, world_size, slots_per_rank):
    """TableDiff of two (E, F) int32 tables (any F each, the same E) valid
    for world_size * slots_per_rank slots."""
    operation = "table_diff()"
    slots_changed, rows_changed, received = _call(
        _OPS.table_diff.default, _table(operation, "old_table", old_table),
        _table(operation, "new_table", new_table), _int(operation, "world_size", world_size),
        _int(operation, "slots_per_rank", slots_per_rank))
    received = received.tolist()
    return TableDiff(slots_changed=slots_changed, rows_changed=rows_changed,
                     experts_received=sum(received), received_per_rank=received)


def slot_experts(table, world_size, slots_per_rank):
    """(W * S,) int64 CPU tensor: the logical expert in every physical slot
    of an (E, F) int32 table valid for world_size * slots_per_rank slots, -1
    where no row names the slot."""
    operation = "slot_experts()"
    return _call(_OPS.slot_experts.default, _table(operation, "table", table),
                 _int(operation, "world_size", world_size),
                 _int(operation, "slots_per_rank", slots_per_rank))


def widest_plan_columns(num_experts, world_size, slots_per_rank):
    """The table width F that holds every plan plan() makes for num_experts
    experts on world_size * slots_per_rank slots: 1 + min(world_size,
    world_size * slots_per_rank - num_experts + 1). Planning every window
    with num_columns=F keeps one table shape (PreparedTable.update() needs it)."""
    operation = "widest_plan_columns()"
    return _call(_OPS.widest_plan_columns, _int(operation, "num_experts", num_experts),
                 _int(operation, "world_size", world_size),
                 _int(operation, "slots_per_rank", slots_per_rank))
