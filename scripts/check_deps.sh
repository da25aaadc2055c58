#!/usr/bin/env bash
# Fails when a build or test run read a file from a Debian package that
# scripts/deps.sh does not install (directly or through its dependencies), so
# a package installed by hand cannot keep CI green while a fresh machine breaks.
#
#   check_deps.sh [--self-test] [--without PKG]... [--files LIST]... BUILD_DIR...
#
# BUILD_DIR: a built Ninja tree. LIST: absolute paths, one a line (e.g. what
# tests/python/conftest.py writes to $MOE_EPLB_MODULES_LOG). --without PKG:
# check as if PKG were not in deps.sh. --self-test: also check that dropping
# each listed package that the build needs is caught.
set -euo pipefail

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
without=() lists=() dirs=() self_test=0
while (($#)); do
  case $1 in
    --without) without+=("$2"); shift 2 ;;
    --files) lists+=("$2"); shift 2 ;;
    --self-test) self_test=1; shift ;;
    -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) echo "check_deps: unknown option $1" >&2; exit 2 ;;
    *) dirs+=("$1"); shift ;;
  esac
done
if ((${#dirs[@]} + ${#lists[@]} == 0)); then
  echo "usage: check_deps.sh [--self-test] [--without PKG]... [--files LIST]... BUILD_DIR..." >&2
  exit 2
fi
die() { echo "check_deps: $*" >&2; exit 2; }
ninja_dirs=()
for dir in "${dirs[@]}"; do
  [[ -d $dir ]] || die "$dir: no such directory"
  if [[ ! -f $dir/build.ninja ]]; then echo "check_deps: skipping $dir (no build.ninja)" >&2; continue; fi
  [[ -f $dir/.ninja_deps ]] || die "$dir: not built yet (no .ninja_deps); run cmake --build $dir first"
  ninja_dirs+=("$dir")
done
for list in "${lists[@]}"; do [[ -r $list ]] || die "--files $list: cannot read it"; done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The packages deps.sh installs, minus the simulated removals.
bash "$scripts/deps.sh" --print >"$work/listed"
for pkg in "${without[@]}"; do
  grep -qxF -- "$pkg" "$work/listed" || die "--without $pkg: not in scripts/deps.sh"
done
mapfile -t listed < <(grep -vxF -f <(printf '%s\n' "${without[@]}") "$work/listed")

# Prints lib$1.so or .a as the linker finds it: the -L dirs ($3...) first, then
# the compiler's ($2) own search path.
find_lib() {
  local name=$1 cxx=$2 dir ext found
  shift 2
  for dir in "$@"; do
    for ext in so a; do
      if [[ -e $dir/lib$name.$ext ]]; then echo "$dir/lib$name.$ext"; return; fi
    done
  done
  for ext in so a; do
    found=$("$cxx" -print-file-name="lib$name.$ext" 2>/dev/null || true)
    if [[ $found == /* ]]; then echo "$found"; return; fi
  done
}

# Prints every file a build dir's build read (duplicates, directories and
# missing paths included; filtered below).
collect_build() {
  local dir=$1 commands cxx name ldirs
  commands=$(ninja -C "$dir" -t commands)
  # Headers, from the compilers' depfiles.
  ninja -C "$dir" -t deps | awk '/^    \//{ print $1 }'
  # Compiles with -MMD (torch's cpp_extension) leave system headers out of the
  # depfile: rerun them preprocessing only (-M; -MG: a missing header does
  # not stop it) to list those too.
  grep -- ' -MMD ' <<<"$commands" |
    sed -E 's/ -MMD / -M -MG /; s/ -MF [^ ]+ / /; s/ -o [^ ]+/ -MF \/dev\/stdout -o \/dev\/null/' |
    (cd "$dir" && xargs -r -d '\n' -n1 -P "$(nproc)" bash -c 2>/dev/null) | tr -s '\\ ' '\n' || true
  # What CMake read while configuring (find_package configs, its modules).
  ninja -C "$dir" -t query build.ninja 2>/dev/null | awk '$NF ~ /^\// { print $NF }' || true
  # Absolute paths in the commands: tools, libraries, objects, include dirs.
  grep -oE '/usr/[^ :;,"]+' <<<"$commands" || true
  # Tools named without a path (and ninja itself), as the shell finds them.
  { tr -s ' \t' '\n' <<<"$commands" | sort -u |
    grep -E '(^|/)(c\+\+|g\+\+|gcc|clang\+\+|clang|nvcc|cmake|python3?|ar|ranlib)$' || true
    echo ninja; } | while IFS= read -r name; do command -v "$name" || true; done
  # -lfoo flags, through the -L dirs and then the compiler's search path.
  cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$dir/CMakeCache.txt" 2>/dev/null || true)
  mapfile -t ldirs < <(grep -oE -- '(^| )-L[^ ]+' <<<"$commands" | sed 's/^ *-L//' | sort -u)
  { grep -oE -- '(^| )-l[^ ]+' <<<"$commands" || true; } | sed 's/^ *-l//' | sort -u |
    while IFS= read -r name; do find_lib "$name" "${cxx:-c++}" "${ldirs[@]}"; done
}

# 1. Collect once: every existing file read, as "path<TAB>real path", kept
# when either form is under /usr (/lib/... is /usr/lib/... on merged-usr).
{
  for dir in "${ninja_dirs[@]}"; do collect_build "$dir"; done
  for list in "${lists[@]}"; do cat "$list"; done
} | sort -u | while IFS= read -r file; do
  if [[ $file == /* && -f $file ]]; then printf '%s\n' "$file"; fi
done >"$work/files"
xargs -r -d '\n' realpath -m -- <"$work/files" >"$work/real"
paste "$work/files" "$work/real" | awk -F'\t' '$1 ~ /^\/usr\// || $2 ~ /^\/usr\//' >"$work/pairs"

# 2. Owner of each file ("-" if none), from an index of dpkg's file lists
# (one dpkg -S per file would take minutes). dpkg may record either the path
# or its real path, and /lib/... for what is really /usr/lib/....
awk -F'\t' '
  FILENAME ~ /\.list$/ {
    if (FNR == 1) { pkg = FILENAME; sub(/.*\//, "", pkg); sub(/\.list$/, "", pkg); sub(/:.*/, "", pkg) }
    if (!($0 in owner)) owner[$0] = pkg
    if ($0 ~ /^\/(s?bin|lib[x0-9]*)\// && !("/usr" $0 in owner)) owner["/usr" $0] = pkg
    next
  }
  { pkg = ($1 in owner) ? owner[$1] : ($2 in owner) ? owner[$2] : "-"; print pkg "\t" $1 }
' /var/lib/dpkg/info/*.list "$work/pairs" | sort >"$work/owners"
if [[ -s $work/owners ]] && ! grep -qv '^-' "$work/owners"; then
  die "no file read maps to a Debian package: is /var/lib/dpkg/info/*.list readable?"
fi

# 3. Dependency graph of the listed packages, from one apt-cache call:
# "pkg<TAB>dep" lines; a virtual package ("<name>") points to its providers.
apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances "${listed[@]}" | awk '
  { name = $NF; gsub(/[<>]/, "", name); sub(/:.*/, "", name) }
  /^[^ ]/ { node = name; next }
  /^    / { print dep "\t" name; next }
  { dep = name; print node "\t" dep }
' >"$work/graph"
# Packages a minimal Debian has anyway.
dpkg-query -W -f='${Package} ${Priority} ${Essential}\n' |
  awk '$2 == "required" || $3 == "yes" { print $1 }' >"$work/base"

# Prints the packages allowed when deps.sh lists $@: those, all they pull in,
# and the base packages.
allowed() {
  awk -F'\t' -v roots="$*" '
    { next_of[$1] = next_of[$1] "\t" $2 }
    END {
      n = split(roots, todo, " ")
      for (i = 1; i <= n; i++) seen[todo[i]] = 1
      while (n > 0) {
        pkg = todo[n--]; print pkg
        m = split(substr(next_of[pkg], 2), deps, "\t")
        for (j = 1; j <= m; j++) if (!(deps[j] in seen)) { seen[deps[j]] = 1; todo[++n] = deps[j] }
      }
    }' "$work/graph"
  cat "$work/base"
}

# Compares the owners of the read files with an allowed-package list ($1):
# reports each package outside it (count, two examples); fails if any.
compare() {
  awk -F'\t' '
    NR == FNR { ok[$1] = 1; next }
    $1 == "-" || ($1 in ok) { next }
    $1 != last {
      if (last != "") report()
      last = $1; n = 0; examples = ""
    }
    { if (++n <= 2) examples = examples "\n  " $2 }
    function report() {
      printf "%s: %d files read, not installed by scripts/deps.sh, e.g.:%s\n", last, n, examples
      printf "add %s to scripts/deps.sh\n", last
      bad = 1
    }
    END { if (last != "") report(); exit bad }
  ' <(sort -u "$1") "$work/owners"
}

# 4. The check itself, then its summary. Files no package owns are allowed
# only under the machine image's CUDA toolkit (/usr/local/cuda*); anything
# else there was installed by hand, which a fresh machine lacks.
allowed "${listed[@]}" >"$work/allowed"
compare "$work/allowed" || exit 1
awk -F'\t' '$1 == "-" && $2 !~ /^\/usr\/local\/cuda[^\/]*\// {
  if (++n <= 3) printf "%s: read by the build, but no Debian package owns it\n", $2
} END { if (n) { printf "%d such files: install them from a package in scripts/deps.sh\n", n; exit 1 } }' \
  "$work/owners" || exit 1
awk -F'\t' '$1 == "-" {
  split($2, part, "/"); count["/" part[2] "/" part[3] "/" part[4]]++
} END { for (p in count) printf "not from a Debian package (machine image): %s (%d files)\n", p, count[p] }' \
  "$work/owners" | sort
awk -F'\t' '$1 == "-" { other++; next } { files++ } !($1 in seen) { seen[$1] = 1; pkgs++ }
  END { printf "deps: %d files from %d Debian packages, all installed by scripts/deps.sh (%d unowned under /usr)\n",
        files, pkgs, other }' "$work/owners"
((self_test)) || exit 0

# 5. Self-test: for each listed package that owns a read file and that no other
# listed package pulls in, the comparison must fail naming it once it is gone.
status=0 tested=0 skipped=()
cut -f1 "$work/owners" | sort -u >"$work/direct"
for pkg in "${listed[@]}"; do
  mapfile -t rest < <(printf '%s\n' "${listed[@]}" | grep -vxF -- "$pkg")
  allowed "${rest[@]}" >"$work/allowed-without"
  if ! grep -qxF -- "$pkg" "$work/direct" || grep -qxF -- "$pkg" "$work/allowed-without"; then
    skipped+=("$pkg")
  elif ((++tested)) && ! out=$(compare "$work/allowed-without") &&
    grep -qxF "add $pkg to scripts/deps.sh" <<<"$out"; then
    echo "self-test: removing $pkg -> fails as expected"
  else
    echo "self-test: removing $pkg -> NOT caught"
    status=1
  fi
done
echo "self-test: not applicable (own no file read, or pulled in by another listed package): ${skipped[*]}"
if ((tested == 0)); then echo "self-test: no package to remove; nothing was tested"; status=1; fi
exit "$status"
