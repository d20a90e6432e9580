# round 0 once (shared), then configs G and H side by side on the one GPU; every part resumes, so a second call continues
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
W=/root/rr/work; mkdir -p $W/G $W/H/rounds
END=$(( $(date +%s) + ${BUDGET:-520} ))
left() { echo $(( END - $(date +%s) )); }
# G: length-normalized DPO, beta 3 (about 0.2 x a reply's ~18 tokens); H: F's summed DPO, beta 0.2; both 4,000 tune comments
timeout $(left) python3 .device/run/adv.py $W/G 1e-4 3.0 1.0 5 1 4000 >> $W/G.log 2>&1 &
G=$!
while [ ! -f $W/G/rounds/round-0/round.json ] && kill -0 $G 2>/dev/null; do sleep 5; done
[ -d $W/H/rounds/round-0 ] || cp -r $W/G/rounds/round-0 $W/H/rounds/
timeout $(left) python3 .device/run/adv.py $W/H 1e-4 0.2 1.0 5 0 4000 >> $W/H.log 2>&1 &
H=$!
wait $G; echo "G rc=$?"; wait $H; echo "H rc=$?"
grep -h "^round [0-9]" $W/G.log $W/H.log | cut -c1-400
cd $W && tar czf $OUT/results.tar.gz G.log H.log $(ls */rounds/settings.json */rounds/round-*/round.json */rounds/round-*/judge.json \
  */rounds/round-*/generator/adapter/adapter_config.json */rounds/round-*/generator/replyrank_training.json */out/rounds.json */out/rounds.svg 2>/dev/null)
python3 - <<'PY'
import glob, os, torch
from safetensors.torch import load_file, save_file
for c in "GH":
    for k in range(1, 6):
        f = f"/root/rr/work/{c}/rounds/round-{k}/generator/adapter/adapter_model.safetensors"
        if os.path.isfile(f):
            save_file({n: t.half() for n, t in load_file(f).items()}, f"{os.environ['OUT']}/{c}-r{k}.safetensors")
PY
python3 - <<'PY' > $OUT/samples.json
import json, glob
out = {}
for f in sorted(glob.glob("/root/rr/work/*/rounds/round-*/samples.json")):
    s = json.load(open(f)); out[f] = {"fake_test": s["fake_test"][:400], "real_test": s["real_test"][:100]}
print(json.dumps(out))
PY
ls -la $OUT
