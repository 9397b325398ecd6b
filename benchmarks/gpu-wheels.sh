#!/usr/bin/env bash
# The server packages the device machine's Python lacks, as wheels for it (CPython 3.12, x86-64 Linux), in the
# versions installed here, downloaded into .whl/ (ignored by git; carried with the run). 46 MB, av 36 of it.
#
#   benchmarks/gpu-wheels.sh [PYTHON_VERSION]      (default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
mkdir -p .whl
pkgs=(fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv typing-inspection
      annotated-types typing-extensions opentelemetry-api websockets python-multipart av zstandard lz4)
pins=$(python3 - "${pkgs[@]}" <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${1:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl $pins
ls -la .whl
du -sh .whl
