#!/usr/bin/env python3
"""leakscan's real-program reliability suite.

Each program runs bare, then under `leakscan run --scan-interval 0.1` (a
live scan every 100 ms while it runs, the exact check at exit), in the same
fresh directory so paths match. For each program it checks:

* the same stdout (and stderr) and exit status as the bare run, after the
  per-program normalizations listed in NORMALIZE below (timings only);
* no crash (death by a signal) and no hang (every run has a time limit);
* a valid report: `leakscan report FILE` exits 0 on the merged report, and
  every process the program is known to run left its own report;
* every leak reported, periodic or at exit, is accounted for: a periodic
  report must be a leak the exact check at exit confirms (a block reported
  while running and then freed or found referenced is a false positive),
  and every process's leaks at exit must be confirmed by valgrind on the
  same workload (valgrind finds at least as many definitely + indirectly
  lost blocks and bytes in the same executable, up to CONFIRM_SLACK), or
  carry a manual verdict from verdicts.txt next to this file.

It prints a markdown table and exits 1 when any check fails (2 on a usage
or setup error). `--quick` is the bounded CI variant; the default is the
full workload; `--repeat N` runs each program N times under leakscan.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


class Setup(Exception):
    """A missing tool or bad argument: exit 2 with one line."""


def which(name):
    path = shutil.which(name)
    if not path:
        raise Setup(f"{name} not found: run scripts/install-deps")
    return path


def real_name(argv0):
    """The basename of the executable argv0 names, links resolved."""
    path = argv0 if "/" in argv0 else shutil.which(argv0) or argv0
    return os.path.basename(os.path.realpath(path))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_of(returncode):
    """A Popen return code as a shell would show it: 128+N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


# ---------------------------------------------------------------- programs


class Program:
    """One real program and its workload.

    `run(wrap, wd, limit)` runs the workload in the fresh directory `wd`,
    with `wrap` (a list) put before the main program's argv: [] for the
    bare run, `leakscan run ... --` or `valgrind ... ` otherwise. It returns
    (status, stdout, stderr); timeouts raise subprocess.TimeoutExpired.
    """

    name = ""
    # Executables (basenames, links resolved) that must leave a report.
    processes = ()
    # (regex, replacement) applied to stdout and stderr of both runs.
    normalize = ()

    def setup(self, wd):
        pass

    def run(self, wrap, wd, limit):
        p = subprocess.run(wrap + self.argv(wd), cwd=wd, stdin=self.stdin(wd),
                           capture_output=True, timeout=limit, env=self.env(wd))
        return status_of(p.returncode), p.stdout, p.stderr

    def stdin(self, wd):
        return subprocess.DEVNULL

    def env(self, wd):
        env = dict(os.environ)
        env["HOME"] = str(wd)  # no rc or history file of the user's
        env.pop("LD_PRELOAD", None)
        return env


class PythonTests(Program):
    name = "python3 (test suite)"
    normalize = ((rb"Ran (\d+) tests? in [0-9.]+s", rb"Ran \1 tests in Ts"),)

    def __init__(self, full):
        self.python = python_with_tests()
        self.processes = (real_name(self.python),)
        self.modules = ["test.test_json", "test.test_re"]
        if full:
            self.modules += ["test.test_sqlite3", "test.test_bisect", "test.test_heapq",
                             "test.test_asyncio.test_tasks", "test.test_dict",
                             "test.test_set", "test.test_collections"]

    def argv(self, wd):
        return [self.python, "-m", "unittest", "-q"] + self.modules


class PythonWorkload(Program):
    name = "python3 (json/re/threads/asyncio)"

    def __init__(self, full):
        self.python = os.path.realpath(which("python3"))
        out = subprocess.run([self.python, "-c", "import sys; print(sys.executable)"],
                             capture_output=True, text=True, check=True)
        self.python = out.stdout.strip()  # pyenv shims fork helpers: the interpreter itself
        self.processes = (real_name(self.python),)
        self.scale = "8" if full else "3"

    def argv(self, wd):
        return [self.python, str(HERE / "workload.py"), self.scale]


