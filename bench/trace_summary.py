#!/usr/bin/env python3
"""Per-step tables from a CUPTI timeline (`bench/trace/cupti_trace.c`).

A sampler step ends with one device-to-host copy (the greedy kernel's per-row token, probability
and entropy: 192 bytes for a 16-token block; no logits leave the device), so the timeline is cut
at those copies: each segment is one model pass and the host work before it. For every segment:
wall time, GPU busy time (union of kernels, copies and memsets), idle time, kernel count, and the
driver calls that block the host (allocations, syncs). Segments with the same kernel-name
multiset form a class; `--detail` prints a per-kernel table for a class's median segment.

    python3 bench/trace_summary.py trace.txt.gz [--min-copy-bytes N] [--detail K] [--from-ms T]
"""
import argparse
import collections
import gzip
import statistics


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    kernels, copies, sets, apis = [], [], [], []
    with opener(path, "rt", errors="replace") as f:
        for line in f:
            p = line.rstrip("\n").split(" ", 8)
            if p[0] == "K" and len(p) == 9:
                kernels.append((int(p[1]), int(p[2]), int(p[3]), int(p[5]), p[8]))
            elif p[0] == "M":
                copies.append((int(p[1]), int(p[2]), int(p[3]), int(p[4]), int(p[5])))
            elif p[0] == "S":
                sets.append((int(p[1]), int(p[2]), int(p[3]), int(p[4])))
            elif p[0] == "A":
                apis.append((int(p[1]), int(p[2]), int(p[3]), " ".join(p[5:])))
    for xs in (kernels, copies, sets, apis):
        xs.sort()
    return kernels, copies, sets, apis


def short(name, width=60):
    # cubecl's kernel names carry a hash of their compile-time settings after the function name.
    return name if len(name) <= width else name[: width - 1] + "…"


def union_ns(intervals):
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def in_window(xs, lo, hi):
    return [x for x in xs if lo <= x[0] < hi]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--min-copy-bytes", type=int, default=100,
                    help="a device-to-host copy at least this large ends a step (default 100)")
    ap.add_argument("--detail", type=int, default=4, help="per-kernel tables for the K largest classes")
    ap.add_argument("--from-ms", type=float, default=0.0, help="skip segments before this time")
    ap.add_argument("--segments", type=lambda t: [int(x) for x in t.split(",")], default=[0],
                    help="also a per-kernel table for these segments (default 0: build and prefill)")
    args = ap.parse_args()
    kernels, copies, sets, apis = read(args.trace)
    if not kernels:
        raise SystemExit("no kernel records")
    t0 = min(kernels[0][0], apis[0][0] if apis else kernels[0][0])
    ends = [c[1] for c in copies if c[3] == 2 and c[4] >= args.min_copy_bytes]
    print(f"{len(kernels)} kernels, {len(copies)} copies, {len(sets)} memsets, {len(apis)} driver calls; "
          f"{len(ends)} step-ending copies; timeline {(kernels[-1][1] - t0) / 1e6:.1f} ms")
    segments = []
    prev = t0
    for end in ends:
        if (end - t0) / 1e6 >= args.from_ms:
            segments.append((prev, end))
        prev = end
    classes = collections.defaultdict(list)
    print("\nseg  start_ms   wall_ms  busy_ms  idle_ms  kernels  blocking-api-ms  class")
    rows = []
    for i, (lo, hi) in enumerate(segments):
        ks = in_window(kernels, lo, hi)
        busy = union_ns([(k[0], k[1]) for k in ks] + [(c[0], c[1]) for c in in_window(copies, lo, hi)]
                        + [(s[0], s[1]) for s in in_window(sets, lo, hi)])
        calls = in_window(apis, lo, hi)
        blocking = sum(a[1] - a[0] for a in calls if "Synchronize" in a[3] or "MemAlloc" in a[3]
                       or "MemFree" in a[3] or "cuMemcpyDtoH" in a[3] and "Async" not in a[3])
        sig = tuple(sorted(collections.Counter(k[4] for k in ks).items()))
        classes[sig].append(i)
        rows.append((lo, hi, busy, ks, calls))
        print(f"{i:3d} {(lo - t0) / 1e6:9.1f} {(hi - lo) / 1e6:9.3f} {busy / 1e6:8.3f} "
              f"{(hi - lo - busy) / 1e6:8.3f} {len(ks):8d} {blocking / 1e6:16.3f}  "
              f"{list(classes).index(sig)}")
    ranked = sorted(classes.items(), key=lambda kv: -len(kv[1]))
    picks = []
    for sig, members in ranked[: args.detail]:
        walls = [(rows[i][1] - rows[i][0]) / 1e6 for i in members]
        med = members[sorted(range(len(members)), key=lambda j: walls[j])[len(members) // 2]]
        picks.append((med, f"class {list(classes).index(sig)}: {len(members)} segments, wall median "
                           f"{statistics.median(walls):.3f} ms (min {min(walls):.3f}); its median"))
    picks += [(i, "asked for") for i in args.segments if i < len(rows)]
    for med, why in picks:
        lo, hi, busy, ks, calls = rows[med]
        print(f"\n== {why} segment {med}: wall {(hi - lo) / 1e6:.3f}, busy {busy / 1e6:.3f} ms, "
              f"{len(ks)} kernels")
        by = collections.defaultdict(lambda: [0, 0])
        for k in ks:
            by[k[4]][0] += 1
            by[k[4]][1] += k[1] - k[0]
        print("   count   total_ms   mean_us  kernel")
        for name, (n, ns) in sorted(by.items(), key=lambda kv: -kv[1][1])[:25]:
            print(f"  {n:6d} {ns / 1e6:10.3f} {ns / n / 1e3:9.1f}  {short(name, 90)}")
        api = collections.defaultdict(lambda: [0, 0])
        for a in calls:
            api[a[3]][0] += 1
            api[a[3]][1] += a[1] - a[0]
        print("   driver calls: " + ", ".join(f"{name} {n}x {ns / 1e6:.2f} ms" for name, (n, ns) in
                                             sorted(api.items(), key=lambda kv: -kv[1][1])[:8]))
        # Launch-bound or device-bound: how long each kernel waited after its launch call returned
        # versus after the previous kernel ended.
        launch_end = {a[2]: a[1] for a in calls if "Launch" in a[3]}
        starved, queued, prev_end = 0, 0, None
        for k in ks:
            le = launch_end.get(k[2])
            if prev_end is not None and le is not None:
                gap = k[0] - prev_end
                if gap > 0 and le > prev_end:
                    starved += gap
                else:
                    queued += 1
            prev_end = k[1] if prev_end is None else max(prev_end, k[1])
        print(f"   idle gaps while the host was still launching: {starved / 1e6:.3f} ms; "
              f"kernels already queued when the previous one ended: {queued} of {len(ks)}")


if __name__ == "__main__":
    main()
