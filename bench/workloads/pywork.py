"""A python3 workload for the benchmark suite: JSON, regular expressions and
threads, the everyday mix of a Python service. CPython takes small objects
from its own arenas (mmap'ed, not malloc'ed) and everything larger from
malloc, so a preloaded tracker sees the larger strings, lists and dicts,
and must scan the arenas as roots.

Usage: pywork.py [scale]   (scale 1 ≈ one second bare on a 2 GHz core)
Prints: <ns per document> ns/doc
"""
import json
import re
import sys
import threading
import time

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu "
         "nu xi omicron pi rho sigma tau upsilon phi chi psi omega").split()
EMAIL = re.compile(r"\b([a-z]+)\.([a-z]+)@([a-z]+)\.example\b")
NUMBER = re.compile(r"\b\d{3,}\b")


def document(i):
    """A nested record with lists, dicts and a few hundred bytes of text."""
    w = WORDS
    text = " ".join(w[(i * 7 + k) % len(w)] for k in range(40))
    return {
        "id": i,
        "name": f"{w[i % len(w)]}.{w[(i // 3) % len(w)]}@{w[(i // 7) % len(w)]}.example",
        "tags": [w[(i + k) % len(w)] for k in range(i % 8 + 1)],
        "body": f"{text} order {i * 977} ref {i % 1000:04d}",
        "metrics": {w[k]: (i * k) % 1013 / 7.0 for k in range(12)},
        "children": [{"k": k, "v": str(i * k)} for k in range(i % 5)],
    }


def work(first, count, out):
    """Serialize, parse, search and aggregate a batch of documents."""
    hits = 0
    index = {}
    for i in range(first, first + count):
        s = json.dumps(document(i), sort_keys=True)
        d = json.loads(s)
        m = EMAIL.search(d["name"])
        if m:
            index.setdefault(m.group(3), []).append(d["id"])
        hits += len(NUMBER.findall(d["body"]))
        hits += len(re.sub(r"[aeiou]", "", d["body"]))
    out.append((hits, sum(len(v) for v in index.values())))


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    docs = max(int(20000 * scale), 4)
    threads = 4
    out = []
    start = time.perf_counter()
    # Threads: the GIL serializes the bytecode, but allocations and frees
    # come from several threads, and a thread's objects die on another's.
    pool = [threading.Thread(target=work, args=(t * docs // threads, docs // threads, out))
            for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if len(out) != threads:
        sys.exit("a worker failed")
    print(f"{elapsed * 1e9 / docs:.1f} ns/doc")


if __name__ == "__main__":
    main()
