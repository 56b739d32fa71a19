#!/bin/bash
# The training step under each --cpu-fusions setting (XLA:CPU's YNNPACK fusion kinds, set per jit), one sitting,
# alone: LightGCN and GAT, BPR and ITEM, ml-100k and gowalla, native backend, each loss's default batch.
#   bash benchmarks/cpu_fusions.sh > benchmarks/out/cpu_fusions.log 2>&1
cd "$(dirname "$0")/.."
export ITEMJAX_DATA="${ITEMJAX_DATA:-$(cd ../shared/data 2>/dev/null && pwd)}"
echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
python benchmarks/step_time.py --datasets ml-100k,gowalla --backends native --models lightgcn,gat --methods bpr,item \
  --no-ppr --users default --repeats 10 --cpu-fusions "xla;none;dot;eltwise;reduce;individual_dot;dot,individual_dot" \
  --out benchmarks/out/cpu_fusions.json
echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg): done"
