#!/usr/bin/env bash
# Shared setup for ./test.sh and ./run.sh: system packages, a .venv with torch, the package built.
# Sourced, not executed: it leaves the venv activated. A second run only rebuilds what changed.
#
#   TB_VENV      where the virtual environment lives (default: <repo>/.venv)
#   TB_EXTRAS    pip extras to install with the package (default: test)
#   TB_CPP_TESTS ON (default) also builds the GoogleTest binaries, so test.sh and run.sh share one build

TB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TB_VENV="${TB_VENV:-$TB_ROOT/.venv}"
TB_EXTRAS="${TB_EXTRAS:-test}"
TB_CPP_TESTS="${TB_CPP_TESTS:-ON}"

# Debian/Ubuntu packages: compilers, gRPC/protobuf/GoogleTest for the C++ core, headless GL for
# MuJoCo (EGL on GPUs, OSMesa on CPUs), ffmpeg for videos, clang-format for ./test.sh's style check,
# clang with libFuzzer and the sanitizer runtimes for the fuzz target (fuzz/, tests/test_fuzz.py).
TB_APT_PACKAGES="build-essential cmake ninja-build pkg-config python3-venv python3-dev clang-format
  clang-14 libclang-rt-14-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libgtest-dev
  libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 ffmpeg
  openssl iproute2"  # certificates for mutual TLS (scripts/make_certs.sh); network namespaces for multi-host tests

tb_log() { printf '[setup] %s\n' "$*" >&2; }

tb_missing_apt_packages() {
  local missing=() p
  for p in $TB_APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

tb_install_system_packages() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    tb_log "not a Debian/Ubuntu machine: install these yourself, then run me again:"
    tb_log "  a C++17 compiler, cmake>=3.18, ninja, gRPC (C++), protobuf, GoogleTest, OSMesa or EGL, ffmpeg"
    tb_log "  with conda: conda env create -f environment.yml && conda activate torchbeast-mm"
    if ! command -v cmake >/dev/null 2>&1; then return 1; fi
    return 0
  fi
  local missing
  missing="$(tb_missing_apt_packages)"
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    tb_log "missing system packages; as root run:"
    tb_log "  apt-get install -y $missing"
    return 1
  fi
  tb_log "installing system packages: $missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq $missing >/dev/null || {
    tb_log "apt-get install failed for: $missing"; return 1; }
}

tb_setup_venv() {
  local py="${PYTHON:-python3}"
  if [ ! -x "$TB_VENV/bin/python" ]; then
    tb_log "creating virtual environment $TB_VENV"
    "$py" -m venv "$TB_VENV" || { tb_log "could not create a venv with $py (apt-get install python3-venv)"; return 1; }
    "$TB_VENV/bin/python" -m pip install -q --upgrade pip
  fi
  # shellcheck disable=SC1091
  . "$TB_VENV/bin/activate"
  if ! python -c "import torch" >/dev/null 2>&1; then
    tb_log "installing torch==2.13.0"
    pip install -q "torch==2.13.0" || return 1
  fi
  # Build requirements live in the venv so rebuilds need no isolated build environment. mujoco is
  # one: envs_native compiles against the headers and libmujoco of the very mujoco it runs with.
  python -c "import scikit_build_core, pybind11, mujoco" >/dev/null 2>&1 ||
    pip install -q "scikit-build-core>=0.10" "pybind11>=2.10" "mujoco>=3.2,<4" || return 1
}

tb_build() {
  # The first install resolves the dependencies; later ones only rebuild the C++ (incremental).
  local stamp="$TB_VENV/.torchbeast-mm-installed"
  local want
  want="$(cat "$TB_ROOT/pyproject.toml" | sha1sum | cut -c1-12)-$TB_EXTRAS"
  local deps_flag="--no-deps"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    tb_log "installing torchbeast-mm[$TB_EXTRAS] and its dependencies"
    deps_flag=""
  fi
  (cd "$TB_ROOT" && pip install -q $deps_flag --no-build-isolation \
      -Ccmake.define.TB_BUILD_TESTS="$TB_CPP_TESTS" -e ".[$TB_EXTRAS]") || {
    tb_log "build failed (see the compiler output above)"; return 1; }
  echo "$want" >"$stamp"
}

tb_setup() {
  tb_install_system_packages && tb_setup_venv && tb_build
}
