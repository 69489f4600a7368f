#!/usr/bin/env bash
# Assembles a CUDA 12 toolkit (nvcc and what it needs) in a folder, from package registries only:
#   bash tools/cuda12_toolkit.sh DEST
# PyPI's nvidia-cuda-nvcc-cu12 ships ptxas, the crt headers and libNVVM but not the nvcc driver,
# cicc, cudafe++, fatbinary or nvlink; Debian's non-free nvidia-cuda-toolkit (trixie, CUDA 12.4)
# ships those (NVIDIA's own binaries). So: the compiler binaries come from that .deb (downloaded
# with a private apt configuration, nothing is installed on the system), and the headers,
# libdevice and libcudart.so.12 from PyPI's packages of the same CUDA minor. The result has the
# usual toolkit layout (bin/nvcc, nvvm/bin/cicc, include/, lib64/) for CMake's CUDAToolkit_ROOT.
# Idempotent: a DEST holding a working bin/nvcc is left as it is. Prints DEST/bin/nvcc's version.
set -euo pipefail

DEST=${1:?usage: cuda12_toolkit.sh DEST}
DEBIAN_SUITE=trixie
PYTHON=${PYTHON:-python3}

if [[ -x "$DEST/bin/nvcc" ]] && "$DEST/bin/nvcc" --version > /dev/null 2>&1; then
  "$DEST/bin/nvcc" --version | grep release
  exit 0
fi
rm -rf "$DEST"
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
STAGE="$DEST/.staging"
mkdir -p "$STAGE/apt/lists/partial" "$STAGE/apt/cache/archives/partial" "$STAGE/deb"

# Debian's compiler binaries: an apt configuration of our own (its sources, lists and cache
# under $STAGE) so the system's apt state is neither read nor changed.
echo "deb http://deb.debian.org/debian $DEBIAN_SUITE non-free" > "$STAGE/apt/sources.list"
apt_opts=(-q -o Dir::Etc::SourceList="$STAGE/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o Dir::State::Lists="$STAGE/apt/lists" -o Dir::Cache="$STAGE/apt/cache"
          -o Dir::State::status=/dev/null -o APT::Update::Error-Mode=any -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update > "$STAGE/apt-update.log" 2>&1 || { cat "$STAGE/apt-update.log"; exit 1; }
(cd "$STAGE/deb" && apt-get "${apt_opts[@]}" download nvidia-cuda-toolkit > /dev/null)
dpkg-deb -x "$STAGE"/deb/nvidia-cuda-toolkit_*.deb "$STAGE/deb/root"
deb_bin="$STAGE/deb/root/usr/lib/nvidia-cuda-toolkit/bin"
mkdir -p "$DEST/bin/crt" "$DEST/nvvm/bin" "$DEST/lib64"
cp "$deb_bin/nvcc" "$deb_bin"/crt/*.stub "$DEST/bin/" && mv "$DEST"/bin/*.stub "$DEST/bin/crt/"
cp "$deb_bin/cicc" "$DEST/nvvm/bin/"
for tool in ptxas cudafe++ fatbinary nvlink bin2c nvprune cuobjdump; do
  cp "$STAGE/deb/root/usr/bin/$tool" "$DEST/bin/"
done
# The toolkit's own layout, found relative to nvcc (Debian's profile points into /usr).
cat > "$DEST/bin/nvcc.profile" <<'EOF'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
EOF
release=$("$DEST/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\),.*/\1/p')
[[ "$release" == 12.* ]] || { echo "Debian's nvcc is CUDA '$release', not 12.x"; exit 1; }

# Headers, libdevice and the runtime library: PyPI's packages of the same CUDA minor.
PIP_CONSTRAINT=/dev/null "$PYTHON" -m pip install -q --no-deps --only-binary=:all: --target "$STAGE/pypi" \
  "nvidia-cuda-runtime-cu12==$release.*" "nvidia-cuda-nvcc-cu12==$release.*" "nvidia-cuda-cccl-cu12==$release.*" \
  > "$STAGE/pip.log" 2>&1 || { cat "$STAGE/pip.log"; exit 1; }
nv="$STAGE/pypi/nvidia"
mkdir -p "$DEST/include"
cp -r "$nv"/cuda_runtime/include/. "$nv"/cuda_nvcc/include/. "$nv"/cuda_cccl/include/. "$DEST/include/"
cp -r "$nv/cuda_nvcc/nvvm/libdevice" "$DEST/nvvm/"
cp "$nv/cuda_runtime/lib/libcudart.so.12" "$DEST/lib64/"
ln -s libcudart.so.12 "$DEST/lib64/libcudart.so"
# nvcc links every program with -lcudadevrt, the device runtime of relocatable device code (-rdc),
# which gmflow does not use and no package here ships: an empty archive satisfies the link.
ar rc "$DEST/lib64/libcudadevrt.a"
find "$DEST/include" -name '__init__.py' -delete
find "$DEST/include" -name '__pycache__' -prune -exec rm -rf {} +
rm -rf "$STAGE"
"$DEST/bin/nvcc" --version | grep release
