#!/bin/bash
# The learner's device checks on a GPU machine, in one call: the fast paths against the eager
# update (CUDA graphs and torch.compile on CUDA), then `accord bench sac` and `accord bench
# combiners` on CUDA, the weights' host copy on CUDA and `accord bench throughput --learner`
# with 14 actors. Each log is also written to $OUT (or ./gpu-logs). Run from the repo root,
# with accord's dependencies importable (e.g. `. /tmp/gpu/env.sh` after unpacking them).
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$out/$name.log" | tail -n 25; }
step graphs-tests 240 python3 -m pytest -q -p no:cacheprovider -k "cuda and graphs" tests/unit/test_sac_device_step.py
step bench-sac 300 python3 -m accord.cli bench sac --device cuda
step bench-combiners 300 python3 -m accord.cli bench combiners --device cuda
step compile-tests 300 python3 -m pytest -q -p no:cacheprovider -k "cuda and compile" tests/unit/test_sac_device_step.py
step publish-tests 120 python3 -m pytest -q -p no:cacheprovider -k cuda tests/unit/test_weight_publish.py
# The 14-actor learner run that once never finished: it must print its table, no late chunk.
step bench-throughput-14 400 python3 -m accord.cli bench throughput --learner --seconds 20 --set actors.num_actors=14
