# Shared by the planner commands' end-to-end tests (cli_plan_test.sh,
# cli_diff_test.sh, cli_replay_test.sh); sourced after `cd` into the work
# folder, with $case_name set for the failure messages.

fail() {
  echo "FAIL [$case_name]: $*" >&2
  exit 1
}

# run CMD...: must succeed; its stdout+stderr land in out.txt.
run() {
  if ! "$@" >out.txt 2>&1; then
    cat out.txt >&2
    fail "command failed: $*"
  fi
}

# run_fails PATTERN CMD...: must exit 1 and print PATTERN (fixed string).
run_fails() {
  local pattern=$1
  shift
  local status=0
  "$@" >out.txt 2>&1 || status=$?
  [[ $status -eq 1 ]] || { cat out.txt >&2; fail "expected exit 1, got $status: $*"; }
  grep -qF -- "$pattern" out.txt || { cat out.txt >&2; fail "expected '$pattern' from: $*"; }
}

expect() {  # expect PATTERN FILE
  grep -qF -- "$1" "$2" || { cat "$2" >&2; fail "expected '$1' in $2"; }
}

# npy_int32 FILE SHAPE VALUES...: writes an int32 .npy (format 1.0) with bash only.
npy_int32() {
  local file=$1 shape=$2
  shift 2
  local header="{'descr': '<i4', 'fortran_order': False, 'shape': $shape, }"
  local total=$((10 + ${#header} + 1))
  local pad=$(((64 - total % 64) % 64))
  header="$header$(printf '%*s' "$pad" '')"
  local length=$((${#header} + 1))
  {
    printf '\x93NUMPY\x01\x00'
    printf "\\x$(printf '%02x' $((length & 255)))\\x$(printf '%02x' $((length >> 8)))"
    printf '%s\n' "$header"
    local value
    for value in "$@"; do
      value=$((value & 0xffffffff))
      printf "\\x$(printf '%02x' $((value & 255)))\\x$(printf '%02x' $(((value >> 8) & 255)))"
      printf "\\x$(printf '%02x' $(((value >> 16) & 255)))\\x$(printf '%02x' $((value >> 24)))"
    done
  } >"$file"
}
