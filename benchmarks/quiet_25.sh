#!/bin/bash
# Issue 25's timings in one sitting, one after another, nothing else on the machine (see RESULTS.md).
#   bash benchmarks/quiet_25.sh > benchmarks/out/quiet_25.log 2>&1
set -u
cd "$(dirname "$0")/.."
export ITEMJAX_DATA="${ITEMJAX_DATA:-$(cd ../shared/data 2>/dev/null && pwd)}"
stamp() { echo "== $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; }
stamp native_spmm; python benchmarks/native_spmm.py --threads 1,2 --repeats 20 --ppr-users 256
stamp step_time; python benchmarks/step_time.py --datasets ml-100k,gowalla --backends csr,native --models lightgcn,gat --methods bpr --no-ppr --users default --repeats 10
stamp peers; python benchmarks/peers.py --datasets gowalla --backends csr,native --repeats 10
stamp ppr_time; python benchmarks/ppr_time.py --datasets ml-100k,gowalla --backends device,push --push-eps 2e-6,1e-7 --out benchmarks/out/ppr_push.json
stamp done
