#!/bin/bash
# Task-learnability sweep v2 (PyTorch prototype), configs in parallel on one GPU.
cd "$(dirname "$0")"
mkdir -p logs
S=${SECS:-400}
c="dev=cuda every=1000 batch=32 questions=4 steps=1000000 secs=$S hidden=256 layers=2 ctx=128 lr=1e-3"
timeout $((S+120)) python3 ../retrieval_learnability.py $c > logs/A.log 2>&1 &
timeout $((S+120)) python3 ../retrieval_learnability.py $c lr=3e-4 > logs/B.log 2>&1 &
timeout $((S+120)) python3 ../retrieval_learnability.py $c cont=0.5 > logs/C.log 2>&1 &
timeout $((S+120)) python3 ../retrieval_learnability.py $c vcur=3000 > logs/D.log 2>&1 &
timeout $((S+120)) python3 ../retrieval_learnability.py $c qkg=4 > logs/E.log 2>&1 &
timeout $((S+120)) python3 ../retrieval_learnability.py $c layers=4 cont=0.5 > logs/F.log 2>&1 &
timeout $((S+120)) python3 ../retrieval_learnability.py $c cont=0.5 vcur=3000 qkg=2 > logs/G.log 2>&1 &
timeout $((S+120)) python3 ../retrieval_learnability.py $c ctx=64 > logs/H.log 2>&1 &
wait
for f in logs/*.log; do echo "== $f"; grep -E "00 loss|EXACT" $f | awk 'NR%5==0' ; tail -n 2 $f; done
tar czf "$OUT/sweep2-logs.tar.gz" logs
