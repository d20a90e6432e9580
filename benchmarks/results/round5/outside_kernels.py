# Round five: where the reply job spends its time outside the ONNX Runtime runs (sample_next, room_for, forward glue, selection).
# python benchmarks/results/round5/outside_kernels.py [BUNDLE]   (7 jobs of N = 8 x 32 tokens after a warm-up)
import time, numpy as np, sys, collections, statistics
sys.path.insert(0, "/work/main/benchmarks")
import replyrank, replyrank.generate as G, replyrank.score as S, replyrank.bot as B
from replyrank.generate import GenerationOptions
from dataclasses import replace
from bench import COMMENT
bundle = sys.argv[1] if len(sys.argv) > 1 else "/root/.cache/replyrank/default-bundle"
bot = replyrank.load(bundle, threads=2)
acc = collections.defaultdict(float)
def wrap(obj, name, key):
    f = getattr(obj, name)
    def w(*a, **k):
        s = time.perf_counter()
        try: return f(*a, **k)
        finally: acc[key] += time.perf_counter() - s
    setattr(obj, name, w)
sess = bot.generator.session
wrap(sess, "run_with_iobinding", "kernel.gen")
for gr in bot.scorers.graphs.values(): wrap(gr.session, "run", "kernel.score")
wrap(G, "sample_next", "sample_next")
wrap(bot.generator, "room_for", "room_for")
wrap(bot.generator, "forward", "forward(incl kernel)")
wrap(bot.generator, "encode_prompt", "encode_prompt")
wrap(bot.generator, "_text", "_text")
wrap(bot.scorers, "__call__", "scorers(incl kernel)")
wrap(bot, "_select", "_select(incl scorers)")
opts = GenerationOptions(candidates=8, max_new_tokens=32, min_new_tokens=32, temperature=0.7, top_k=40)
bot.reply(COMMENT, replace(opts, seed=10000))
acc.clear()
R = 7; tot = 0
for i in range(R):
    s = time.perf_counter(); bot.reply(COMMENT, replace(opts, seed=i)); tot += time.perf_counter() - s
for k, v in sorted(acc.items()): print(f"{k:28s} {v / R * 1e3:8.2f} ms")
k = acc["kernel.gen"] + acc["kernel.score"]
print(f"total {tot / R * 1e3:.1f}  outside {(tot - k) / R * 1e3:.1f} ms = {(tot - k) / tot:.1%}")
print(f"forward outside kernel {(acc['forward(incl kernel)'] - acc['kernel.gen']) / R * 1e3:.1f}; select outside {(acc['_select(incl scorers)'] - acc['kernel.score']) / R * 1e3:.1f}")
