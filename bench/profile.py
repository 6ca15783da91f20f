#!/usr/bin/env python3
"""Where the nanoseconds of malloc+free go under leakscan.

Runs a workload (the churn) bare and under libleakscan.so to get ns/pair,
then once more under `perf record` (software cpu-clock sampling with frame
pointer call chains: hardware counters are often absent in VMs, the clock
always works). libleakscan's frames are expanded into the functions inlined
into them (addr2line -i on the library's line tables), because the hooks
inline the stack walk, the depot and the index: without that, one "malloc"
frame would hide all of it. Each sample is charged to the leaf-most frame
that names a component; component share x measured ns/pair gives the
breakdown. Writes a flame graph SVG, prints markdown on stdout.

If perf cannot sample here, falls back to valgrind's callgrind (instruction
counts instead of time, no flame graph) and says so.

Usage: profile.py --lib LIB --out DIR --svg FILE -- PROGRAM ARGS...
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import flamegraph  # noqa: E402

# Components of the hook. A sample is charged to the leaf-most frame whose
# function names a component (so glibc's malloc called by the depot counts
# as the depot's); a sample no name explains goes by its leaf's module.
NAMED = [
    ("clock read for the block's age (coarse_ms)", r"coarse_ms|clock_gettime"),
    ("glibc usable size (free: block extent)", r"usable_size"),
    ("TLS lookup (__tls_get_addr)", r"__tls_get_addr"),
    # memset is a leaf without a frame, so the frame-pointer chain loses its
    # caller; in the churn loop only the malloc hook calls it (zeroing its
    # 64-entry frame buffer before the stack walk: a call to memset right
    # after __libc_malloc in the hook's disassembly).
    ("frame buffer zeroing (memset in the malloc hook)", r"^__memset|^memset"),
    ("index insert (malloc)", r"PageMap<.*>::insert|index.*::insert"),
    ("index remove (free)", r"PageMap<.*>::remove|index.*::remove"),
    ("stack walk (frame pointers)", r"stack::walk|frame_pointer|stack_pointer|main_stack_end"),
    ("stack id (hash, per-thread cache, depot)", r"depot|cached_stack|cache_stack|stack::capture"),
    ("trailer write", r"trailer::"),
    ("quarantine handshake (free)", r"quarantine"),
    ("reentrancy guard", r"guard::|Guard"),
]
BY_MODULE = [
    ("kernel (page faults, timer)", lambda m: m == "kernel"),
    ("glibc malloc/free (the real allocator)", lambda m: m.startswith("libc") or m.startswith("ld-linux")),
    ("hook glue (rest of malloc/free hooks)", lambda m: "leakscan" in m),
    ("the program's own loop", lambda m: bool(m) and not m.startswith("[") and ".so" not in m),
]


def best_ns(argv, env, runs=3):
    vals = []
    for _ in range(runs):
        p = subprocess.run(argv, env=env, capture_output=True, text=True)
        m = re.search(r"([\d.]+) ns/", p.stdout)
        if p.returncode == 0 and m:
            vals.append(float(m.group(1)))
    return min(vals) if vals else None


def clean_env():
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "LEAKSCAN_OPTIONS"):
        env.pop(k, None)
    return env


class Symbolizer:
    """Inline chains for addresses in one ELF file, via addr2line."""

    def __init__(self, path):
        self.path = path
        self.loads = []  # (file offset, vaddr, size)
        text = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0] == "LOAD":
                self.loads.append((int(parts[1], 16), int(parts[2], 16), int(parts[4], 16)))
        self.cache = {}

    def vaddr(self, offset):
        # perf prints a DSO frame's address as a file offset.
        for off, va, size in self.loads:
            if off <= offset < off + size:
                return offset - off + va
        return offset

    def resolve(self, addrs):
        todo = sorted({a for a in addrs if a not in self.cache})
        for i in range(0, len(todo), 2000):
            batch = todo[i:i + 2000]
            out = subprocess.run(["addr2line", "-i", "-f", "-C", "-a", "-e", self.path,
                                  *[hex(a) for a in batch]], capture_output=True, text=True).stdout
            cur, lines = None, []
            for line in out.splitlines() + ["0xEND"]:
                if re.fullmatch(r"0x[0-9a-fA-F]+|0xEND", line):
                    if cur is not None:
                        # (function, file:line) pairs, innermost first
                        pairs = list(zip(lines[0::2], lines[1::2]))
                        self.cache[cur] = pairs
                    cur = int(line, 16) if line != "0xEND" else None
                    lines = []
                else:
                    lines.append(line)
        return {a: self.cache.get(a, []) for a in addrs}


def short_path(p):
    p = re.sub(r"^/rustc/[0-9a-f]+/", "", p)
    if p.startswith(ROOT + "/"):
        p = p[len(ROOT) + 1:]
    return p


def module_name(dso):
    if dso.startswith("[kernel"):
        return "kernel"
    return os.path.basename(dso)


def perf_samples(data, lib):
    """Yield stacks (root first) of (module, function, srcline) per sample."""
    text = subprocess.run(["perf", "script", "-i", data, "--no-demangle",
                           "-F", "comm,tid,ip,sym,symoff,dso"],
                          capture_output=True, text=True).stdout
    samples, cur = [], None
    frame_re = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)(?:\+0x([0-9a-f]+))?\s+\((.*)\)$")
    for line in text.splitlines():
        if not line.strip():
            if cur:
                samples.append(cur)
            cur = None
            continue
        if not line[0].isspace():
            cur = []
            continue
        m = frame_re.match(line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2), m.group(4)))
    if cur:
        samples.append(cur)
    sym = Symbolizer(lib)
    addrs = set()
    for s in samples:
        for i, (ip, _, dso) in enumerate(s):
            if os.path.realpath(dso) == os.path.realpath(lib):
                # A caller's frame holds a return address: the call is the
                # byte before it.
                addrs.add(sym.vaddr(ip) - (1 if i else 0))
    chains = sym.resolve(addrs)
    stacks = []
    for s in samples:
        frames = []  # leaf first
        for i, (ip, name, dso) in enumerate(s):
            mod = module_name(dso)
            if os.path.realpath(dso) == os.path.realpath(lib):
                chain = chains.get(sym.vaddr(ip) - (1 if i else 0)) or []
                if chain and chain[0][0] != "??":
                    for fn, src in chain:  # innermost first
                        frames.append((mod, fn, short_path(src)))
                    continue
            frames.append((mod, name, ""))
        stacks.append(list(reversed(frames)))
    return stacks


def categorize(stack):
    if stack and stack[-1][0] == "kernel":
        return BY_MODULE[0][0]
    for _, fn, _ in reversed(stack):
        for label, pattern in NAMED:
            if re.search(pattern, fn):
                return label
    leaf = stack[-1][0] if stack else ""
    for label, rule in BY_MODULE:
        if rule(leaf):
            return label
    return "other"


def profile_perf(args, ns_leak, ns_bare):
    data = os.path.join(args.out, "perf.data")
    env = clean_env()
    env["LD_PRELOAD"] = args.lib
    env["LEAKSCAN_OPTIONS"] = f"report_dir={os.path.join(args.out, 'reports')}"
    p = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "10000", "-g", "-o", data,
                        "--", *args.program], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("perf record failed: " + p.stderr.strip()[-300:])
    stacks = perf_samples(data, args.lib)
    # Only the timed loop: the worker threads' samples (not start-up, not
    # the exit check).
    loop = [s for s in stacks if any(fn == "worker" for _, fn, _ in s)]
    if len(loop) < 200:
        raise RuntimeError(f"perf recorded only {len(loop)} samples in the loop")
    cats = collections.Counter(categorize(s) for s in loop)
    lines_ = collections.Counter()
    for s in loop:
        mod, leaf_fn, _ = s[-1]
        if "leakscan" not in mod:
            continue
        # Name the line in leakscan's own code: an atomic's cost shows up
        # in core::sync::atomic, but the line to look at is the caller's.
        for fmod, fn, src in reversed(s):
            if "leakscan" in fmod and src and not src.startswith("library/") and ":?" not in src:
                via = f" ({leaf_fn.split('::')[-1]})" if fn != leaf_fn else ""
                lines_[f"`{src}` {fn}{via}"] += 1
                break
    folded = collections.Counter()
    for s in loop:
        folded[";".join(f"{mod}`{fn}" for mod, fn, _ in s)] += 1
    with open(os.path.join(args.out, "churn.folded"), "w") as f:
        for k, v in sorted(folded.items()):
            f.write(f"{k} {v}\n")
    svg = flamegraph.render(flamegraph.parse(f"{k} {v}" for k, v in folded.items()),
                            "malloc+free churn under leakscan (perf cpu-clock, inlined frames expanded)")
    with open(args.svg, "w") as f:
        f.write(svg)

    total = len(loop)
    out = []
    out.append(f"`bench/profile.py`: `perf record -e cpu-clock -F 10000 -g` of `{' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(args.program))}` "
               f"(1 thread) under leakscan; {total} samples in the timed loop. Measured in the same "
               f"step without perf: **{ns_leak:.1f} ns/pair under leakscan, {ns_bare:.1f} ns/pair bare** "
               f"(+{ns_leak - ns_bare:.1f} ns). Each sample is charged to the leaf-most frame that "
               "names a component (libleakscan's inlined functions expanded with addr2line); "
               "ns = share × leakscan's ns/pair.")
    out.append("")
    out.append("| component | share of samples | ns per malloc+free |")
    out.append("|---|---|---|")
    for label, n in cats.most_common():
        out.append(f"| {label} | {100 * n / total:.1f}% | {ns_leak * n / total:.1f} |")
    out.append("")
    out.append("Hottest source lines in libleakscan (self samples):")
    out.append("")
    out.append("| line | function | share | ns/pair |")
    out.append("|---|---|---|---|")
    for key, n in lines_.most_common(10):
        src, fn = key.split(" ", 1)
        out.append(f"| {src} | {fn} | {100 * n / total:.1f}% | {ns_leak * n / total:.1f} |")
    out.append("")
    out.append(f"Flame graph: [{os.path.relpath(args.svg, os.path.join(ROOT, 'docs'))}]"
               f"({os.path.relpath(args.svg, os.path.join(ROOT, 'docs'))}) (folded stacks in "
               "`target/bench/churn.folded`).")
    return "\n".join(out)


def profile_callgrind(args, ns_leak, ns_bare, why):
    """Instruction counts per function: no timing, but always available."""
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        raise RuntimeError(why + "; valgrind's callgrind is not installed either")
    outf = os.path.join(args.out, "callgrind.out")
    prog = list(args.program)
    prog[1] = str(max(int(prog[1]) // 20, 10000))
    env = clean_env()
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={outf}",
                    f"--soname-synonyms=somalloc=NONE", *prog],
                   env=dict(env, LD_PRELOAD=args.lib), capture_output=True, check=True)
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", outf],
                          capture_output=True, text=True).stdout
    rows = []
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$", line)
        if m:
            rows.append((m.group(2), m.group(3)))
    out = [f"perf could not sample here ({why}); instruction counts from valgrind "
           f"`--tool=callgrind` of `{' '.join(prog)}` under leakscan instead (no flame graph). "
           f"Measured without valgrind: {ns_leak:.1f} ns/pair under leakscan, {ns_bare:.1f} bare.",
           "", "| share of instructions | function |", "|---|---|"]
    for share, fn in rows[:15]:
        out.append(f"| {share}% | `{fn[:120]}` |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("program", nargs="+")
    args = ap.parse_args()
    os.makedirs(os.path.join(args.out, "reports"), exist_ok=True)
    env = clean_env()
    ns_bare = best_ns(args.program, env)
    leak_env = dict(env, LD_PRELOAD=args.lib,
                    LEAKSCAN_OPTIONS=f"report_dir={os.path.join(args.out, 'reports')}")
    ns_leak = best_ns(args.program, leak_env)
    if ns_bare is None or ns_leak is None:
        sys.exit("profile: the workload printed no ns/pair figure")
    try:
        if not shutil.which("perf"):
            raise RuntimeError("perf is not installed")
        print(profile_perf(args, ns_leak, ns_bare))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(profile_callgrind(args, ns_leak, ns_bare, str(e)))


if __name__ == "__main__":
    main()
