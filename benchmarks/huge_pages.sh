#!/bin/bash
# The step with and without the host memory set-up (huge pages + allocator tuning, itemjax.parallel.host_memory),
# alternating, then the kernel and peer timings, in one sitting with nothing else on the machine (RESULTS.md).
#   bash benchmarks/huge_pages.sh > benchmarks/out/huge_pages.log 2>&1
set -u
cd "$(dirname "$0")/.."
export ITEMJAX_DATA="${ITEMJAX_DATA:-$(cd ../shared/data 2>/dev/null && pwd)}"
stamp() { echo "== $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; }
step_time() { python benchmarks/step_time.py --datasets ml-100k,gowalla --backends native --models lightgcn,gat --methods bpr,item --no-ppr --users default --repeats 15 --out "$1"; }
for round in 1 2; do
  stamp "step_time, ITEMJAX_MALLOC_TUNING=0 (no huge pages, no allocator tuning), round $round"
  ITEMJAX_MALLOC_TUNING=0 step_time benchmarks/out/step_time_plain_$round.json
  stamp "step_time, default set-up, round $round"
  step_time benchmarks/out/step_time_$round.json
done
stamp native_spmm; python benchmarks/native_spmm.py --threads 2 --repeats 20
stamp peers; python benchmarks/peers.py --datasets gowalla --backends native --repeats 10
stamp done
