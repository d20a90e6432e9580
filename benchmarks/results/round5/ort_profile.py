# Round five: an ONNX Runtime profile of the generator over 3 generates of N = 8 x 32 tokens (ops summed per run).
# python benchmarks/results/round5/ort_profile.py [spin]
import json, sys, time, collections, numpy as np, onnxruntime as ort
import replyrank.sessions as S, replyrank
from replyrank.generate import GenerationOptions, candidate_rngs
spin = len(sys.argv) > 1 and sys.argv[1] == "spin"
orig = S.create_session
def prof(path, threads=None, spin=False):
    o = ort.SessionOptions(); o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.intra_op_num_threads = 2; o.inter_op_num_threads = 1; o.enable_cpu_mem_arena = False
    o.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    o.enable_profiling = "model.onnx" in str(path) and "generator" in str(path)
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
SPIN = spin
import replyrank.generate as G; G.create_session = prof
bot = replyrank.load("/root/.cache/replyrank/default-bundle", threads=2)
g = bot.generator
opts = GenerationOptions(candidates=8, max_new_tokens=32, min_new_tokens=32, temperature=0.7, top_k=40)
p = g.encode_prompt("I moved to a new city for work three months ago and I still barely know anyone here. How long did it take?", opts).ids
for rep in range(3): g.generate(p, opts, candidate_rngs(rep, 8))
f = g.session.end_profiling()
ev = json.load(open(f))
by = collections.defaultdict(float); runs = []
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        by[e["args"]["op_name"]] += e["dur"]
    if e.get("cat") == "Session" and e["name"] == "model_run": runs.append(e["dur"])
steps = len(runs)
tot = sum(by.values())
print("runs", steps, "mean run us", np.mean(runs), "median", np.median(runs))
for k, v in sorted(by.items(), key=lambda x: -x[1]): print(f"{k:28s} {v/steps:9.0f} us/run {v/tot:6.1%}")
print("node sum per run", tot / steps)
