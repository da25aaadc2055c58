#!/usr/bin/env bash
# cli_diff_test.sh MOE_EPLB WORKDIR: `moe-eplb diff` on hand-made table pairs
# whose numbers are worked out below, and its errors. Fails (exit 1) with the
# command and its output on the first unexpected result.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case_name=diff
tool=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
cd "$work"

source "$here/cli_lib.sh"

# 4 ranks x 3 slots, 2 ranks per node (slots 0-5 on node 0). Old placement:
#   rank 0: e0 e1 e2 | rank 1: e1 -  e3 | rank 2: e0 -  e4 | rank 3: -  -  e5
# New: e0 also on slots 4 (rank 1) and 9 (rank 3), e1 also on 7 (rank 2) and
# 10 (rank 3). Rank 1 receives e0 from rank 0 and rank 3 from rank 2 (same
# node); ranks 2 and 3 receive e1 from node 0 (cross-node), one from each
# holder. 4 of 12 slots change; received per rank 0 1 1 2.
old_rows=(2 0 6 -1 -1  2 1 3 -1 -1  1 2 -1 -1 -1  1 5 -1 -1 -1  1 8 -1 -1 -1  1 11 -1 -1 -1)
new_rows=(4 0 6 4 9  4 1 3 7 10  1 2 -1 -1 -1  1 5 -1 -1 -1  1 8 -1 -1 -1  1 11 -1 -1 -1)
# The old table swapped within rank 0 (e0 <-> e1): two local copies.
swap_rows=(2 1 6 -1 -1  2 0 3 -1 -1  1 2 -1 -1 -1  1 5 -1 -1 -1  1 8 -1 -1 -1  1 11 -1 -1 -1)
npy_int32 old.npy "(6, 5)" "${old_rows[@]}"
npy_int32 new.npy "(6, 5)" "${new_rows[@]}"
npy_int32 swap.npy "(6, 5)" "${swap_rows[@]}"
npy_int32 old2.npy "(2, 6, 5)" "${old_rows[@]}" "${old_rows[@]}"
npy_int32 new2.npy "(2, 6, 5)" "${new_rows[@]}" "${swap_rows[@]}"
topology=(--world-size 4 --slots-per-rank 3)

run "$tool" diff --from old.npy --to new.npy "${topology[@]}" --ranks-per-node 2 \
  --expert-bytes 1000
expect "old.npy -> new.npy: 1 layer of 6 experts on 4 ranks x 3 slots, 2 ranks per node" out.txt
expect "layer 0: 4 of 12 slots changed (33.3%); experts received per rank max 2, mean 1.00; 4 receives (2 cross-node), 0 local copies, 8 kept; 4000 bytes received (4.0kB), max 2.0kB on one rank" out.txt
# One node: no receive crosses nodes; no --expert-bytes: no bytes.
run "$tool" diff --from old.npy --to new.npy "${topology[@]}"
expect "4 receives (0 cross-node), 0 local copies, 8 kept" out.txt
grep -q "bytes" out.txt && fail "bytes printed without --expert-bytes"
run "$tool" diff --from old.npy --to swap.npy "${topology[@]}"
expect "layer 0: 2 of 12 slots changed (16.7%); experts received per rank max 0, mean 0.00; 0 receives (0 cross-node), 2 local copies, 10 kept" out.txt
run "$tool" diff --from old.npy --to old.npy "${topology[@]}"
expect "layer 0: 0 of 12 slots changed (0.0%)" out.txt

# Per-layer files: each layer, then the total (per-rank counts summed).
run "$tool" diff --from old2.npy --to new2.npy "${topology[@]}" --ranks-per-node 2 \
  --expert-bytes 10
expect "2 layers of 6 experts" out.txt
expect "layer 0: 4 of 12 slots changed (33.3%)" out.txt
expect "layer 1: 2 of 12 slots changed (16.7%); experts received per rank max 0, mean 0.00; 0 receives (0 cross-node), 2 local copies, 10 kept" out.txt
expect "total: 6 of 24 slots changed (25.0%); experts received per rank max 2, mean 1.00; 4 receives (2 cross-node), 2 local copies, 18 kept; 40 bytes received (40B), max 20B on one rank" out.txt

run "$tool" diff --from old2.npy --to new2.npy "${topology[@]}" --ranks-per-node 2 \
  --expert-bytes 10 --json
tr -d ' \n' <out.txt >flat.txt
expect '"layer":0' flat.txt
expect '"received_per_rank":[0,1,1,2]' flat.txt
expect '"sent_per_rank":[2,1,1,0]' flat.txt
expect '"slots_changed":6' flat.txt
expect '"total":{"bytes_received":40' flat.txt
expect '"cross_node_receives":2' flat.txt
expect '"local_copies":2' flat.txt

# Errors: exit 1 with a message naming the flag.
npy_int32 five.npy "(5, 5)" "${old_rows[@]:0:25}"
run_fails "diff(): --from has 1 layer(s) of 6 experts but --to has 1 layer(s) of 5 experts" \
  "$tool" diff --from old.npy --to five.npy "${topology[@]}"
run_fails "diff(): --from has 2 layer(s) of 6 experts but --to has 1 layer(s)" \
  "$tool" diff --from old2.npy --to new.npy "${topology[@]}"
bad_rows=("${new_rows[@]}")
bad_rows[26]=12  # e5's slot: outside 0..11
npy_int32 bad.npy "(6, 5)" "${bad_rows[@]}"
run_fails "diff(): --to bad.npy, layer 0 is not a valid table for 4 ranks x 3 slots" \
  "$tool" diff --from old.npy --to bad.npy "${topology[@]}"
run_fails "slot 12 is outside" "$tool" diff --from old.npy --to bad.npy "${topology[@]}"
run_fails "diff(): --from old.npy, layer 0 is not a valid table for 2 ranks x 3 slots" \
  "$tool" diff --from old.npy --to old.npy --world-size 2 --slots-per-rank 3
run_fails "moe-eplb: error: --expert-bytes: must be 0 or more, got -5" \
  "$tool" diff --from old.npy --to new.npy "${topology[@]}" --expert-bytes -5
run_fails "diff(): --ranks-per-node must be 0 (one node) or divide --world-size 4, got 3" \
  "$tool" diff --from old.npy --to new.npy "${topology[@]}" --ranks-per-node 3
run_fails "moe-eplb: error: --slots-per-rank: must be in 1.." \
  "$tool" diff --from old.npy --to new.npy --world-size 4 --slots-per-rank 0
run_fails "--from" "$tool" diff --from missing.npy --to new.npy "${topology[@]}"
npy_int32 flat.npy "(30,)" "${old_rows[@]}"
run_fails "expected an (E, F) table or (L, E, F) tables" \
  "$tool" diff --from flat.npy --to new.npy "${topology[@]}"
echo "cli_diff_test: ok"
