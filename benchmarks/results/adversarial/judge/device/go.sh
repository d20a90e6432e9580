# round 0 once (shared), then configs E and F side by side on the one GPU; every part resumes
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
W=/root/rr/work; mkdir -p $W/E $W/F/rounds
END=$(( $(date +%s) + ${BUDGET:-520} ))
left() { echo $(( END - $(date +%s) )); }
timeout $(left) python3 .device/run/adv.py $W/E 1e-4 0.1 1.0 3 >> $W/E.log 2>&1 &
E=$!
while [ ! -f $W/E/rounds/round-0/round.json ] && kill -0 $E 2>/dev/null; do sleep 5; done
[ -d $W/F/rounds/round-0 ] || cp -r $W/E/rounds/round-0 $W/F/rounds/
timeout $(left) python3 .device/run/adv.py $W/F 1e-4 0.2 1.0 3 >> $W/F.log 2>&1 &
F=$!
wait $E; echo "E rc=$?"; wait $F; echo "F rc=$?"
tail -n 3 $W/E.log $W/F.log
cd $W && tar czf $OUT/results.tar.gz E.log F.log $(ls */rounds/settings.json */rounds/round-*/round.json */rounds/round-*/judge.json */rounds/round-*/distill.json \
  */rounds/round-*/generator/adapter/adapter_config.json */rounds/round-*/generator/replyrank_training.json */out/rounds.json */out/rounds.svg 2>/dev/null)
python3 - <<'PY'
import glob, os, torch
from safetensors.torch import load_file, save_file
for c in "EF":
    for k in (1, 2, 3):
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
