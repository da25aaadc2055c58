"""ExpertParallelMoE: a reference expert-parallel MoE layer on the EPLB table.

    gate -> softmax -> top-k (renormalised) -> dispatch -> per-slot SwiGLU -> combine

Each rank holds the weights of its S = slots_per_rank physical slots as
(S, ...) tensors; a slot holds a copy of the logical expert that the table
places there. With an EplbRuntime the runtime records load, owns the table
and moves those tensors in place when it rebalances; without one the layer
routes through a fixed table.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import moe_eplb

from .._ops import PreparedTable, int32_table
from ._checks import check_int as _check_int
from ._dispatch import combine, dispatch


def slots_from_dense(dense, table, rank, world_size, slots_per_rank):
    """MoE rank `rank`'s (S, ...) slot tensor from a per-logical-expert
    (E, ...) tensor: slot s holds dense[e] for the expert e that the table
    places at physical slot rank * S + s, zeros where no expert is placed."""
    if not isinstance(dense, torch.Tensor) or dense.dim() < 1 or dense.shape[0] != table.shape[0]:
        raise ValueError("slots_from_dense(): dense must be (E, ...) with E = %d (the table's "
                         "rows), got %s" % (table.shape[0], tuple(getattr(dense, "shape", ()))))
    experts = moe_eplb.slot_experts(table.cpu(), world_size, slots_per_rank)
    out = dense.new_zeros((slots_per_rank,) + tuple(dense.shape[1:]))
    for slot in range(slots_per_rank):
        expert = int(experts[rank * slots_per_rank + slot])
        if expert >= 0:
            out[slot] = dense[expert]
    return out


# How per-expert SwiGLU weights are laid out, for from_dense() / load_dense_weights().
WEIGHT_LAYOUTS = {
    "in_out": "x @ w: w_gate and w_up (E, H, I), w_down (E, I, H) (the layer's own)",
    "out_in": "nn.Linear, Hugging Face, vLLM: w_gate and w_up (E, I, H), w_down (E, H, I)",
}


def _in_out_weights(operation, gate_weight, w_gate, w_up, w_down, layout, sizes):
    """(w_gate, w_up, w_down) in the "in_out" layout; ValueError naming the
    argument, the layout and the shape it expects otherwise. sizes: (E, H,
    I) the layer has, or None to take them from gate_weight and w_gate."""
    if layout not in WEIGHT_LAYOUTS:
        raise ValueError("%s(): layout must be one of %s, got %r"
                         % (operation, sorted(WEIGHT_LAYOUTS), layout))
    if sizes is None:
        if not isinstance(w_gate, torch.Tensor) or w_gate.dim() != 3:
            raise ValueError("%s(): w_gate must be an (E, ...) 3-D tensor (%s for layout=%r), "
                             "got %s" % (operation, WEIGHT_LAYOUTS[layout], layout,
                                         tuple(getattr(w_gate, "shape", ()))
                                         or type(w_gate).__name__))
        hidden_axis, other_axis = (1, 2) if layout == "in_out" else (2, 1)
        hidden_size = gate_weight.shape[1]
        if w_gate.shape[hidden_axis] != hidden_size:
            other = "out_in" if layout == "in_out" else "in_out"
            hint = ("; that is the %r layout (%s): pass layout=%r" % (
                other, WEIGHT_LAYOUTS[other], other)
                if w_gate.shape[other_axis] == hidden_size else "")
            raise ValueError("%s(): w_gate has shape %s, whose axis %d should be H = %d (the "
                             "gate_weight's columns) for layout=%r (%s)%s"
                             % (operation, tuple(w_gate.shape), hidden_axis, hidden_size,
                                layout, WEIGHT_LAYOUTS[layout], hint))
        sizes = tuple(gate_weight.shape) + (w_gate.shape[other_axis],)
    num_experts, hidden_size, intermediate_size = sizes
    up_shape = (num_experts, hidden_size, intermediate_size)
    down_shape = (num_experts, intermediate_size, hidden_size)
    if layout == "out_in":
        up_shape, down_shape = down_shape, up_shape
    other = "out_in" if layout == "in_out" else "in_out"
    for name, value, shape in (("gate_weight", gate_weight, (num_experts, hidden_size)),
                               ("w_gate", w_gate, up_shape), ("w_up", w_up, up_shape),
                               ("w_down", w_down, down_shape)):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        if got == shape:
            continue
        hint = ""
        if name != "gate_weight" and got == (down_shape if name != "w_down" else up_shape):
            hint = "; that is the %r layout (%s): pass layout=%r" % (other, WEIGHT_LAYOUTS[other],
                                                                    other)
        raise ValueError("%s(): %s must be %s (layout=%r: %s), got %s%s"
                         % (operation, name, shape, layout, WEIGHT_LAYOUTS[layout], got, hint))
    if layout == "out_in":
        return w_gate.transpose(1, 2), w_up.transpose(1, 2), w_down.transpose(1, 2)
    return w_gate, w_up, w_down


class ExpertParallelMoE(nn.Module):
    """A Mixture-of-Experts layer whose experts are spread over the ranks of a
    process group and replicated as an EPLB table says.

    Routing (as Mixtral, and DeepSeek-V2 with norm_topk_prob): probabilities
    = softmax of the gate's logits (in float64 for float64 hidden, otherwise
    float32); the top_k largest are the token's experts; their weights are
    renormalised to sum to 1 and cast to the hidden dtype. Expert e is the
    SwiGLU FFN  (silu(x @ w_gate[e]) * (x @ w_up[e])) @ w_down[e].  Tokens go
    to replicas with dispatch() and come back with combine().

    Args:
        hidden_size, intermediate_size: H and I.
        num_experts: E logical experts.
        top_k: K experts per token.
        slots_per_rank: S physical slots on every rank.
        runtime: an EplbRuntime that owns this layer's table, or None.
        layer: this layer's index in the runtime.
        table: (E, F) int32 table, required without a runtime and ignored
            with one (the same on every rank).
        balance_mode, group: without a runtime, dispatch()'s arguments; with
            one, the runtime's (group: the runtime's `group` attribute when
            it has one, else this argument).
        max_tokens_per_rank: None (dispatch()'s uneven mode), or N: the
            capacity mode, with no host synchronisation in forward(), so
            that it can be captured in a CUDA graph (every rank's T <= N).
        dtype, device: of the weights.

    Parameters (requires_grad False: the layer is for inference; nothing
    flows back through the all-to-all):
        gate: nn.Linear(H, E, bias=False).
        w_gate (S, H, I), w_up (S, H, I), w_down (S, I, H): this rank's slots.
    They start at zero; load_dense_weights() (or from_dense()) fills the
    gate and every slot from one set of per-expert weights, the same on every
    rank, so that replicas are identical. With a runtime the three slot
    tensors are registered with it and it updates them in place.

    forward(hidden): (..., H) -> (..., H), same dtype. Every rank of the
    group must call it together (T may differ, including 0).
    """

    def __init__(self, hidden_size, intermediate_size, num_experts, top_k, slots_per_rank, *,
                 runtime=None, layer=0, table=None, balance_mode=0, group=None,
                 max_tokens_per_rank=None, dtype=None, device=None):
        super().__init__()
        for name, value, low in (("hidden_size", hidden_size, 1),
                                 ("intermediate_size", intermediate_size, 1),
                                 ("num_experts", num_experts, 1), ("top_k", top_k, 1),
                                 ("slots_per_rank", slots_per_rank, 1)):
            _check_int("ExpertParallelMoE", name, value, low)
        if top_k > num_experts:
            raise ValueError("ExpertParallelMoE(): top_k must be <= num_experts = %d, got %d"
                             % (num_experts, top_k))
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_experts = num_experts
        self.top_k = top_k
        self.slots_per_rank = slots_per_rank
        self.runtime = runtime
        self.layer = layer
        self.balance_mode = balance_mode
        if max_tokens_per_rank is not None:
            _check_int("ExpertParallelMoE", "max_tokens_per_rank", max_tokens_per_rank, 1)
        self.max_tokens_per_rank = max_tokens_per_rank
        self.group = getattr(runtime, "group", group) if runtime is not None else group
        factory = dict(dtype=dtype, device=device)
        self.gate = nn.Linear(hidden_size, num_experts, bias=False, **factory)
        self.gate.weight.requires_grad_(False)
        nn.init.zeros_(self.gate.weight)
        shapes = dict(w_gate=(hidden_size, intermediate_size),
                      w_up=(hidden_size, intermediate_size),
                      w_down=(intermediate_size, hidden_size))
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(
                torch.zeros((slots_per_rank,) + shape, **factory), requires_grad=False))
        self._prepared = None
        if runtime is not None:
            runtime.register_expert_tensors(layer, self.slot_tensors())
        else:
            if table is None:
                raise ValueError("ExpertParallelMoE(): table is required without a runtime")
            self.set_table(table)

    def slot_tensors(self):
        """[w_gate, w_up, w_down] as plain tensors sharing the parameters'
        storage: what moves with an expert when the placement changes."""
        return [self.w_gate.detach(), self.w_up.detach(), self.w_down.detach()]

    def _moe_rank(self):
        rank, world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        if rank < 0:
            raise ValueError("ExpertParallelMoE(): this process is not a member of the group")
        return rank, world_size

    def table(self):
        """The (E, F) table in force."""
        return self.runtime.table(self.layer) if self.runtime is not None else self._table

    def set_table(self, table):
        """Without a runtime: installs a new (E, F) int32 (or int64) table (validated;
        the slot tensors must already hold its placement, e.g. after
        migrate_experts())."""
        if self.runtime is not None:
            raise ValueError("ExpertParallelMoE.set_table(): the runtime owns this layer's table")
        if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[0] != \
                self.num_experts:
            raise ValueError("ExpertParallelMoE.set_table(): table must be (E, F) with E = %d, "
                             "got %s" % (self.num_experts, getattr(table, "shape", type(table))))
        device = self.w_gate.device
        table = int32_table("ExpertParallelMoE.set_table()", "table", table.detach()).to(device)
        if self._prepared is None:
            rank, world_size = self._moe_rank()
            self._prepared = PreparedTable(table, rank, world_size,
                                           balance_mode=self.balance_mode,
                                           num_physical_experts=world_size * self.slots_per_rank)
        else:
            self._prepared.update(table)
        self._table = table

    @torch.no_grad()
    def load_dense_weights(self, gate_weight, w_gate, w_up, w_down, *, layout="in_out"):
        """Sets the gate to gate_weight (E, H) and fills every slot of this
        rank from per-logical-expert weights under the table in force (empty
        slots get zeros). Pass the same tensors on every rank.

        layout names how the expert weights are laid out (WEIGHT_LAYOUTS):
        "in_out" (x @ w: w_gate and w_up (E, H, I), w_down (E, I, H), this
        layer's own) or "out_in" (nn.Linear, Hugging Face and vLLM: w_gate
        and w_up (E, I, H), w_down (E, H, I))."""
        w_gate, w_up, w_down = _in_out_weights("ExpertParallelMoE.load_dense_weights",
                                               gate_weight, w_gate, w_up, w_down, layout,
                                               (self.num_experts, self.hidden_size,
                                                self.intermediate_size))
        rank, world_size = self._moe_rank()
        table = self.table().cpu()
        self.gate.weight.copy_(gate_weight)
        for slot_tensor, dense in zip(self.slot_tensors(), (w_gate, w_up, w_down)):
            slot_tensor.copy_(slots_from_dense(dense, table, rank, world_size,
                                               self.slots_per_rank))

    @classmethod
    def from_dense(cls, gate_weight, w_gate, w_up, w_down, top_k, slots_per_rank, *,
                   layout="in_out", **kwargs):
        """A layer with sizes from the dense weights and its slots filled (see
        load_dense_weights() for the shapes and `layout`); kwargs as the
        constructor's (runtime, table, dtype: the weights' by default...)."""
        operation = "ExpertParallelMoE.from_dense"
        if not isinstance(gate_weight, torch.Tensor) or gate_weight.dim() != 2:
            raise ValueError("%s(): gate_weight must be the router's (E, H) weight, got %s"
                             % (operation, tuple(getattr(gate_weight, "shape", ()))
                                or type(gate_weight).__name__))
        _in_out_weights(operation, gate_weight, w_gate, w_up, w_down, layout, None)
        num_experts, hidden_size = gate_weight.shape
        intermediate_size = w_gate.shape[2 if layout == "in_out" else 1]
        kwargs.setdefault("dtype", w_gate.dtype)
        kwargs.setdefault("device", w_gate.device)
        layer = cls(hidden_size, intermediate_size, num_experts, top_k, slots_per_rank, **kwargs)
        layer.load_dense_weights(gate_weight, w_gate, w_up, w_down, layout=layout)
        return layer

    def route(self, hidden):
        """(T, H) -> topk_weights (T, K) in hidden's dtype, topk_ids (T, K) int64."""
        compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        probabilities = torch.softmax(self.gate(hidden).to(compute), dim=-1)
        weights, ids = torch.topk(probabilities, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(hidden.dtype), ids

    def experts(self, recv_hidden, recv_slot):
        """Each received row through its slot's SwiGLU FFN: (N, H), (N,) -> (N, H);
        rows of no slot (padding, the shared expert's) give zeros.

        Uneven mode: one host read (the rows per slot), then one matmul chain
        per slot in use. Capacity mode: no host read (CUDA-graph safe), every
        row through every slot's FFN, each kept where its slot matches: a
        reference, S times the work; an engine runs a grouped GEMM over
        handle.slot_counts instead."""
        if self.max_tokens_per_rank is not None:
            out = torch.zeros_like(recv_hidden)
            for slot in range(self.slots_per_rank):
                out = torch.where((recv_slot == slot).unsqueeze(1), self._ffn(recv_hidden, slot),
                                  out)
            return out
        out = torch.zeros_like(recv_hidden)
        real = recv_slot >= 0
        rows_per_slot = torch.zeros(self.slots_per_rank, dtype=torch.int64,
                                    device=recv_slot.device).scatter_add_(
            0, torch.where(real, recv_slot, torch.zeros_like(recv_slot)),
            real.to(torch.int64)).tolist()
        order = torch.sort(torch.where(real, recv_slot, torch.full_like(recv_slot,
                                                                        self.slots_per_rank)),
                           stable=True).indices
        start = 0
        for slot, count in enumerate(rows_per_slot):
            if count == 0:
                continue
            rows = order[start:start + count]
            start += count
            out.index_copy_(0, rows, self._ffn(recv_hidden.index_select(0, rows), slot))
        return out

    def _ffn(self, x, slot):
        return (F.silu(x @ self.w_gate[slot]) * (x @ self.w_up[slot])) @ self.w_down[slot]

    def forward(self, hidden):
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError("ExpertParallelMoE.forward(): hidden must be (..., %d), got shape %s"
                             % (self.hidden_size, tuple(hidden.shape)))
        if hidden.dtype != self.w_gate.dtype:
            raise ValueError("ExpertParallelMoE.forward(): hidden is %s but the layer's weights "
                             "are %s; cast hidden (hidden.to(%s)) or build the layer in %s"
                             % (hidden.dtype, self.w_gate.dtype, self.w_gate.dtype,
                                hidden.dtype))
        shape = hidden.shape
        hidden = hidden.reshape(-1, self.hidden_size)
        topk_weights, topk_ids = self.route(hidden)
        options = {}
        if self.max_tokens_per_rank is not None:
            options["max_tokens_per_rank"] = self.max_tokens_per_rank
        if self.runtime is not None:
            recv_hidden, recv_slot, handle = self.runtime.dispatch(self.layer, hidden, topk_ids,
                                                                   **options)
            out = self.runtime.combine(self.layer, self.experts(recv_hidden, recv_slot), handle,
                                       topk_weights)
        else:
            recv_hidden, recv_slot, handle = dispatch(
                hidden, topk_ids, self._prepared, slots_per_rank=self.slots_per_rank,
                balance_mode=self.balance_mode, group=self.group, **options)
            out = combine(self.experts(recv_hidden, recv_slot), handle, topk_weights)
        return out.reshape(shape)
