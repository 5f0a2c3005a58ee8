"""Peak resident memory of `qembed embed` on one short text, against the checkpoint's
bytes on disk: what "weights resident once" means, measured (issue 16's target: peak RSS
at most 1.15x the checkpoint in bf16).

    python3 benches/memory/rss.py --qembed target/release/qembed --model DIR [--dtype bf16,f32]

DIR holds config.json and the safetensors (e.g. benches/forward/make_checkpoint.py's, or
`qembed bench --shape 4b --save DIR`); the tokenizer is linked from ../shared when DIR has
none. Each measurement is one whole process under GNU time (`%M`, peak RSS); one JSON line
each, after a line naming the CPU."""
import argparse
import json
import os
import pathlib
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKENIZER = ROOT.parent / "shared" / "data" / "qwen3-tokenizer"

p = argparse.ArgumentParser()
p.add_argument("--qembed", default=str(ROOT / "target" / "release" / "qembed"))
p.add_argument("--model", required=True)
p.add_argument("--dtype", default="bf16,f32")
p.add_argument("--text", default="What is the capital of France?")
a = p.parse_args()

model = pathlib.Path(a.model).resolve()
weights = sorted(model.glob("*.safetensors"))
on_disk = sum(f.stat().st_size for f in weights)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
print(json.dumps({"cpu": cpu, "flags": [f for f in flags if f in
      ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")],
      "model": str(model), "checkpoint_bytes": on_disk}))

with tempfile.TemporaryDirectory() as tmp:
    # A view of the checkpoint with a tokenizer: links, no copies.
    view = pathlib.Path(tmp) / "model"
    view.mkdir()
    for f in model.iterdir():
        os.symlink(f, view / f.name)
    if not (model / "tokenizer.json").exists():
        for f in ("tokenizer.json", "tokenizer_config.json"):
            os.symlink(TOKENIZER / f, view / f)
    inp = pathlib.Path(tmp) / "in.jsonl"
    inp.write_text(json.dumps({"text": a.text}) + "\n")
    for dtype in a.dtype.split(","):
        r = subprocess.run(["/usr/bin/time", "-f", "%M %e", a.qembed, "embed", "--model-path", str(view),
                            "--dtype", dtype, "--input", str(inp)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"qembed embed --dtype {dtype} failed:\n{r.stderr[-2000:]}")
        kib, secs = r.stderr.strip().splitlines()[-1].split()
        kernel = next((l.split("cpu_kernel", 1)[1].strip(" =:\"") for l in r.stderr.splitlines()
                       if "cpu_kernel" in l), None)
        peak = int(kib) * 1024
        print(json.dumps({"dtype": dtype, "peak_rss_bytes": peak, "seconds": float(secs),
                          "peak_rss_over_checkpoint": round(peak / on_disk, 3),
                          "log_kernel": kernel}))
