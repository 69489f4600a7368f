#!/usr/bin/env bash
# The one prepared run for a GPU machine (the project's dev boxes have none): build the CUDA
# library for the local card only, run the CUDA side of the parity/opcheck/compile tests, then
# the op and pipeline benchmarks. Results go to $OUT (the device tool's folder) or to
# benchmarks/results/<card>/ when OUT is unset; a short table is printed at the end.
#
#   bash benchmarks/gpu_check.sh            # needs python3 with a CUDA torch >= 2.10, nvcc, cmake, ninja
#
# Budget: build ~2-3 min (one architecture), tests ~2 min, benchmarks ~3 min.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

arch=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}-real')") || {
  echo "no CUDA device visible to $PY" >&2
  exit 2
}
card=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
dest=${OUT:-benchmarks/results/$card}
mkdir -p "$dest"
echo "== build for $card ($arch)"
SKBUILD_BUILD_DIR=build/gpu-check GMFLOW_CUDA=ON GMFLOW_CUDA_ARCHS="$arch" \
  "$PY" -m pip install --no-build-isolation --no-deps -q . || exit 1
"$PY" -m gmflow.info | tee "$dest/gmflow_info.txt"

echo "== CUDA tests"
(cd tests && timeout 900 "$PY" -m pytest -q -p no:cacheprovider -k cuda \
  test_native_parity.py test_sampling_parity.py test_opcheck.py test_compile.py test_gradcheck.py \
  test_registration.py 2>&1 | tee "../$dest/cuda_tests.txt") || status=1

echo "== benchmarks"
"$PY" benchmarks/bench_ops.py --device cuda --min-time 0.5 --out "$dest/bench_ops.json" 2>&1 | tee "$dest/bench_ops.txt" || status=1
"$PY" benchmarks/bench_pipeline.py --device cuda --out "$dest/bench_pipeline.json" 2>&1 | tee "$dest/bench_pipeline.txt" || status=1

echo "== summary ($card)"
tail -n 1 "$dest/cuda_tests.txt"
"$PY" - "$dest/bench_ops.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
fmt = lambda x: "n/a" if x is None else f"{x:.1f}"
for r in rows:
    print(f"{r['shape']:<16} {r['op']:<20} {r['mode']:<8} {r['ms']['native']:8.3f} ms  "
          f"x eager {fmt(r['speedup_vs_eager']):>6}  x compile {fmt(r['speedup_vs_compile']):>6}")
EOF
exit $status
