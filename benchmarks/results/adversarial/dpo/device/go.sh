# round 0 once (shared), then configs A and B side by side on the one GPU; every part resumes
set -x
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
[ -d /root/rr/site/peft ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/rr/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/root/rr/site
rm -rf /root/rr/pkg && mkdir -p /root/rr/pkg && cp -r runtime /root/rr/pkg/replyrank && cp -r export /root/rr/pkg/replyrank/export
python3 .device/run/prep.py || exit 1
W=/root/rr/work; mkdir -p $W/A $W/B/rounds
END=$(( $(date +%s) + ${BUDGET:-520} ))
left() { echo $(( END - $(date +%s) )); }
timeout $(left) python3 .device/run/adv.py $W/A 5e-5 0.1 0.5 > $W/A.log 2>&1 &
A=$!
while [ ! -f $W/A/rounds/round-0/round.json ] && kill -0 $A 2>/dev/null; do sleep 5; done
[ -d $W/B/rounds/round-0 ] || cp -r $W/A/rounds/round-0 $W/B/rounds/
timeout $(left) python3 .device/run/adv.py $W/B 1e-4 0.1 1.0 > $W/B.log 2>&1 &
B=$!
wait $A; echo "A rc=$?"; wait $B; echo "B rc=$?"
tail -4 $W/A.log $W/B.log
# what comes back: figures, logs and held-out samples in one archive; each config's adapters alone
cd $W && tar czf $OUT/results.tar.gz A.log B.log $(ls */rounds/settings.json */rounds/round-*/round.json */rounds/round-*/distill.json \
  */rounds/round-*/generator/adapter/adapter_config.json */rounds/round-*/generator/replyrank_training.json */out/rounds.json */out/rounds.svg 2>/dev/null)
for c in A B; do for k in 1 2; do f=$c/rounds/round-$k/generator/adapter/adapter_model.safetensors; [ -f $f ] && cp $f $OUT/$c-r$k.safetensors; done; done
python3 - <<'PY' > $OUT/samples.json
import json, glob
out = {}
for f in sorted(glob.glob("/root/rr/work/*/rounds/round-*/samples.json")):
    s = json.load(open(f)); out[f] = {"fake_test": s["fake_test"][:400], "real_test": s["real_test"][:100]}
print(json.dumps(out))
PY
ls -la $OUT
