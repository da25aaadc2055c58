"""The online demo: expert-parallel MoE layers on gloo ranks, rebalanced as traffic drifts.

    python -m moe_eplb.distributed.demo [--world-size 4] [--steps 48] [--dtype auto] [--svg PATH]

Each of W CPU processes runs a small model of L ExpertParallelMoE layers
(residual stream) on an EplbRuntime, the way a serving engine does: the
forward and the runtime's steps inside torch.inference_mode(), in bfloat16
where this CPU computes it (--dtype auto), the weights made inside the mode.
Every step each rank draws its own batch from traffic whose hot experts
drift over time and differ by source rank; the runtime records the load,
replans every few windows and moves the experts' weights between ranks while
the model keeps running. Every step, every rank also computes each layer's
output densely in float64 from the same weights and routing, and compares.

It prints the max/mean per-rank load of every window (what the ranks
actually received), for each rebalance the tables it installed (the
predicted max/mean before and after on the last window, the experts and
bytes moved), whether every output matched the dense reference, and writes
an SVG of max/mean per step.
"""
import argparse
import math
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ._local import run_local_ranks, values_or_raise

# ---------------------------------------------------------------- traffic


def orthogonal_gate(num_experts, hidden_size, seed, scale=2.0):
    """(E, H) gate weights with orthogonal rows of norm `scale` (H >= E), so
    that a token along row e's direction routes to expert e first."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(hidden_size, hidden_size, generator=generator,
                                           dtype=torch.float64))
    return scale * basis[:, :num_experts].t().contiguous()


def drifting_expert_weights(num_experts, step, rank, world_size, *, period=32.0, spread=1.0):
    """(E,) unnormalised probabilities of source `rank`'s tokens at `step`: a
    discretised Gaussian of width `spread` experts around the centre
    (step / period + rank / world_size) * E / 2 (mod E), so the hot experts
    drift with time and differ by source rank (which rank mode routes on)."""
    centre = (step / period + rank / world_size) * num_experts / 2.0
    distance = (torch.arange(num_experts, dtype=torch.float64) - centre) % num_experts
    distance = torch.minimum(distance, num_experts - distance)
    return torch.exp(-0.5 * (distance / spread) ** 2)


def drifting_batch(gate_weight, step, rank, world_size, num_tokens, generator, *, period=32.0,
                   spread=1.0, strength=6.0, noise=0.3):
    """(num_tokens, H) float64 tokens of source `rank` at `step`.

    Each token picks a topic expert from drifting_expert_weights(); the
    token is strength * (gate row of the topic) / |row|^2 plus Gaussian
    noise: its gate logit for the topic is `strength`, the others are noise,
    so the gate ranks the topic first and the noise picks the other choices.
    """
    num_experts, hidden_size = gate_weight.shape
    if num_tokens == 0:
        return torch.zeros((0, hidden_size), dtype=torch.float64)
    weights = drifting_expert_weights(num_experts, step, rank, world_size, period=period,
                                      spread=spread)
    topics = torch.multinomial(weights, num_tokens, replacement=True, generator=generator)
    rows = gate_weight[topics]
    direction = rows / (rows * rows).sum(dim=1, keepdim=True).clamp_min(1e-12)
    return strength * direction + noise * torch.randn(
        num_tokens, hidden_size, generator=generator, dtype=torch.float64)


def dense_moe(hidden, gate_weight, w_gate, w_up, w_down, top_k):
    """One MoE layer on one process (float64): softmax of the gate, top-k,
    renormalised weights, sum over k of weight * SwiGLU_e(x), in k order."""
    probabilities = torch.softmax(F.linear(hidden, gate_weight), dim=-1)
    weights, ids = torch.topk(probabilities, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(hidden)
    for k in range(top_k):
        expert = ids[:, k]
        x = hidden.unsqueeze(1)
        y = (F.silu(x @ w_gate[expert]) * (x @ w_up[expert])) @ w_down[expert]
        out += weights[:, k:k + 1] * y.squeeze(1)
    return out


# ---------------------------------------------------------------- the model


def dense_layers(num_layers, num_experts, hidden_size, intermediate_size, seed):
    """Per layer (gate (E, H), w_gate (E, H, I), w_up (E, H, I), w_down (E, I, H)),
    float64, the same in every process. The gates share one orthogonal set of
    rows, each layer after the first in its own order, so a token's topic
    picks a different expert in every layer (and the load drifts in each)."""
    generator = torch.Generator().manual_seed(seed)
    basis = orthogonal_gate(num_experts, hidden_size, seed)
    layers = []
    for layer in range(num_layers):
        gate = basis if layer == 0 else basis[torch.randperm(num_experts, generator=generator)]
        shape = (num_experts, hidden_size, intermediate_size)
        layers.append((gate,
                       0.3 * torch.randn(shape, generator=generator, dtype=torch.float64),
                       0.3 * torch.randn(shape, generator=generator, dtype=torch.float64),
                       0.3 * torch.randn((num_experts, intermediate_size, hidden_size),
                                         generator=generator, dtype=torch.float64)))
    return layers


def run_model(layers, hidden):
    """The residual model: h <- h + layer(h), for every layer."""
    for layer in layers:
        hidden = hidden + layer(hidden)
    return hidden


def run_dense(dense, hidden, top_k):
    for weights in dense:
        hidden = hidden + dense_moe(hidden, *weights, top_k)
    return hidden


# ---------------------------------------------------------------- one rank


def run_gloo_ranks(fn, world_size, args=(), timeout_s=600.0):
    """Runs fn(rank, world_size, *args) in world_size spawned processes that
    form one gloo group on 127.0.0.1; returns the results by rank. Raises
    RuntimeError naming each rank that failed or did not finish. fn must be
    a module-level function (it is pickled by name)."""
    return values_or_raise(run_local_ranks(fn, world_size, args, timeout_s=timeout_s,
                                           group_timeout_s=min(timeout_s, 120.0)))


def routed_reference(layer, weights, hidden):
    """An ExpertParallelMoE layer's output computed densely in float64 from
    the same per-expert weights (as the layer holds them, in its dtype) and
    the layer's own routing of `hidden`: the check for any dtype, with no
    near-tie routing differences between precisions."""
    topk_weights, ids = layer.route(hidden)
    _, w_gate, w_up, w_down = (w.to(hidden.dtype).double() for w in weights)
    x = hidden.double().unsqueeze(1)
    out = torch.zeros(hidden.shape, dtype=torch.float64)
    for k in range(ids.shape[1]):
        expert = ids[:, k]
        y = (F.silu(x @ w_gate[expert]) * (x @ w_up[expert])) @ w_down[expert]
        out += topk_weights[:, k:k + 1].double() * y.squeeze(1)
    return out


# What "matches the dense reference" allows per token, per dtype: the norm of
# the difference over the norm of the reference (or a tenth of the batch's
# mean norm, for a token whose terms cancel). bfloat16 rounds every step of
# the SwiGLU chain: 2-12% on a token here; a token computed by another expert
# is off by about 100%.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 0.25}


def outputs_match(out, expected, dtype_name):
    """Whether every token's output is within TOLERANCE of the reference."""
    if expected.numel() == 0:
        return out.shape == expected.shape
    norm = expected.norm(dim=-1)
    difference = (out.double() - expected).norm(dim=-1)
    return bool((difference <= TOLERANCE[dtype_name] *
                 torch.maximum(norm, 0.1 * norm.mean())).all())