class Sqlite(Program):
    name = "sqlite3"
    processes = ("sqlite3",)

    def __init__(self, full):
        self.rows = 400_000 if full else 100_000
        self.exe = which("sqlite3")

    def setup(self, wd):
        lines = ["PRAGMA journal_mode=WAL;",
                 "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, bucket INTEGER NOT NULL);"]
        for chunk in range(0, self.rows, 10_000):  # one transaction per 10,000 rows
            lines.append("BEGIN;")
            lines.extend(f"INSERT INTO t VALUES({i}, 'name-{i}', {i * 7919 % 1000});"
                         for i in range(chunk + 1, min(chunk + 10_000, self.rows) + 1))
            lines.append("COMMIT;")
        lines += [
            "CREATE INDEX t_bucket ON t(bucket);",
            "BEGIN; UPDATE t SET name = name || '-u' WHERE bucket % 10 = 3; DELETE FROM t WHERE bucket = 999; COMMIT;",
            "BEGIN; INSERT INTO t SELECT id + 10000000, 'copy', bucket FROM t WHERE bucket < 5; ROLLBACK;",
            "SELECT bucket, count(*), sum(id) FROM t WHERE bucket BETWEEN 10 AND 14 GROUP BY bucket;",
            "SELECT count(*), sum(length(name)), max(bucket) FROM t;",
            "SELECT a.bucket, count(*) FROM t a JOIN t b ON a.id = b.id + 1 WHERE a.bucket < 3 GROUP BY 1;",
            "SELECT count(DISTINCT name), sum(bucket * id % 97) FROM t;",
            "SELECT bucket, group_concat(id % 10, '') FROM (SELECT * FROM t ORDER BY name DESC) WHERE bucket < 3 GROUP BY bucket;",
            "CREATE TABLE u AS SELECT id, upper(name) AS name, bucket FROM t ORDER BY bucket, name;",
            "SELECT count(*), min(name), max(name) FROM u;",
            "PRAGMA integrity_check;",
        ]
        (wd / "workload.sql").write_text("\n".join(lines) + "\n")

    def argv(self, wd):
        return [self.exe, "-batch", str(wd / "db.sqlite")]

    def stdin(self, wd):
        return open(wd / "workload.sql", "rb")


class Git(Program):
    name = "git"

    def __init__(self, full):
        self.files = 1000 if full else 200
        self.git = which("git")
        self.sh = which("sh")
        # dash leaves through _exit, which no atexit check can follow:
        # only git's processes are required to report.
        self.processes = (real_name(self.git),)

    def setup(self, wd):
        script = f"""set -e
export GIT_AUTHOR_NAME=Rel GIT_AUTHOR_EMAIL=rel@example.invalid
export GIT_COMMITTER_NAME=Rel GIT_COMMITTER_EMAIL=rel@example.invalid
export GIT_AUTHOR_DATE='2020-01-01T00:00:00Z' GIT_COMMITTER_DATE='2020-01-01T00:00:00Z'
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
git="{self.git}"
$git init -q -b main repo
cd repo
$git config gc.auto 0
i=0
while [ $i -lt {self.files} ]; do
    mkdir -p d$((i % 10))
    printf 'file %d\\nline two %d\\n' $i $((i * 7)) > d$((i % 10))/f$i.txt
    i=$((i + 1))
    if [ $((i % 50)) -eq 0 ]; then
        $git add -A
        $git commit -q -m "batch $i"
    fi
done
sed -i 's/line two/line 2/' d3/*.txt
$git commit -q -a -m 'edit d3'
$git log --stat --format='%H %an %ad %s' --date=iso-strict
$git gc -q --aggressive
$git count-objects -v | grep -v -e size -e prune
$git fsck --full --strict
$git rev-parse HEAD HEAD~1^{{tree}}
$git diff --stat HEAD~2 HEAD
"""
        (wd / "workload.sh").write_text(script)

    def argv(self, wd):
        return [self.sh, str(wd / "workload.sh")]

    def env(self, wd):
        env = super().env(wd)
        env.pop("GIT_DIR", None)
        return env


