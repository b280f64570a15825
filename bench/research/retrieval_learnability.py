"""PyTorch prototype of the retrieval task and the SDAR block-diffusion objective, used to find a
task format and recipe that a small model can learn (the Rust trainer in `crates/losa-train` is
what trains the shipped model; this script only explores, fast, on many settings at once).

Same model shape as the Rust recipe (Qwen3 layout: RMSNorm, q/k-norm, NeoX RoPE, GQA, SwiGLU,
tied embeddings), same task (records `K v1 .. vn .`, question `? K`, distinct value words), same
objective (one noised block per question, mask ratio t ~ U(0, 1), loss on masked tokens). Prints
value-token loss and accuracy every 100 steps and greedy exact match (`dsteps` steps per block,
lowest-confidence-first quota) every `every` steps.

    python3 bench/research/retrieval_learnability.py dev=cuda hidden=256 layers=2 ctx=128 lr=3e-4

The sweep that chose lr 3e-4 (8 settings in parallel on one H100, about 4.4K steps each) is in
`bench/research/sweep-h100/`: only lr=3e-4 (B) left the unigram plateau (value loss ln 2048 = 7.6)
within the time; H (64-token contexts, lr 1e-3) was leaving it slowly; the rest stayed on it.
Options: cont (fraction of plain-continuation rows), vcur (steps with a 64-word value vocabulary
first), qkg (initial q/k-norm gain).
"""
import math, random, sys, time, torch, torch.nn as nn, torch.nn.functional as F
import sys
A = dict(a.split('=') for a in sys.argv[1:])
torch.set_num_threads(int(A.get('threads', 1)))
DEV = A.get('dev', 'cpu'); STEPSPB = int(A.get('dsteps', 8)); NAME = A.get('name', 'run')
H = int(A.get('hidden', 128)); NL = int(A.get('layers', 2)); HD = 32; NH = H // HD; NKV = max(1, NH // 2)
LR = float(A.get('lr', 3e-3)); STEPS = int(A.get('steps', 2000)); CTX = int(A.get('ctx', 160)); BS = int(A.get('batch', 16))
Q = int(A.get('questions', 4)); BLOCK = 16; KEYS = int(A.get('keys', 1024)); VALS = int(A.get('vals', 2048))
TIE = int(A.get('tie', 1)); CONT = float(A.get('cont', 0)); VCUR = int(A.get('vcur', 0)); VNOW = [VALS]; QKG = float(A.get('qkg', 1)); MINV, MAXV = int(A.get('minv', 8)), int(A.get('maxv', 24)); THETA = float(A.get('theta', 10000))
EOS, MASK, DOT, QM = 0, 3, 5, 6
KEY0 = 16; VAL0 = KEY0 + KEYS; V = VAL0 + VALS
torch.manual_seed(0); random.seed(0)
def records(rng):
    recs = []; length = 2; used = set(); usedv = set()
    while True:
        n = rng.randint(MINV, MAXV)
        if length + 2 + n > CTX or len(usedv) + n > VNOW[0]: break
        while True:
            k = rng.randrange(KEYS)
            if k not in used: used.add(k); break
        v = []
        while len(v) < n:
            w = rng.randrange(VNOW[0])
            if w not in usedv: usedv.add(w); v.append(VAL0 + w)
        recs.append((KEY0 + k, v)); length += 2 + n
    return recs