def resolve_dtype(name):
    """"auto": bfloat16 where this CPU computes it, else float32."""
    if name != "auto":
        return name
    try:
        one = torch.ones(2, 2, dtype=torch.bfloat16)
        return "bfloat16" if bool(((one @ one) == 2).all()) else "float32"
    except RuntimeError:
        return "float32"


def run_rank(rank, world_size, options):
    from moe_eplb.distributed import EplbRuntime, ExpertParallelMoE

    dtype = getattr(torch, options.dtype)
    dense = dense_layers(options.layers, options.experts, options.hidden, options.intermediate,
                         options.seed)
    inference = options.inference_mode
    with torch.inference_mode(inference):  # weights made inside the mode, as engines load them
        runtime = EplbRuntime(options.layers, options.experts, options.slots_per_rank,
                              balance_mode=options.balance_mode,
                              window_steps=options.window_steps, num_windows=options.num_windows,
                              rebalance_every=options.rebalance_every,
                              layers_per_step=options.layers_per_step,
                              ranks_per_node=options.ranks_per_node, max_moves=options.max_moves,
                              move_cost=options.move_cost)
        layers = [ExpertParallelMoE.from_dense(*(w.to(dtype) for w in weights), options.top_k,
                                               options.slots_per_rank, runtime=runtime, layer=idx)
                  for idx, weights in enumerate(dense)]
    generator = torch.Generator().manual_seed(options.seed * 7919 + rank)
    counts = []  # rows this rank received in each layer of the current step
    for layer in layers:
        _count_received(layer, counts)
    step_loads = []      # (steps, L, W) rows each rank received, per layer
    step_seconds = []
    all_equal = True
    for step in range(options.steps):
        num_tokens = options.tokens
        if rank == world_size - 1 and step % 5 == 4:
            num_tokens = 0  # a rank with no tokens now and then
        hidden = drifting_batch(dense[0][0], step, rank, world_size, num_tokens, generator,
                                period=options.period).to(dtype)
        counts.clear()
        with torch.inference_mode(inference):
            started = time.perf_counter()
            inputs, outputs = [], []
            for layer in layers:
                inputs.append(hidden)
                outputs.append(layer(hidden))
                hidden = hidden + outputs[-1]
            runtime.step()
            step_seconds.append(time.perf_counter() - started)
            for layer, weights, layer_input, out in zip(layers, dense, inputs, outputs):
                all_equal &= outputs_match(out, routed_reference(layer, weights, layer_input),
                                           options.dtype)
        gathered = [torch.zeros(len(layers), dtype=torch.int64) for _ in range(world_size)]
        dist.all_gather(gathered, torch.tensor(counts, dtype=torch.int64))
        step_loads.append(torch.stack(gathered, dim=1))
    flags = torch.tensor([1 if all_equal else 0])
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    if rank != 0:
        return None
    return dict(loads=torch.stack(step_loads).tolist(), seconds=step_seconds,
                equal=bool(flags.item()), rebalances=[vars(r) for r in runtime.rebalances],
                num_columns=runtime.num_columns)


