# round 0 once (shared), then configs I and J side by side on the one GPU; every part resumes, so a later call continues
# I: replay 2 + judge history; J: replay 2 alone (../length-norm's G had neither)
set -x
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
K=/root/rr/kit
[ -d /root/rr/site/peft ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/rr/site $K/.whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/root/rr/site
[ -f /root/rr/smollm2.gguf ] || cat $K/.device/gguf.* > /root/rr/smollm2.gguf
[ -d /root/rr/minilm16 ] || cp -r $K/.device/minilm /root/rr/minilm16
rm -rf .device && ln -s $K/.device .device
rm -rf /root/rr/pkg && mkdir -p /root/rr/pkg && cp -r runtime /root/rr/pkg/replyrank && cp -r export /root/rr/pkg/replyrank/export
python3 .device/run/prep.py || exit 1
R=benchmarks/results/adversarial/history/device
W=/root/rr/work; mkdir -p $W/I $W/J/rounds
END=$(( $(date +%s) + ${BUDGET:-520} ))
left() { echo $(( END - $(date +%s) )); }
timeout $(left) python3 $R/adv.py $W/I 2 1 >> $W/I.log 2>&1 &
I=$!
while [ ! -f $W/I/rounds/round-0/round.json ] && kill -0 $I 2>/dev/null; do sleep 5; done
[ -d $W/J/rounds/round-0 ] || cp -r $W/I/rounds/round-0 $W/J/rounds/
timeout $(left) python3 $R/adv.py $W/J 2 0 >> $W/J.log 2>&1 &
J=$!
wait $I; echo "I rc=$?"; wait $J; echo "J rc=$?"
grep -h "^round [0-9]\|TARGETS" $W/I.log $W/J.log | cut -c1-600
cd $W && tar czf $OUT/results.tar.gz I.log J.log $(ls */rounds/settings.json */rounds/round-*/round.json */rounds/round-*/judge.json \
  */rounds/round-*/distill.json */rounds/round-*/generator/replyrank_training.json */out/rounds.json */out/rounds.svg 2>/dev/null)
python3 - <<'PY'
# the adapter of each config's round with the lowest fresh judge AUC so far, in fp16 (under the 16 MiB a file)
import glob, json, os
from safetensors.torch import load_file, save_file
for c in "IJ":
    done = [json.load(open(f)) for f in glob.glob(f"/root/rr/work/{c}/rounds/round-*/round.json")]
    best = min((r for r in done if r["round"] > 0), key=lambda r: r["fresh_discriminator_auc"], default=None)
    if best:
        f = f"/root/rr/work/{c}/rounds/round-{best['round']}/generator/adapter/adapter_model.safetensors"
        save_file({n: t.half() for n, t in load_file(f).items()}, f"{os.environ['OUT']}/{c}-r{best['round']}.safetensors")
PY
python3 - <<'PY' > $OUT/samples.json
import json, glob
out = {}
for f in sorted(glob.glob("/root/rr/work/*/rounds/round-*/samples.json")):
    s = json.load(open(f)); out[f] = {"fake_test": s["fake_test"][:400], "real_test": s["real_test"][:100]}
print(json.dumps(out))
PY
ls -la $OUT
