#!/bin/bash
# XLA's YNNPACK fusions on and off (XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=), same sitting, alone.
#   bash benchmarks/ynn_flag.sh > benchmarks/out/ynn_flag.log 2>&1
cd "$(dirname "$0")/.."
export ITEMJAX_DATA="${ITEMJAX_DATA:-$(cd ../shared/data 2>/dev/null && pwd)}"
for flags in "" "--xla_cpu_experimental_ynn_fusion_type="; do
  echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg): XLA_FLAGS=[$flags]"
  XLA_FLAGS="$flags" python benchmarks/step_time.py --datasets ml-100k,gowalla --backends native --models lightgcn,gat \
    --methods bpr,item --no-ppr --users default --repeats 10 --out benchmarks/out/ynn_flag_$([ -z "$flags" ] && echo on || echo off).json
done
echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg): done"
