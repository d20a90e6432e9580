# What the run has so far, into $OUT: figures and logs, the adapter of the round with the lowest fresh judge AUC (fp16), held-out samples.
W=/root/rr/work
cd $W && tar czf $OUT/results.tmp.gz J.log $(ls J/rounds/settings.json J/rounds/round-*/round.json J/rounds/round-*/judge.json \
  J/rounds/round-*/distill.json J/rounds/round-*/generator/replyrank_training.json J/out/rounds.json J/out/rounds.svg 2>/dev/null) \
  && mv $OUT/results.tmp.gz $OUT/results.tar.gz
PYTHONPATH=/root/rr/site python3 - <<'PY'
import glob, json, os
from safetensors.torch import load_file, save_file
done = [json.load(open(f)) for f in glob.glob("/root/rr/work/J/rounds/round-*/round.json")]
best = min((r for r in done if r["round"] > 0), key=lambda r: r["fresh_discriminator_auc"], default=None)
if best:
    name = f"{os.environ['OUT']}/J-r{best['round']}.safetensors"
    if not os.path.exists(name):
        d = f"/root/rr/work/J/rounds/round-{best['round']}/generator/adapter"
        save_file({n: t.half() for n, t in load_file(f"{d}/adapter_model.safetensors").items()}, name + ".tmp")
        for old in glob.glob(f"{os.environ['OUT']}/J-r*.safetensors"):
            os.remove(old)
        os.rename(name + ".tmp", name)
out = {}
for f in sorted(glob.glob("/root/rr/work/J/rounds/round-*/samples.json")):
    s = json.load(open(f)); out[f] = {"fake_test": s["fake_test"][:400], "real_test": s["real_test"][:100]}
json.dump(out, open(f"{os.environ['OUT']}/samples.json", "w"))
PY
