#!/usr/bin/env bash
# The one prepared run for a GPU machine (the project's dev boxes have none): build the CUDA
# library for the local card only, run the CUDA side of the parity/opcheck/compile tests under
# compute-sanitizer memcheck (initcheck on a short subset), the op and pipeline benchmarks, and
# end with one table: per op the max error vs the CPU kernel, time, GB/s and % of a device memcpy
# of the same bytes (benchmarks/cuda_table.py). Results go to $OUT (the device tool's folder) or
# to benchmarks/results/<card>/ when OUT is unset.
#
#   bash benchmarks/gpu_check.sh            # needs python3 with a CUDA torch >= 2.10, nvcc, cmake, ninja
#
# Budget (one H100/H200, 10 minutes in all): build ~2-3 min (one architecture), tests under
# memcheck ~3-4 min, initcheck ~30 s, benchmarks ~2 min (no torch.compile baseline), table ~20 s.
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

# compute-sanitizer sees every allocation only without torch's caching allocator (a pooled
# block would hide an out-of-bounds access); any report makes it exit non-zero.
sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
CUDA_TESTS=(test_native_parity.py test_sampling_parity.py test_opcheck.py test_compile.py test_gradcheck.py
            test_registration.py)
echo "== CUDA tests under compute-sanitizer memcheck"
(cd tests && PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 330 "$sanitizer" --tool memcheck --error-exitcode 1 \
  "$PY" -m pytest -q -p no:cacheprovider -k cuda "${CUDA_TESTS[@]}" 2>&1 | tee "../$dest/cuda_tests_memcheck.txt") || status=1
echo "== initcheck (short subset)"
(cd tests && PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 "$sanitizer" --tool initcheck --error-exitcode 1 \
  "$PY" -m pytest -q -p no:cacheprovider -k "cuda and (empty or zero or many_components)" \
  test_native_parity.py test_sampling_parity.py 2>&1 | tee "../$dest/cuda_tests_initcheck.txt") || status=1

echo "== benchmarks"
timeout 150 "$PY" benchmarks/bench_ops.py --device cuda --min-time 0.3 --no-compile --out "$dest/bench_ops.json" 2>&1 \
  | tee "$dest/bench_ops.txt" || status=1
timeout 90 "$PY" benchmarks/bench_pipeline.py --device cuda --out "$dest/bench_pipeline.json" 2>&1 \
  | tee "$dest/bench_pipeline.txt" || status=1

echo "== summary ($card)"
echo "memcheck:  $(tail -n 1 "$dest/cuda_tests_memcheck.txt")"
echo "initcheck: $(tail -n 1 "$dest/cuda_tests_initcheck.txt")"
timeout 60 "$PY" benchmarks/cuda_table.py --out "$dest/cuda_table.json" 2>&1 | tee "$dest/cuda_table.txt" || status=1
exit $status
