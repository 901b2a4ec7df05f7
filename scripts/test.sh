#!/usr/bin/env bash
# The test command: creates .venv from nothing, installs the package with its test
# extras, lints, and runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# .[dev] pulls in every extra (seg, serve, scale: Ray), so CI runs all their tests.
.venv/bin/pip install -q -e ".[dev]"
# The original SAM 2 code, for the checkpoint-parity test: a source package whose CUDA
# extension is optional; build it without isolation so it uses the torch installed above.
.venv/bin/python -c "import sam2" 2>/dev/null ||
  SAM2_BUILD_CUDA=0 .venv/bin/pip install -q --no-build-isolation "sam2>=1.1" "hydra-core>=1.3" "iopath>=0.1.10"
.venv/bin/ruff check .
.venv/bin/pytest "$@"
