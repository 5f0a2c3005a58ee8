"""What GPU code a qembed binary embeds, and whether it loads on every GPU we support.

    python3 .ci/kit-embeds.py BINARY CUOBJDUMP

Our kernels (kernels/*.cu) are fat binaries included in the executable's data: each
must hold SASS for sm_80, sm_89 and sm_90 and PTX for compute_80 (the driver JITs that
for any later GPU). candle's kernels are PTX text: every one must target sm_80, since
PTX only JIT-compiles forward (PTX for sm_90a would load on H100/H200 alone). Every fat
binary found is listed with `cuobjdump --list-elf --list-ptx`, so this reads what the
file holds, not what the build was asked for.
"""
import re, struct, subprocess, sys, tempfile, os

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
OURS = ["rms_norm", "qk_norm_rope", "swiglu", "gather_rows", "varlen_attention"]
WANT_SASS = {"sm_80", "sm_89", "sm_90"}
WANT_PTX = {"sm_80"}


def fatbins(data):
    """(offset, bytes) of each fat binary: magic, u16 version, u16 header size, u64 size."""
    at = 0
    while True:
        at = data.find(FATBIN_MAGIC, at)
        if at < 0:
            return
        version, header, size = struct.unpack_from("<HHQ", data, at + 4)
        if version == 1 and header == 16 and 0 < size < len(data) - at:
            yield at, data[at:at + header + size]
            at += header + size
        else:
            at += 4


def main(binary, cuobjdump):
    with open(binary, "rb") as f:
        data = f.read()
    found = {}  # source stem -> (sass arches, ptx arches)
    others = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (offset, blob) in enumerate(fatbins(data)):
            path = os.path.join(tmp, f"{i}.fatbin")
            with open(path, "wb") as f:
                f.write(blob)
            listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", path],
                                     capture_output=True, text=True)
            text = listing.stdout
            stems = [s for s in OURS if re.search(rf"\b{s}\.", text)]
            if len(stems) != 1:
                others += 1
                continue
            sass = set(re.findall(r"ELF file\s+\d+:\s+\S+?\.(sm_\d+a?)\.cubin", text))
            ptx = set(re.findall(r"PTX file\s+\d+:\s+\S+?\.(sm_\d+a?)\.ptx", text))
            prev = found.get(stems[0], (set(), set()))
            found[stems[0]] = (prev[0] | sass, prev[1] | ptx)
    # candle's PTX modules: text with a `.target` line.
    candle = sorted(set(re.findall(rb"\n\.target (sm_\w+)", data)))
    ok = True
    print(f"{binary}: {len(found)} of our kernel files, {others} other fat binaries (candle's static kernels)")
    for stem in OURS:
        sass, ptx = found.get(stem, (set(), set()))
        good = sass >= WANT_SASS and ptx >= WANT_PTX
        ok &= good
        print(f"  {stem:18} SASS {' '.join(sorted(sass)) or '-':20} PTX {' '.join(sorted(ptx)) or '-':8} "
              f"{'ok' if good else 'MISSING ' + ' '.join(sorted((WANT_SASS - sass) | (WANT_PTX - ptx)))}")
    names = [c.decode() for c in candle]
    good = names == ["sm_80"]
    ok &= good
    print(f"  candle PTX targets: {' '.join(names) or 'none found'} "
          f"{'ok' if good else '(want sm_80 only: build with CUDA_COMPUTE_CAP=80)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