class Gcc(Program):
    name = "gcc"

    def __init__(self, full):
        self.functions = 3000 if full else 300
        self.gcc = which("gcc")
        self.processes = tuple(real_name(p) for p in (
            self.gcc,
            subprocess.run([self.gcc, "-print-prog-name=cc1"], capture_output=True,
                           text=True, check=True).stdout.strip(),
            "as", "ld",
            subprocess.run([self.gcc, "-print-prog-name=collect2"], capture_output=True,
                           text=True, check=True).stdout.strip()))

    def setup(self, wd):
        parts = ["#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>"]
        for i in range(self.functions):
            parts.append(
                f"struct s{i} {{ int a; long b[{i % 7 + 1}]; char name[{i % 13 + 2}]; }};\n"
                f"static long f{i}(long x) {{ struct s{i} v; memset(&v, 0, sizeof v);"
                f" v.a = (int)x; for (int j = 0; j < {i % 5 + 1}; j++) v.b[j % {i % 7 + 1}] += x * {i} + j;"
                f" return v.a + v.b[0] + (x > 3 ? f{max(i - 1, 0)}(x - 1) : {i}); }}")
        calls = " + ".join(f"f{i}(n)" for i in range(0, self.functions, 37))
        parts.append(f"int main(int argc, char **argv) {{ long n = argc > 1 ? atol(argv[1]) : 4;"
                     f" printf(\"%ld\\n\", {calls}); return 0; }}")
        (wd / "prog.c").write_text("\n".join(parts) + "\n")

    def run(self, wrap, wd, limit):
        status, out, err = super().run(wrap, wd, limit)
        if status == 0:
            # The compiled program's output and the binary's bytes are part of
            # what must not change.
            binary = (wd / "prog").read_bytes()
            import hashlib
            run = subprocess.run([str(wd / "prog"), "6"], capture_output=True, timeout=limit)
            out += b"binary sha256 " + hashlib.sha256(binary).hexdigest().encode() + b"\n" + run.stdout
        return status, out, err

    def argv(self, wd):
        return [self.gcc, "-O2", "-Wall", "-g", "-o", "prog", "prog.c"]


class Perl(Program):
    name = "perl"
    processes = ("perl",)

    def __init__(self, full):
        self.perl = which("perl")
        self.processes = (real_name(self.perl),)
        self.scale = "6" if full else "2"

    def argv(self, wd):
        return [self.perl, str(HERE / "workload.pl"), self.scale]


class Make(Program):
    name = "make"

    def __init__(self, full):
        self.make = which("make")
        self.targets = 1000 if full else 300
        self.processes = (real_name(self.make),)

    def setup(self, wd):
        names = " ".join(f"out/t{i}.txt" for i in range(self.targets))
        rules = [f"all: sum.txt\n\nsum.txt: {names}\n\tcat $^ | cksum > $@\n\tcat $@\n",
                 "out:\n\tmkdir -p out\n",
                 "out/t%.txt: | out\n\techo 'target $* $(words $(TARGETS))' > $@\n",
                 f"TARGETS := {names}\n"]
        (wd / "Makefile").write_text("\n".join(rules))

    def argv(self, wd):
        return [self.make, "--no-print-directory", "-s", "-f", str(wd / "Makefile")]


