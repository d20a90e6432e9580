"""Thread subsets of the college dumps, as .xz (lzma is stdlib), small enough to travel to the device."""
import hashlib, json, lzma, sys
from pathlib import Path
from replyrank.dumps import read_dump

SRC = Path("../shared/data/reddit/college")
SHARE = {"ApplyingToCollege": 0.25, "College": 0.25, "CollegeAdvice": 1.0, "CollegeMajors": 1.0, "GradSchool": 0.15, "CollegeRant": 0.30}

def keep(thread: str, share: float) -> bool:
    return int(hashlib.sha256(thread.encode()).hexdigest(), 16) % 1000 < share * 1000

for sub, share in SHARE.items():
    for kind in ("RS", "RC"):
        out = Path(".device/data") / f"{kind}_{sub}.jsonl.xz"
        n = 0
        with lzma.open(out, "wt") as f:
            for obj in read_dump(SRC / f"{kind}_{sub}.zst"):
                thread = obj.get("id") if kind == "RS" else str(obj.get("link_id", "")).removeprefix("t3_")
                if thread and keep(thread, share):
                    f.write(json.dumps(obj) + "\n"); n += 1
        print(out, n, out.stat().st_size, file=sys.stderr)
