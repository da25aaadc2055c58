#!/usr/bin/env bash
# Shows the sm_90 machine code (SASS) of the CUDA kernels on a machine without
# a GPU or a CUDA disassembler: the CUDA 13 compiler here builds a cubin, and
# the nvdisasm of Debian's CUDA 11.8 package reads it once its ELF header is
# rewritten to the older ABI (the instructions are the same). Most questions
# about a kernel (are the loads 16 bytes wide, which loads wait for which,
# registers per thread) are answered here, at no device time.
#
#   bash scripts/sass.sh                          # register counts of every kernel
#   bash scripts/sass.sh 'UpdateExpertFlatKernel'
#                                                 # + SASS of the kernels matching a regex
#   SASS_FULL=1 bash scripts/sass.sh REGEX        # every instruction, not only memory,
#                                                 # branches and barriers
#
# Kernel names are mangled: UpdateExpertKernelI<i|l>LNS1_6SourceE<0-3>ELb<vector>ELb<record>E
# (i = int32 ids, l = int64; sources 0 table, 1 prepared, 2 table map, 3 prepared map).
# The first run downloads nvidia-cuda-toolkit (non-free, about 50 MB) from
# Debian's archive into $SASS_TOOLS without changing the system's apt sources.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${SASS_TOOLS:-/tmp/moe-eplb-sass-tools}
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
PATTERN=${1:-}
mkdir -p "$TOOLS"

nvdisasm_path() {
  for candidate in "$(command -v nvdisasm || true)" /usr/local/cuda/bin/nvdisasm \
    "$TOOLS/usr/bin/nvdisasm"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      echo "$candidate"
      return
    fi
  done
}

NVDISASM=$(nvdisasm_path)
if [ -z "$NVDISASM" ]; then
  echo "sass.sh: fetching nvdisasm from Debian's nvidia-cuda-toolkit (non-free) into $TOOLS" >&2
  APT=(-o "Dir::Etc::SourceList=$TOOLS/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$TOOLS/lists" -o "Dir::Cache=$TOOLS/cache" -o "Debug::NoLocking=1")
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
    "http://deb.debian.org/debian bookworm non-free" >"$TOOLS/sources.list"
  mkdir -p "$TOOLS/lists/partial" "$TOOLS/cache/archives/partial"
  apt-get "${APT[@]}" update -qq >&2
  (cd "$TOOLS" && apt-get "${APT[@]}" download nvidia-cuda-toolkit >&2)
  dpkg-deb -x "$TOOLS"/nvidia-cuda-toolkit_*.deb "$TOOLS/extracted"
  ln -sf "$TOOLS/extracted/usr" "$TOOLS/usr"
  NVDISASM=$TOOLS/usr/bin/nvdisasm
fi

CUBIN=$TOOLS/update_expert_kernels.cubin
"$NVCC" -std=c++17 -O3 -arch=sm_90 -I"$ROOT/include" -I"$ROOT/src" -cubin -Xptxas -v \
  "$ROOT/src/cuda/update_expert_launch.cu" -o "$CUBIN" 2>"$TOOLS/ptxas.log"

# Registers per kernel, from ptxas: 32 or fewer keep 8 blocks of 256 threads per SM.
python3 - "$TOOLS/ptxas.log" <<'EOF'
import re, sys
name = None
for line in open(sys.argv[1]):
    m = re.search(r"entry function '(\S+)'", line)
    if m:
        name = m.group(1)
        continue
    m = re.search(r"Used (\d+) registers", line)
    if m and name:
        short = re.search(r"UpdateExpert\w*?Kernel\w*?E(?=vNS)", name)
        print("%4s registers  %s" % (m.group(1), short.group(0) if short else name))
        name = None
EOF

[ -n "$PATTERN" ] || exit 0
SASS=$TOOLS/update_expert_kernels.sass
if ! "$NVDISASM" -c "$CUBIN" >"$SASS" 2>/dev/null; then
  # An older nvdisasm: rewrite the header to ELF ABI 7 with sm_90 flags.
  python3 - "$CUBIN" "$TOOLS/old_abi.cubin" <<'EOF'
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
data[8] = 7                                     # EI_ABIVERSION
struct.pack_into("<I", data, 0x30, 0x5A055A)    # e_flags: sm_90, virtual sm_90
open(sys.argv[2], "wb").write(data)
EOF
  "$NVDISASM" -c "$TOOLS/old_abi.cubin" >"$SASS"
fi
awk -v pattern="$PATTERN" -v full="${SASS_FULL:-0}" '
  /^[ \t]*\.text\./ { show = ($0 ~ pattern); if (show) print "\n" $0; next }
  !show { next }
  full == 1 || /LDG|STG|LDS|STS|LDC|ATOM|RED|BRA|BAR|EXIT|^\.L/ { print }
' "$SASS"