class Redis(Program):
    """redis-server under leakscan, driven by redis-cli and redis-benchmark
    (both bare) on a free loopback port. What is compared: the redis-cli
    replies to a scripted set of commands, that redis-benchmark ran every
    test with a positive rate, DBSIZE after it, and the server's own stdout
    and exit status after SHUTDOWN NOSAVE."""

    name = "redis-server"

    def __init__(self, full):
        self.server = which("redis-server")
        self.cli = which("redis-cli")
        self.bench = which("redis-benchmark")
        self.processes = (real_name(self.server),)  # Debian: a link to redis-check-rdb
        self.requests = 200_000 if full else 20_000

    def run(self, wrap, wd, limit):
        deadline = time.monotonic() + limit
        port = free_port()
        argv = wrap + [self.server, "--port", str(port), "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no", "--dir", str(wd),
                       "--logfile", str(wd / "server.log"), "--daemonize", "no",
                       "--protected-mode", "yes"]
        server = subprocess.Popen(argv, cwd=wd, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=self.env(wd))
        out = bytearray()
        try:
            cli = [self.cli, "-h", "127.0.0.1", "-p", str(port)]
            while subprocess.run(cli + ["PING"], capture_output=True).stdout != b"PONG\n":
                if server.poll() is not None or time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(argv, limit)
                time.sleep(0.05)
            left = lambda: max(1.0, deadline - time.monotonic())
            commands = [["SET", "k1", "v1"], ["GET", "k1"], ["INCRBY", "n", "41"], ["INCR", "n"],
                        ["RPUSH", "l", "a", "b", "c", "d"], ["LRANGE", "l", "0", "-1"],
                        ["HSET", "h", "f1", "1", "f2", "2"], ["HGETALL", "h"],
                        ["SADD", "s", "x", "y", "z"], ["SCARD", "s"],
                        ["ZADD", "z", "1", "one", "2", "two", "3", "three"],
                        ["ZRANGE", "z", "0", "-1", "WITHSCORES"], ["APPEND", "k1", "-tail"],
                        ["GETRANGE", "k1", "0", "-1"], ["EXPIRE", "k1", "1000"], ["TTL", "k1"],
                        ["MSET", "a", "1", "b", "2"], ["MGET", "a", "b", "missing"],
                        ["EVAL", "return redis.call('INCR', KEYS[1])", "1", "n"],
                        ["DEL", "a", "b"], ["DBSIZE"]]
            for c in commands:
                r = subprocess.run(cli + c, capture_output=True, timeout=left())
                out += b"> " + " ".join(c).encode() + b"\n" + r.stdout + r.stderr
            bench = subprocess.run(
                [self.bench, "-h", "127.0.0.1", "-p", str(port), "-n", str(self.requests),
                 "-c", "20", "-P", "4", "-q", "-t", "set,get,incr,lpush,rpush,lpop,sadd,hset,mset,lrange_100"],
                capture_output=True, text=True, timeout=left())
            tests = re.findall(r"^([A-Z_0-9 ()]+?): ([0-9.]+) requests per second",
                               bench.stdout.replace("\r", "\n"), re.M)
            sane = bench.returncode == 0 and len(tests) == 10 and all(float(r) > 0 for _, r in tests)
            out += (b"benchmark tests: " + ",".join(t for t, _ in tests).encode()
                    + b" sane=" + str(sane).encode() + b"\n")
            for c in (["DBSIZE"], ["LLEN", "l"], ["GET", "n"], ["FLUSHALL"], ["DBSIZE"]):
                r = subprocess.run(cli + c, capture_output=True, timeout=left())
                out += b"> " + " ".join(c).encode() + b"\n" + r.stdout + r.stderr
            subprocess.run(cli + ["SHUTDOWN", "NOSAVE"], capture_output=True, timeout=left())
            sout, serr = server.communicate(timeout=left())
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        return status_of(server.returncode), bytes(out) + sout, serr


def python_with_tests():
    """A CPython whose test package (test.test_json & co.) is installed:
    the python3 on PATH (pyenv's includes it), else Debian's with
    libpython3-testsuite."""
    candidates = []
    if shutil.which("python3"):
        out = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    candidates.append("/usr/bin/python3")
    for py in candidates:
        if os.path.exists(py) and subprocess.run(
                [py, "-c", "import test.test_json, test.test_re"], capture_output=True).returncode == 0:
            return py
    raise Setup("no python3 with its test suite (test.test_json): run scripts/install-deps")


# ---------------------------------------------------------------- checking


