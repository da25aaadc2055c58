#!/usr/bin/env python3
"""Pairs two `moe_eplb_bench_windows --per-draw` files draw by draw (bench/planner/run.sh).

    pair_draws.py NEW.csv OLD.csv [PLANNER]

For each suite scenario and mode, the ratio NEW / OLD of PLANNER's max/mean
(default moe-eplb) on the same draws: its geometric mean, one standard error
of the mean log ratio, and the draws where NEW is worse; then the same per
family (every draw of the family's scenarios). A ratio more than two standard
errors above 1 is marked as a loss beyond noise. Prints Markdown.
"""

import csv
import math
import sys


def read(path, planner):
    values = {}
    with open(path) as file:
        for row in csv.DictReader(file):
            if row["planner"] == planner:
                values[(row["scenario"], row["mode"], int(row["draw"]))] = float(row["max_over_mean"])
    return values


def family(scenario):
    """The suite family of a scenario name: "noisy-mixed-qwen3-ep16" -> "noisy-mixed"."""
    parts = scenario.split("-")
    return "-".join(parts[:2]) if parts[0] == "noisy" else parts[0]


def paired(logs):
    """(ratio, standard error of the ratio, beyond noise) of paired log ratios."""
    n = len(logs)
    mean = sum(logs) / n
    error = math.sqrt(sum((v - mean) ** 2 for v in logs) / (n - 1) / n) if n > 1 else 0.0
    ratio = math.exp(mean)
    return ratio, ratio * error, mean > 2 * error and ratio > 1 + 5e-4


def table(new, old, groups, group_of, label, plural):
    """One Markdown row per group of scenarios: NEW / OLD per mode over the group's draws."""
    print(f"| {label} | draws | rank: new / old | worse draws | token: new / old | worse draws |")
    print("|---|---:|---:|---:|---:|---:|")
    beyond = {"rank": [], "token": []}
    for group in groups:
        cells = []
        for mode in ("rank", "token"):
            logs = [math.log(new[key] / old[key]) for key in new
                    if group_of(key[0]) == group and key[1] == mode and key in old]
            ratio, error, loss = paired(logs)
            worse = sum(v > math.log1p(5e-4) for v in logs)
            if loss:
                beyond[mode].append(group)
            mark = " (beyond noise)" if loss else ""
            cells += [f"{ratio:.4f} +- {error:.4f}{mark}", f"{worse}/{len(logs)}"]
        print(f"| {group} | {len(logs)} | " + " | ".join(cells) + " |")
    for mode, names in beyond.items():
        print(f"\n{mode} mode, {plural} where new is worse than old by more than two standard "
              f"errors: {', '.join(names) if names else 'none'}", end="")
    print("\n")


def main() -> None:
    new_path, old_path = sys.argv[1], sys.argv[2]
    planner = sys.argv[3] if len(sys.argv) > 3 else "moe-eplb"
    new, old = read(new_path, planner), read(old_path, planner)
    scenarios = list(dict.fromkeys(key[0] for key in new))
    table(new, old, scenarios, lambda scenario: scenario, "scenario", "scenarios")
    table(new, old, list(dict.fromkeys(family(s) for s in scenarios)), family, "family", "families")


if __name__ == "__main__":
    main()
