#!/usr/bin/env bash
# The GPU checks (issue 21), for a session with a lent GPU machine: the gpu-marked tests, then
# the GPU benchmark. Run from the repository root after `make install`; for FAISS on the GPU,
# first `.venv/bin/pip uninstall -y faiss-cpu && .venv/bin/pip install faiss-gpu` (same
# version). Figures go to .bench/gpu.json (and $OUT when set).
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total --format=csv
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'"
.venv/bin/pytest -q -p no:randomly -m gpu tests/
.venv/bin/python tests/bench/bench_gpu.py "$@"