def drill(rng):
    targets = []
    if rng.random() < CONT:
        S = [VAL0 + w for w in rng.sample(range(VNOW[0]), min(VNOW[0], CTX - 2))]
        ids = list(S); qs = []
        for _ in range(Q):
            m = rng.randint(MINV, MAXV); i = rng.randrange(0, max(1, len(S) - m - 1))
            qs.append((S[i], S[i + 1:i + 1 + m]))
    else:
        recs = records(rng)
        ids = []
        for k, v in recs: ids += [k] + v + [DOT]
        qs = [recs[a] for a in rng.sample(range(len(recs)), min(Q, len(recs)))]
    for k, v in qs:
        ids += [QM, k]; start = len(ids); ids += v + [EOS]
        padded = -(-len(ids) // BLOCK) * BLOCK; ids += [EOS] * (padded - len(ids))
        nb = rng.randrange(start // BLOCK, padded // BLOCK)
        lo, hi = max(nb * BLOCK, start), (nb + 1) * BLOCK
        t = rng.random(); ch = [i for i in range(lo, hi) if rng.random() < t] or [rng.randrange(lo, hi)]
        for i in ch: targets.append((i, ids[i])); ids[i] = MASK
        end = hi
    return ids[:end], targets
class RMS(nn.Module):
    def __init__(s, d): super().__init__(); s.w = nn.Parameter(torch.ones(d))
    def forward(s, x): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * s.w
def rope(x, pos):
    d = x.shape[-1]; inv = THETA ** (-torch.arange(0, d, 2).float() / d)
    f = pos[:, None].float() * inv.to(pos.device)[None]; c, s_ = torch.cat([f.cos()] * 2, -1), torch.cat([f.sin()] * 2, -1)
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return x * c + torch.cat([-x2, x1], -1) * s_
class Layer(nn.Module):
    def __init__(s):
        super().__init__(); s.n1 = RMS(H); s.n2 = RMS(H)
        s.q = nn.Linear(H, NH * HD, bias=False); s.k = nn.Linear(H, NKV * HD, bias=False); s.v = nn.Linear(H, NKV * HD, bias=False); s.o = nn.Linear(NH * HD, H, bias=False)
        s.qn = RMS(HD); s.kn = RMS(HD)
        nn.init.constant_(s.qn.w, QKG); nn.init.constant_(s.kn.w, QKG)
        s.g = nn.Linear(H, 3 * H, bias=False); s.u = nn.Linear(H, 3 * H, bias=False); s.d = nn.Linear(3 * H, H, bias=False)
    def forward(s, x, pos, mask):
        b, l, _ = x.shape; h = s.n1(x)
        q = rope(s.qn(s.q(h).view(b, l, NH, HD)).transpose(1, 2), pos); k = rope(s.kn(s.k(h).view(b, l, NKV, HD)).transpose(1, 2), pos)
        v = s.v(h).view(b, l, NKV, HD).transpose(1, 2)
        k = k.repeat_interleave(NH // NKV, 1); v = v.repeat_interleave(NH // NKV, 1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + s.o(a.transpose(1, 2).reshape(b, l, -1)); h = s.n2(x)
        return x + s.d(F.silu(s.g(h)) * s.u(h))
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.e = nn.Embedding(V, H); s.ls = nn.ModuleList(Layer() for _ in range(NL)); s.n = RMS(H); s.h = nn.Linear(H, V, bias=False)
        for p in s.parameters():
            if p.dim() == 2: nn.init.normal_(p, std=0.02)
        nn.init.normal_(s.e.weight, std=float(A.get('estd', 0.02)))
    def forward(s, ids):
        l = ids.shape[1]; pos = torch.arange(l, device=ids.device); blk = pos // BLOCK
        mask = blk[None, :] <= blk[:, None]
        x = s.e(ids)
        for L in s.ls: x = L(x, pos, mask)
        return s.n(x) @ s.e.weight.t() if TIE else s.h(s.n(x))
m = M().to(DEV); opt = torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=0.01, betas=(0.9, 0.95))
WARM = int(A.get('warm', 200))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / WARM) * (0.5 * (1 + math.cos(math.pi * min(s, STEPS) / STEPS)) * 0.9 + 0.1))
EVAL = int(A.get('every', 1000))
@torch.no_grad()
def evaluate(items=64):
    VNOW[0] = VALS
    er = random.Random(12345); ok = 0
    for _ in range(items):
        recs = records(er); k, v = recs[er.randrange(len(recs))]
        prompt = []
        for kk, vv in recs: prompt += [kk] + vv + [DOT]
        prompt += [QM, k]; want = v + [EOS]
        x = list(prompt); p = len(x)
        while len(x) - p < len(want):
            b = len(x) // BLOCK; end = (b + 1) * BLOCK; x += [MASK] * (end - len(x))
            quota = BLOCK // STEPSPB
            while MASK in x[b * BLOCK:]:
                lg = m(torch.tensor([x], device=DEV))[0, b * BLOCK:end].float().softmax(-1)
                lg[:, MASK] = 0
                conf, tok = lg.max(-1)
                masked = [i for i in range(BLOCK) if x[b * BLOCK + i] == MASK]
                masked.sort(key=lambda i: -conf[i].item())
                for i in masked[:quota]: x[b * BLOCK + i] = tok[i].item()
        ok += x[p:p + len(want)] == want
    return ok / items
rng = random.Random(1); t0 = time.time(); accl = []; lossl = []
SECS = float(A.get('secs', 1e9))
for step in range(STEPS):
    VNOW[0] = 64 if step < VCUR else VALS
    if time.time() - t0 > SECS: break
    rows = [drill(rng) for _ in range(BS)]; L = max(len(r[0]) for r in rows)
    ids = torch.full((BS, L), EOS); bi, pi, ti = [], [], []
    for b, (r, tg) in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        for i, t in tg: bi.append(b); pi.append(i); ti.append(t)
    lg = m(ids.to(DEV))[torch.tensor(bi, device=DEV), torch.tensor(pi, device=DEV)]; tt = torch.tensor(ti, device=DEV)
    loss = F.cross_entropy(lg, tt); opt.zero_grad(); loss.backward(); nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); sched.step()
    isv = tt >= VAL0
    with torch.no_grad(): vl = F.cross_entropy(lg[isv], tt[isv]).item(); va = (lg[isv].argmax(-1) == tt[isv]).float().mean().item()
    lossl.append(vl); accl.append(va)
    if (step + 1) % EVAL == 0: print(f"step {step+1} EXACT {evaluate():.3f}", flush=True)
    if (step + 1) % 100 == 0:
        print(f"step {step+1} loss {sum(lossl)/len(lossl):.3f} acc {sum(accl)/len(accl):.3f} t {time.time()-t0:.0f}s", flush=True); lossl, accl = [], []
print(f"final step {step} EXACT {evaluate(128):.3f} t {time.time()-t0:.0f}s", flush=True)
