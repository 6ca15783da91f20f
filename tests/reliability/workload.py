"""The reliability suite's own CPython workload: JSON, regular expressions,
threads and asyncio, each printing a deterministic result. Run as
`python3 workload.py SCALE` (SCALE >= 1 multiplies the work)."""

import asyncio
import hashlib
import json
import re
import sys
import threading

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def json_round_trips():
    data = {f"key{i}": {"n": i, "sq": [i * j for j in range(30)], "s": "x" * (i % 50)}
            for i in range(1500 * SCALE)}
    digest = hashlib.sha256()
    for _ in range(3):
        text = json.dumps(data, sort_keys=True)
        back = json.loads(text)
        assert back == data
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def regex_work():
    words = [f"w{i:05d}-{'ab' * (i % 7)}@host{i % 13}.example" for i in range(20000 * SCALE)]
    text = "\n".join(words)
    pattern = re.compile(r"^w(\d+)-((?:ab)*)@host(\d+)\.example$", re.M)
    total = 0
    hosts = {}
    for m in pattern.finditer(text):
        total += int(m.group(1)) + len(m.group(2))
        hosts[m.group(3)] = hosts.get(m.group(3), 0) + 1
    replaced = re.sub(r"host(\d)", lambda m: "H" + m.group(1) * 2, text)
    return total, sorted(hosts.items()), len(replaced)


def threaded_work():
    results = [None] * 6
    lock = threading.Lock()
    shared = {}

    def worker(slot):
        acc = []
        for i in range(4000 * SCALE):
            acc.append({"slot": slot, "i": i, "v": [i] * (i % 5)})
            if len(acc) > 100:
                acc = acc[50:]
            with lock:
                shared[(slot, i % 97)] = i
        results[slot] = sum(d["i"] for d in acc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, len(shared)


async def produce(queue, n):
    for i in range(n):
        await queue.put({"item": i, "payload": bytes(i % 256)})
        if i % 64 == 0:
            await asyncio.sleep(0)
    await queue.put(None)


async def consume(queue):
    total = 0
    while True:
        item = await queue.get()
        if item is None:
            return total
        total += item["item"] + len(item["payload"])


async def asyncio_work():
    sums = []
    for _ in range(3):
        queue = asyncio.Queue(maxsize=32)
        _, total = await asyncio.gather(produce(queue, 20000 * SCALE), consume(queue))
        sums.append(total)
    tasks = [asyncio.create_task(asyncio.sleep(0.001 * (i % 5), result=i)) for i in range(200)]
    done = await asyncio.gather(*tasks)
    return sums, sum(done)


print("json", json_round_trips())
print("regex", regex_work())
print("threads", threaded_work())
print("asyncio", asyncio.run(asyncio_work()))