def _count_received(layer, counts):
    """Appends to `counts` how many rows `layer` receives on this rank in
    each forward (the rank's load), through a wrapper on its experts()."""
    original = layer.experts

    def counting(recv_hidden, recv_slot):
        counts.append(int(recv_hidden.shape[0]))
        return original(recv_hidden, recv_slot)

    layer.experts = counting


# ---------------------------------------------------------------- report


def max_over_mean(loads):
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def report(log, options, out=sys.stdout):
    """Prints the per-window balance, the rebalances and the verdict; returns
    per step, per layer max/mean."""
    loads = log["loads"]  # (steps, L, W)
    steps, num_layers = len(loads), len(loads[0])
    per_step = [[max_over_mean(loads[s][layer]) for layer in range(num_layers)]
                for s in range(steps)]
    window = options.window_steps
    print("online EPLB: %d gloo ranks, %d MoE layers, %d experts top-%d, %d slots per rank, "
          "%d tokens per rank per step, %s mode, %s%s" % (
              options.world_size, num_layers, options.experts, options.top_k,
              options.slots_per_rank, options.tokens,
              "rank" if options.balance_mode == 0 else "token", options.dtype,
              ", inside torch.inference_mode()" if options.inference_mode else ""), file=out)
    print("rebalance every %d steps on the last %d windows of %d steps, %d layer(s) moved per "
          "step, move cost %g, max moves %s" % (
              options.rebalance_every, options.num_windows, window, options.layers_per_step,
              options.move_cost, "none" if options.max_moves is None else options.max_moves),
          file=out)
    rebalances = {r["step"]: r for r in log["rebalances"]}
    switched = {}
    for record in log["rebalances"]:
        if record["done_step"] is not None:
            switched.setdefault(record["done_step"], []).append(record)
    print("\nwindow  steps    max/mean per layer (measured: rows each rank received)", file=out)
    for start in range(0, steps, window):
        end = min(start + window, steps)
        totals = [[sum(loads[s][layer][r] for s in range(start, end))
                   for r in range(options.world_size)] for layer in range(num_layers)]
        ratios = "  ".join("%.3f" % max_over_mean(t) for t in totals)
        print("%6d  %3d-%-3d  %s" % (start // window, start + 1, end, ratios), file=out)
        for step in range(start + 1, end + 1):
            record = rebalances.get(step)
            if record is not None:
                print("        rebalance at step %s" % describe_rebalance(record), file=out)
            for record in switched.get(step, []):
                if record["installed_layers"]:
                    print("        step %d: the last layer of the rebalance at step %d switched "
                          "(weights and table, every rank)" % (step, record["step"]), file=out)
    installed = [(r, layer) for r in log["rebalances"] for layer in r["installed_layers"]]
    moved = sum(r["experts_moved"][layer] for r, layer in installed)
    moved_bytes = sum(r["bytes_moved"][layer] for r, layer in installed)
    effective = sum(1 for r in log["rebalances"] if r["installed_layers"])
    seconds = sorted(log["seconds"])
    print("\n%d rebalances (%d installed new tables), %d layer tables installed, %d experts and "
          "%d bytes moved in all" % (len(log["rebalances"]), effective, len(installed), moved,
                                     moved_bytes), file=out)
    print("median step %.1f ms, slowest %.1f ms (steps that migrate a layer)" % (
        1e3 * seconds[len(seconds) // 2], 1e3 * seconds[-1]), file=out)
    first = [sum(row) / num_layers for row in per_step[:window]]
    last = [sum(row) / num_layers for row in per_step[-window:]]
    print("max/mean per step, mean over layers: first window %.3f, last window %.3f" % (
        sum(first) / len(first), sum(last) / len(last)), file=out)
    print("every token's output matches the dense float64 reference (within %g of its norm, "
          "for %s): %s" % (TOLERANCE[options.dtype], options.dtype,
                           "yes" if log["equal"] else "no"), file=out)
    return per_step


def describe_rebalance(record):
    """One line on what a rebalance installed: per layer installed, the
    predicted max/mean on the last window before and after, and the moves."""
    installed = record["installed_layers"]
    if not record["layers"]:
        return "%d: no table changes (the tables in force stay)" % record["step"]
    parts = ["layer %d %.3f -> %.3f (%d experts, %d bytes)" % (
        layer, record["max_over_mean_before"][layer], record["max_over_mean_after"][layer],
        record["experts_moved"][layer], record["bytes_moved"][layer]) for layer in installed]
    if not parts and not record["dropped_layers"]:
        return "%d: planned layers %s; the run ended before they switched" % (
            record["step"], record["layers"])
    text = "%d: installed %s" % (record["step"], "; ".join(parts))
    if record["dropped_layers"]:
        text += "; dropped layers %s (a migration failed)" % record["dropped_layers"]
    return text + " (predicted max/mean on the last window)"


def balance_svg(per_step, rebalances, title):
    """An SVG line chart of max/mean per step, one line per layer, with a
    dashed line at each rebalance and a dotted one where it finished."""
    width, height, left, right, top, bottom = 720, 300, 56, 16, 36, 40
    steps = len(per_step)
    num_layers = len(per_step[0])
    top_value = max(1.5, math.ceil(max(max(row) for row in per_step) * 4) / 4)

    def x(step):
        return left + (width - left - right) * step / max(steps - 1, 1)

    def y(value):
        return top + (height - top - bottom) * (top_value - value) / (top_value - 1.0)

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'font-family="sans-serif" font-size="12">' % (width, height),
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="%d" y="20" font-size="14">%s</text>' % (left, _escape(title))]
    value = 1.0
    while value <= top_value + 1e-9:
        parts.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>'
                     % (left, width - right, y(value), y(value)))
        parts.append('<text x="%d" y="%.1f" text-anchor="end">%.2f</text>'
                     % (left - 6, y(value) + 4, value))
        value += 0.25
    for record in rebalances:
        parts.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#888" '
                     'stroke-dasharray="4,3"/>' % (x(record["step"] - 1), x(record["step"] - 1),
                                                    top, height - bottom))
        if record["done_step"] is not None and record["layers"]:
            parts.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#888" '
                         'stroke-dasharray="1,3"/>' % (x(record["done_step"] - 1),
                                                        x(record["done_step"] - 1), top,
                                                        height - bottom))
    for layer in range(num_layers):
        points = " ".join("%.1f,%.1f" % (x(s), y(row[layer])) for s, row in enumerate(per_step))
        color = colors[layer % len(colors)]
        parts.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>'
                     % (color, points))
        parts.append('<text x="%d" y="%d" fill="%s">layer %d</text>'
                     % (left + 70 * layer, height - 8, color, layer))
    parts.append('<text x="%d" y="%d" text-anchor="end">step (dashed: rebalance planned; '
                 'dotted: last layer switched)</text>' % (width - right, height - 8))
    parts.append('<text x="12" y="%d" transform="rotate(-90 12 %d)" text-anchor="middle">'
                 'max/mean rank load</text>' % (height // 2, height // 2))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--world-size", type=int, default=4, help="gloo ranks (processes)")
    add("--ranks-per-node", type=int, default=2, help="ranks per node (0: one node)")
    add("--layers", type=int, default=2)
    add("--experts", type=int, default=16)
    add("--slots-per-rank", type=int, default=5)
    add("--top-k", type=int, default=2)
    add("--hidden", type=int, default=16)
    add("--intermediate", type=int, default=8)
    add("--tokens", type=int, default=128, help="tokens per rank per step")
    add("--steps", type=int, default=48)
    add("--window-steps", type=int, default=4)
    add("--num-windows", type=int, default=2)
    add("--rebalance-every", type=int, default=8)
    add("--layers-per-step", type=int, default=1)
    add("--balance-mode", type=int, default=0, choices=(0, 1))
    add("--max-moves", type=int, default=None, help="per layer and rebalance (default: no cap)")
    add("--move-cost", type=float, default=0.02,
        help="max/mean a move must buy (the planner's option; 0: balance first)")
    add("--period", type=float, default=160.0, help="steps for the hot experts to drift by E/2")
    add("--seed", type=int, default=1)
    add("--dtype", default="auto", choices=("auto", "bfloat16", "float32", "float64"),
        help="the model's dtype (auto: bfloat16 where this CPU computes it, else float32)")
    add("--no-inference-mode", dest="inference_mode", action="store_false",
        help="run outside torch.inference_mode()")
    add("--svg", default="moe-eplb-online.svg", help="where to write the SVG ('' for none)")
    options = parser.parse_args(argv)
    options.dtype = resolve_dtype(options.dtype)
    return options


def main(argv=None):
    options = parse_args(argv)
    try:
        log = run_gloo_ranks(run_rank, options.world_size, (options,))[0]
    except RuntimeError as error:
        print("the online demo failed:\n%s" % error, file=sys.stderr)
        return 1
    per_step = report(log, options)
    if options.svg:
        with open(options.svg, "w") as svg:
            svg.write(balance_svg(per_step, log["rebalances"],
                                  "online EPLB: max/mean rank load per step, %d ranks"
                                  % options.world_size))
        print("wrote %s" % options.svg)
    return 0 if log["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
