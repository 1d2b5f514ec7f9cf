#!/usr/bin/env bash
# Builds everything, checks the style (ruff, clang-format), then runs the C++ tests (ctest) and the
# Python tests (pytest).
#   ./test.sh                   everything
#   ./test.sh tests/test_nest.py -k pack   extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
export TB_CPP_TESTS=ON
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
tb_setup

echo "[test] style (ruff, clang-format)"
ruff check --quiet .
# shellcheck disable=SC2046
clang-format --dry-run --Werror $(find nest libtorchbeast envs_native \( -name '*.cc' -o -name '*.h' \) -print)

build_dir="$(python - <<'PY'
import glob, os
dirs = [d for d in glob.glob("build/*") if os.path.exists(os.path.join(d, "CTestTestfile.cmake"))]
print(max(dirs, key=os.path.getmtime) if dirs else "")
PY
)"
if [ -z "$build_dir" ]; then echo "[test] no CMake build directory with tests under build/" >&2; exit 1; fi
echo "[test] C++ tests (ctest in $build_dir)"
ctest --test-dir "$build_dir" --output-on-failure -j2

echo "[test] Python tests"
export MUJOCO_GL="${MUJOCO_GL:-osmesa}"
python -m pytest --durations=25 "$@"
