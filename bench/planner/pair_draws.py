#!/usr/bin/env python3
"""Pairs two `moe_eplb_bench_windows --per-draw` files draw by draw (bench/planner/run.sh).

    pair_draws.py NEW.csv OLD.csv [PLANNER]

For each suite scenario and mode, the ratio NEW / OLD of PLANNER's max/mean
(default moe-eplb) on the same draws: its geometric mean, one standard error
of the mean log ratio, and the draws where NEW is worse. A ratio more than two
standard errors above 1 is marked as a loss beyond noise. Prints Markdown.
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


def main() -> None:
    new_path, old_path = sys.argv[1], sys.argv[2]
    planner = sys.argv[3] if len(sys.argv) > 3 else "moe-eplb"
    new, old = read(new_path, planner), read(old_path, planner)
    scenarios = list(dict.fromkeys(key[0] for key in new))
    print(f"| scenario | rank: new / old | worse draws | token: new / old | worse draws |")
    print("|---|---:|---:|---:|---:|")
    beyond = {"rank": [], "token": []}
    for scenario in scenarios:
        cells = []
        for mode in ("rank", "token"):
            logs = [math.log(new[key] / old[key]) for key in new
                    if key[0] == scenario and key[1] == mode and key in old]
            n = len(logs)
            mean = sum(logs) / n
            error = math.sqrt(sum((v - mean) ** 2 for v in logs) / (n - 1) / n) if n > 1 else 0.0
            worse = sum(v > math.log1p(5e-4) for v in logs)
            ratio = math.exp(mean)
            mark = " (beyond noise)" if mean > 2 * error and ratio > 1 + 5e-4 else ""
            if mark:
                beyond[mode].append(scenario)
            cells += [f"{ratio:.4f} +- {ratio * error:.4f}{mark}", f"{worse}/{n}"]
        print(f"| {scenario} | " + " | ".join(cells) + " |")
    for mode, names in beyond.items():
        print(f"\n{mode} mode, new worse than old by more than two standard errors: "
              f"{', '.join(names) if names else 'none'}", end="")
    print("\n")


if __name__ == "__main__":
    main()
