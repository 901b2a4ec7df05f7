#!/usr/bin/env bash
# A Label Studio server for the Label Studio tests, in its own environment
# (.venv-label-studio): label-studio pins Django and much else, so it stays out of .venv.
# tests/test_label_studio.py starts it on a free loopback port with SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-label-studio/bin/label-studio ]; then
  python3 -m venv .venv-label-studio
  .venv-label-studio/bin/pip install -q "label-studio>=1.20"
fi
.venv-label-studio/bin/python -c "import label_studio; print(\"label-studio\", label_studio.__version__)"
