# J alone (length-normalized DPO, replay 2; ../history's J), rounds 1..6 until the fresh judge's AUC <= 0.65.
# The run starts once, in its own process session, so it outlives a call; every call then watches it for up to
# WATCH seconds (by name: setsid forks, so the pid written is not the run's) and copies what it has so far into $OUT every 20 s (what a call cut at its limit holds still comes back).
set -x
export PYTHONUNBUFFERED=1
K=/root/rr/kit W=/root/rr/work R=benchmarks/results/adversarial
if [ ! -f $W/J.pid ]; then
  [ -d /root/rr/site/peft ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/rr/site $K/.whl/*.whl 2>&1 | tail -2
  [ -f /root/rr/smollm2.gguf ] || cat $K/.device/gguf.* > /root/rr/smollm2.gguf
  [ -d /root/rr/minilm16 ] || cp -r $K/.device/minilm /root/rr/minilm16
  mkdir -p /root/rr/run /root/rr/pkg $W/J && cp -r runtime /root/rr/pkg/replyrank && cp -r export /root/rr/pkg/replyrank/export
  cp -r $R /root/rr/run/ && ln -sfn $K/.device /root/rr/run/.device
  (cd /root/rr/run && PYTHONPATH=/root/rr/site setsid nohup bash -c \
    "python3 .device/run/prep.py && python3 adversarial/history/device/adv.py $W/J 2 0" > $W/J.log 2>&1 < /dev/null & echo $! > $W/J.pid)
fi
END=$(( $(date +%s) + ${WATCH:-560} ))
while :; do
  bash $R/six/device/collect.sh > /dev/null 2>&1
  pgrep -f "prep.py|adv.py $W/J" > /dev/null || { echo "run ended"; break; }
  [ $(date +%s) -lt $END ] || { echo "still running"; break; }
  sleep 20
done
grep -h "^round [0-9]\|TARGETS\|Error\|error" $W/J.log | cut -c1-400
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
ls -la $OUT