class Watcher(threading.Thread):
    """Keeps a copy of every report a periodic scan writes: the exit check
    rewrites `<pid>.json` at exit, so a periodic report must be read while
    the program runs. Polls the report directory every 10 ms."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.seen = {}  # (pid, scan number) -> periodic report
        self.scans = {}  # pid -> the highest scan number seen in its reports

    def run(self):
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(0.01)
        self.poll()

    def poll(self):
        try:
            paths = list(self.root.rglob("*.json"))
        except OSError:
            return  # `leakscan run` removed its run directory meanwhile
        for path in paths:
            try:
                report = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced or half-written while read: the next poll sees it
            try:
                pid, scan = report["process"]["pid"], report["scan"]
            except (KeyError, TypeError):
                continue
            # The exit check counts as a scan: only the live ones are counted.
            live = scan["number"] - (1 if scan["trigger"] == "exit" else 0)
            self.scans[pid] = max(self.scans.get(pid, 0), live)
            if scan["trigger"] == "periodic":
                self.seen.setdefault((pid, scan["number"]), report)


def leaks_by_pid(report):
    """{pid: [leak group]} and {pid: process} over a merged report."""
    root = report["process"]["pid"]
    procs = {root: report["process"]}
    for child in report.get("children", []):
        procs[child["process"]["pid"]] = child["process"]
    groups = {}
    for leak in report["leaks"]:
        groups.setdefault(leak.get("pid", root), []).append(leak)
    return groups, procs


def valgrind_totals(logdir):
    """{executable basename: [blocks, bytes]} of definitely + indirectly lost
    memory, summed over the processes valgrind followed."""
    totals = {}
    for log in logdir.glob("vg.*"):
        text = log.read_text(errors="replace")
        cmd = re.search(r"^==\d+== Command: (\S+)", text, re.M)
        if not cmd:
            continue
        exe = real_name(cmd.group(1))
        t = totals.setdefault(exe, [0, 0])
        for kind in ("definitely", "indirectly"):
            m = re.search(rf"{kind} lost: ([\d,]+) bytes in ([\d,]+) blocks", text)
            if m:
                t[1] += int(m.group(1).replace(",", ""))
                t[0] += int(m.group(2).replace(",", ""))
    return totals


def manual_verdicts():
    """verdicts.txt: `EXE<TAB>REASON` lines: leaks of EXE that were shown to
    be real by hand (the reasoning is in the file)."""
    verdicts = {}
    path = HERE / "verdicts.txt"
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            exe, _, reason = line.partition("\t")
            verdicts[exe.strip()] = reason.strip()
    return verdicts


class Result:
    def __init__(self, name):
        self.name = name
        self.output_equal = True
        self.status_equal = True
        self.crashes = 0
        self.hangs = 0
        self.scans = 0
        self.leaks = 0  # blocks, at exit
        self.periodic = 0  # blocks reported by periodic scans
        self.verdicts = []
        self.failures = []
        self.confirmed = set()  # executables valgrind confirmed in an earlier run
        self.seconds = 0.0

    def fail(self, why):
        self.failures.append(why)


def normalized(program, data):
    for pattern, repl in program.normalize:
        data = re.sub(pattern, repl, data)
    return data


def fresh(wd):
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)


def check(program, args, work, result, iteration):
    wd = work / "wd"  # the same path for every run: temporary paths match
    tag = f"run {iteration + 1}: " if args.repeat > 1 else ""
    fresh(wd)
    program.setup(wd)
    try:
        bare = program.run([], wd, args.timeout)
    except subprocess.TimeoutExpired:
        raise Setup(f"{program.name} hangs without leakscan (over {args.timeout} s)")
    if bare[0] >= 128:
        raise Setup(f"{program.name} is killed by signal {bare[0] - 128} without leakscan")

    fresh(wd)
    program.setup(wd)
    # Short: `<report_dir>/run-*/<pid>.sock` must fit a socket address.
    reports = Path(tempfile.mkdtemp(prefix="lsrel-"))
    report_file = work / "report.json"
    report_file.unlink(missing_ok=True)
    wrap = [str(args.leakscan), "run", "--scan-interval", "0.1", "--min-age", str(args.min_age),
            "--error-exitcode", "0", "--format", "json", "--output", str(report_file), "--"]
    os.environ["LEAKSCAN_OPTIONS"] = f"report_dir={reports}:max_objects=4"
    watcher = Watcher(reports)
    watcher.start()
    started = time.monotonic()
    try:
        traced = program.run(wrap, wd, args.timeout)
    except subprocess.TimeoutExpired:
        result.hangs += 1
        result.fail(f"{tag}hang: over {args.timeout} s under leakscan")
        return
    finally:
        result.seconds += time.monotonic() - started
        watcher.stop.set()
        watcher.join()
        del os.environ["LEAKSCAN_OPTIONS"]
        shutil.rmtree(reports, ignore_errors=True)

    status, out, err = traced
    if status >= 128:
        result.crashes += 1
        result.fail(f"{tag}killed by signal {status - 128} under leakscan")
    if status != bare[0]:
        result.status_equal = False
        result.fail(f"{tag}exit status {bare[0]} bare, {status} under leakscan;"
                    f" stderr: {err[-2000:].decode(errors='replace')}")
    for stream, a, b in (("stdout", bare[1], out), ("stderr", bare[2], err)):
        a, b = normalized(program, a), normalized(program, b)
        if a != b:
            result.output_equal = False
            (work / f"bare.{stream}").write_bytes(a)
            (work / f"leakscan.{stream}").write_bytes(b)
            result.fail(f"{tag}{stream} differs: see {work}/bare.{stream} and {work}/leakscan.{stream}")

    # The report: readable by `leakscan report`, one per known process.
    if not report_file.exists():
        result.fail(f"{tag}no report written")
        return
    shown = subprocess.run([str(args.leakscan), "report", "--format", "json", str(report_file)],
                           capture_output=True, timeout=60)
    if shown.returncode != 0:
        result.fail(f"{tag}`leakscan report` exits {shown.returncode}: {shown.stderr.decode()[:500]}")
        return
    report = json.loads(report_file.read_text())
    groups, procs = leaks_by_pid(report)
    exes = {}
    for pid, proc in procs.items():
        exes.setdefault(os.path.basename(proc["exe"]), []).append(pid)
    for exe in program.processes:
        if exe not in exes:
            result.fail(f"{tag}no report from {exe} (reports from: {', '.join(sorted(exes))})")
    # `children` carry summaries, not scan counts: the watcher read each
    # process's own reports; the program's own is the merged one.
    # (A stand-in for a program that left no report has number 0.)
    watcher.scans[report["process"]["pid"]] = max(0, report["scan"]["number"] - 1)
    result.scans += sum(watcher.scans.values())
    result.leaks += report["summary"]["leaked_blocks"]

    # Periodic reports: every group must still be leaked at exit.
    at_exit = {(pid, g["id"]) for pid, gs in groups.items() for g in gs}
    most = {}
    for (pid, number), periodic in sorted(watcher.seen.items()):
        most[pid] = max(most.get(pid, 0), periodic["summary"]["leaked_blocks"])
        for g in periodic["leaks"]:
            if (pid, g["id"]) not in at_exit:
                top = g["stack"][0] if g["stack"] else {}
                result.fail(f"{tag}periodic scan {number} of pid {pid} ({periodic['process']['exe']})"
                            f" reported {g['count']} blocks ({g['bytes']} bytes) from"
                            f" {top.get('function') or top.get('module')}+{top.get('offset')}"
                            f" that the exit check does not: a false positive")
    result.periodic += sum(most.values())

    # Leaks at exit: confirmed by valgrind, or by a manual verdict.
    leaked = {}
    for pid, gs in groups.items():
        exe = os.path.basename(procs[pid]["exe"]) if pid in procs else str(pid)
        t = leaked.setdefault(exe, [0, 0])
        for g in gs:
            t[0] += g["count"]
            t[1] += g["bytes"]
    if not leaked:
        return
    manual = manual_verdicts()
    need_valgrind = [exe for exe in leaked if exe not in manual]
    vg = {}
    if need_valgrind and iteration == 0:
        vg = run_valgrind(program, args, work)
    for exe, (blocks, size) in sorted(leaked.items()):
        if exe in manual:
            result.verdicts.append(f"{exe}: manual ({manual[exe]})")
            continue
        if iteration > 0 and exe in result.confirmed:
            continue
        v = vg.get(exe)
        if v and within_slack(blocks, v[0], 2) and within_slack(size, v[1], 64):
            result.confirmed.add(exe)
            result.verdicts.append(f"{exe}: {blocks} blocks/{size} B, valgrind {v[0]}/{v[1]}")
        else:
            result.fail(f"{tag}{exe} leaks {blocks} blocks ({size} bytes) that valgrind does not"
                        f" confirm (valgrind: {v}); add a verdict to verdicts.txt only with proof")


# Both tools scan conservatively, and the heap's layout differs from run to
# run (under valgrind, and under leakscan with periodic scans, whose
# quarantine changes which addresses malloc reuses): a stale value in a live
# frame that happens to equal a block's address keeps that block
# "reachable" in one run and not in the next. So the counts of a program
# that leaks hundreds of blocks at exit differ by a few either way: ld.bfd
# linking the gcc workload leaked 377–383 blocks in 25 runs under leakscan
# (the extra ones from the same allocation site as 364 others; valgrind:
# 379). A count up to 2% (and 2 blocks) over valgrind's still counts as
# confirmed; a false positive of leakscan's own (a block it cannot see as
# referenced in a structure) shows up as far more, in every run.
CONFIRM_SLACK = 0.02


def within_slack(ours, theirs, floor):
    return ours <= theirs + max(floor, theirs * CONFIRM_SLACK)


def run_valgrind(program, args, work):
    wd = work / "wd"
    fresh(wd)
    program.setup(wd)
    logs = work / "valgrind"
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir()
    wrap = [which("valgrind"), "--trace-children=yes", "--leak-check=summary",
            f"--log-file={logs}/vg.%p", "--error-exitcode=0"]
    program.run(wrap, wd, args.timeout * 20)
    return valgrind_totals(logs)


PROGRAMS = {
    "python-tests": PythonTests,
    "python-workload": PythonWorkload,
    "sqlite3": Sqlite,
    "redis": Redis,
    "git": Git,
    "gcc": Gcc,
    "perl": Perl,
    "make": Make,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the bounded CI workloads")
    ap.add_argument("--repeat", type=int, default=1, help="runs under leakscan per program")
    ap.add_argument("--only", default="", help="comma-separated: " + ",".join(PROGRAMS))
    ap.add_argument("--leakscan", default=str(REPO / "target/release/leakscan"))
    ap.add_argument("--work", default=str(REPO / "target/reliability"))
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per run (default 120 quick, 600 full)")
    ap.add_argument("--min-age", type=float, default=0.2, help="--min-age of the periodic scans")
    args = ap.parse_args()
    args.leakscan = Path(args.leakscan).resolve()
    args.timeout = args.timeout or (120.0 if args.quick else 600.0)
    try:
        if args.repeat < 1:
            raise Setup("--repeat must be at least 1")
        if not args.leakscan.exists():
            raise Setup(f"no {args.leakscan}: cargo build --release --workspace")
        names = [n for n in args.only.split(",") if n] or list(PROGRAMS)
        for n in names:
            if n not in PROGRAMS:
                raise Setup(f"unknown program {n!r} (known: {', '.join(PROGRAMS)})")
        which("valgrind")
        programs = [PROGRAMS[n](not args.quick) for n in names]
        results = []
        for key, program in zip(names, programs):
            work = Path(args.work) / key
            fresh(work)
            result = Result(program.name)
            for i in range(args.repeat):
                check(program, args, work, result, i)
            results.append(result)
            print(f"reliability: {program.name}: {len(result.failures)} failures,"
                  f" {result.seconds:.1f} s under leakscan", file=sys.stderr, flush=True)
    except Setup as e:
        print(f"reliability: {e}", file=sys.stderr)
        return 2

    yes = lambda b: "yes" if b else "**NO**"
    print("| program | bare vs leakscan output equal | exit status equal | crashes | hangs |"
          " scans run | leaks reported (exit / periodic blocks) | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.failures:
            verdict = "**FAIL**"
        elif r.leaks:
            verdict = "confirmed real: " + "; ".join(r.verdicts)
        else:
            verdict = "clean"
        print(f"| {r.name} | {yes(r.output_equal)} | {yes(r.status_equal)} | {r.crashes} |"
              f" {r.hangs} | {r.scans} | {r.leaks} / {r.periodic} | {verdict} |")
    failures = [(r.name, f) for r in results for f in r.failures]
    for name, f in failures:
        print(f"FAILED {name}: {f}")
    print(f"{len(results) - len({n for n, _ in failures})} passed,"
          f" {len({n for n, _ in failures})} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
