#!/usr/bin/env python3
"""Summarises `moe-eplb replay --json` outputs as Markdown (bench/planner/run.sh).

    summarize_replays.py FOLDER NAME...   (FOLDER/NAME.K.json, draw K, for each suite scenario NAME)

Each scenario's draws are merged first: a policy's time-averaged max/mean is
the geometric mean over the draws, its slots changed and experts received
the arithmetic means, its largest change the largest of any draw. Prints, per family (the name's prefix: transient, persistent, mixed, drifting),
the geometric mean over its scenarios of each policy's time-averaged max/mean
and the mean share of slots changed per rebalance; then the drifting family
in detail, and how the capped migration-aware policy compares with replanning
from scratch.
"""

import glob
import json
import math
import sys

FAMILIES = ("transient", "persistent", "mixed", "drifting")


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def merge_draws(draws):
    """One policy record from the same policy's records of several draws."""
    def mean(values):
        return None if values[0] is None else sum(values) / len(values)
    return {
        "mean_max_over_mean": geomean([d["mean_max_over_mean"] for d in draws]),
        "mean_slots_changed": mean([d["mean_slots_changed"] for d in draws]),
        "max_slots_changed": None if draws[0]["max_slots_changed"] is None
        else max(d["max_slots_changed"] for d in draws),
        "experts_received": mean([d["experts_received"] for d in draws]),
    }


def main() -> None:
    folder, names = sys.argv[1], sys.argv[2:]
    replays = {}
    for name in names:
        paths = sorted(glob.glob(f"{folder}/{glob.escape(name)}.*.json"))
        if not paths:
            sys.exit(f"summarize_replays.py: no {folder}/{name}.K.json files")
        runs = []
        for path in paths:
            with open(path) as file:
                runs.append(json.load(file))
        replay = runs[0]
        slots = replay["world_size"] * replay["slots_per_rank"] * replay["layers"]
        policies = [p["name"] for p in replay["policies"]]
        replays[name] = (slots, {
            policy: merge_draws([next(p for p in run["policies"] if p["name"] == policy)
                                 for run in runs])
            for policy in policies})
    policies = list(next(iter(replays.values()))[1])

    print("Per family: geometric mean of the time-averaged max/mean, and the mean share of "
          "slots changed per rebalance.\n")
    print("| family | " + " | ".join(policies) + " |")
    print("|---|" + "---:|" * len(policies))
    for family in FAMILIES:
        members = [replays[n] for n in names if n.startswith(family + "-")]
        if not members:
            continue
        cells = []
        for policy in policies:
            balance = geomean([by_name[policy]["mean_max_over_mean"] for _, by_name in members])
            shares = [by_name[policy]["mean_slots_changed"] / slots for slots, by_name in members
                      if by_name[policy]["mean_slots_changed"] is not None]
            moved = f", {100 * sum(shares) / len(shares):.0f}% moved" if shares else ""
            cells.append(f"{balance:.3f}{moved}")
        print(f"| {family} | " + " | ".join(cells) + " |")

    drifting = [n for n in names if n.startswith("drifting-")]
    if not drifting:
        return
    print("\nDrifting family in detail:\n")
    print("| scenario | policy | time-avg max/mean | vs moe-eplb from scratch | slots changed "
          "per rebalance (mean) | max | experts received |")
    print("|---|---|---:|---:|---:|---:|---:|")
    ratios, shares, worst_share = [], [], 0.0
    for name in drifting:
        slots, by_name = replays[name]
        scratch = by_name["moe-eplb"]["mean_max_over_mean"]
        for policy, p in by_name.items():
            changed = p["mean_slots_changed"]
            moved = "-" if changed is None else f"{changed:.1f} ({100 * changed / slots:.1f}%)"
            most = "-" if p["max_slots_changed"] is None else f"{p['max_slots_changed']:.0f}"
            print(f"| {name[len('drifting-'):]} | {policy} | {p['mean_max_over_mean']:.4f} | "
                  f"{100 * (p['mean_max_over_mean'] / scratch - 1):+.1f}% | {moved} | {most} | "
                  f"{p['experts_received']:.0f} |")
        capped = by_name["moe-eplb-capped"]
        ratios.append(capped["mean_max_over_mean"] / scratch)
        shares.append(capped["mean_slots_changed"] / slots)
        worst_share = max(worst_share, capped["max_slots_changed"] / slots)
    print(f"\nDrifting, moe-eplb-capped against moe-eplb from scratch: time-averaged max/mean "
          f"{100 * (geomean(ratios) - 1):+.2f}% (geometric mean), worst scenario "
          f"{100 * (max(ratios) - 1):+.2f}%; slots changed per rebalance {100 * sum(shares) / len(shares):.1f}% "
          f"on average, at most {100 * worst_share:.1f}%\n")


if __name__ == "__main__":
    main()
