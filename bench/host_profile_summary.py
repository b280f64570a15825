#!/usr/bin/env python3
"""Per-function tables of a host profile (`LOSA_HOST_PROFILE`'s folded stacks).

Each input line is `thread;root;...;leaf count`. The tables count samples per thread, then per
function: `self` where the function is the leaf (the time spent in its own code) and `incl`
where it is anywhere on the stack (counted once per stack). `--within F` keeps only stacks
that pass through a function whose name contains F (e.g. the decode loop); a worker thread's
stacks never pass through the caller's functions, so `--within` drops them: compare a run with
and without it.

    python3 bench/host_profile_summary.py folded-losa.txt --within decode --top 40
"""
import argparse
import collections
import re


def short(name: str) -> str:
    """A Rust symbol without its generic arguments and hash: `a::b<T>::c::h123` -> `a::b::c`."""
    depth, out = 0, []
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    s = "".join(out)
    s = re.sub(r"::h[0-9a-f]{16}$", "", s)
    return s.replace("{{closure}}", "{closure}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folded")
    ap.add_argument("--within", help="keep stacks through a function whose name contains this")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    per_thread = collections.Counter()
    self_count = collections.defaultdict(collections.Counter)
    incl_count = collections.defaultdict(collections.Counter)
    with open(args.folded) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            parts = stack.split(";")
            thread, frames = parts[0], [short(p) for p in parts[1:]]
            if args.within and not any(args.within in fr for fr in frames):
                continue
            n = int(count)
            per_thread[thread] += n
            if frames:
                self_count[thread][frames[-1]] += n
            for fr in set(frames):
                incl_count[thread][fr] += n
    total = sum(per_thread.values())
    print(f"# {args.folded}: {total} samples" + (f" through '{args.within}'" if args.within else ""))
    for thread, n in per_thread.most_common():
        print(f"\n== thread {thread}: {n} samples ({100.0 * n / max(total, 1):.1f}%)")
        print("  self%   incl%  function")
        rows = sorted(incl_count[thread].items(), key=lambda kv: -kv[1])[: args.top]
        for fn, c in rows:
            s = self_count[thread].get(fn, 0)
            print(f"{100.0 * s / n:7.1f} {100.0 * c / n:7.1f}  {fn[:160]}")
        print("  -- by self time --")
        for fn, s in self_count[thread].most_common(args.top // 2):
            print(f"{100.0 * s / n:7.1f}          {fn[:160]}")


if __name__ == "__main__":
    main()
