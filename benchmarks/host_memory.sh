#!/bin/bash
# The step under three host memory set-ups, alternating, then the kernel and peer timings at the default, in one
# sitting with nothing else on the machine (benchmarks/RESULTS.md):
#   none       ITEMJAX_MALLOC_TUNING=0: glibc malloc as it is (what step_time.py etc. measured before 2026-12-07 23:00)
#   default    itemjax.parallel.host_memory.tune_host_allocator, as every training run has it
#   huge       the default plus GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (malloc asks for transparent huge pages)
#   bash benchmarks/host_memory.sh > benchmarks/out/host_memory.log 2>&1
set -u
cd "$(dirname "$0")/.."
export ITEMJAX_DATA="${ITEMJAX_DATA:-$(cd ../shared/data 2>/dev/null && pwd)}"
stamp() { echo "== $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; }
step_time() { python benchmarks/step_time.py --datasets ml-100k,gowalla --backends native --models lightgcn,gat --methods bpr,item --no-ppr --users default --repeats 15 --out "benchmarks/out/step_time_$1.json"; }
for round in 1 2; do
  stamp "step_time, none, round $round"; ITEMJAX_MALLOC_TUNING=0 step_time none_$round
  stamp "step_time, default, round $round"; step_time default_$round
  stamp "step_time, huge, round $round"; GLIBC_TUNABLES=glibc.malloc.hugetlb=1 step_time huge_$round
done
stamp native_spmm; python benchmarks/native_spmm.py --threads 2 --repeats 20
stamp peers; python benchmarks/peers.py --datasets gowalla --backends native --repeats 10
stamp done
