#!/usr/bin/env python3
"""Golden cases of family `s_softcap` (the crate's own; not from shared/reference).

Logit scale and soft cap before Hinton's combined loss, in float64 with the Python standard
library only (no NumPy on the machines this was written on), gradients in closed form:

    z' = c * tanh(s * z / c)            (z' = s * z without a cap; +-inf kept)
    L  = alpha * T^2 * sum_kept KL(softmax(t'/T) || softmax(z'/T)) / n
       + (1 - alpha) * sum_kept CE(z', y) / n                n = kept rows (label != -100)
    dL/dz = dL/dz' * s * (1 - tanh^2(s * z / c))

Run: python3 tests/golden/own/make_softcap.py > tests/golden/own/s_softcap.json
"""
import json
import math
import random

IGNORE = -100


def transform(z, scale, cap):
    if math.isinf(z):
        return z, 0.0
    if cap is None:
        return scale * z, scale
    th = math.tanh(scale * z / cap)
    return cap * th, scale * (1.0 - th * th)


def log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row if not math.isinf(x)))
    return [x - lse for x in row]


def case(name, student, teacher, labels, T, alpha, s_scale, s_cap, t_scale, t_cap):
    rows, vocab = len(student), len(student[0])
    kept = [y != IGNORE for y in labels]
    n = sum(kept)
    loss = 0.0
    grad = [[0.0] * vocab for _ in range(rows)]
    for r in range(rows):
        zs, ds = zip(*(transform(z, s_scale, s_cap) for z in student[r]))
        zt = [transform(z, t_scale, t_cap)[0] for z in teacher[r]]
        if not kept[r]:
            continue
        log_q = log_softmax([z / T for z in zs])
        log_p = log_softmax([z / T for z in zt])
        log_q1 = log_softmax(list(zs))
        kl = sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q) if not math.isinf(lp))
        ce = -log_q1[labels[r]]
        loss += (alpha * T * T * kl + (1 - alpha) * ce) / n
        for i in range(vocab):
            q, p, q1 = math.exp(log_q[i]), math.exp(log_p[i]), math.exp(log_q1[i])
            dz = alpha * T * (q - p) + (1 - alpha) * (q1 - (1.0 if i == labels[r] else 0.0))
            grad[r][i] = dz / n * ds[i]
    enc = lambda x: ("-inf" if x < 0 else "inf") if math.isinf(x) else x
    flat = lambda m: [enc(x) for row in m for x in row]
    return {
        "name": name,
        "params": {"T": T, "alpha": alpha, "ignore_index": IGNORE,
                   "student_scale": s_scale, "student_softcap": s_cap,
                   "teacher_scale": t_scale, "teacher_softcap": t_cap},
        "inputs": {
            "student": {"dtype": "f64", "shape": [rows, vocab], "data": flat(student)},
            "teacher": {"dtype": "f64", "shape": [rows, vocab], "data": flat(teacher)},
            "labels": {"dtype": "i64", "shape": [rows], "data": labels},
        },
        "expected": {
            "loss": {"dtype": "f64", "shape": [], "data": [loss]},
            "grad_student": {"dtype": "f64", "shape": [rows, vocab], "data": flat(grad)},
        },
    }


def logits(rng, rows, vocab, spread):
    # Rounded to f32 so that the f32 inputs the tests build are exactly these values.
    import struct
    f32 = lambda x: struct.unpack("f", struct.pack("f", x))[0]
    return [[f32(rng.uniform(-spread, spread)) for _ in range(vocab)] for _ in range(rows)]


def main():
    rng = random.Random(20261202)
    cases = []
    s, t = logits(rng, 4, 6, 60.0), logits(rng, 4, 6, 60.0)
    cases.append(case("softcap_s30_t20_T2_a0.7_4x6", s, t, [2, IGNORE, 5, 0], 2.0, 0.7,
                      1.0, 30.0, 1.0, 20.0))
    s, t = logits(rng, 3, 5, 4.0), logits(rng, 3, 5, 4.0)
    cases.append(case("scale_s0.5_t2_T1_a0.5_3x5", s, t, [0, 4, 1], 1.0, 0.5,
                      0.5, None, 2.0, None))
    s, t = logits(rng, 3, 7, 50.0), logits(rng, 3, 7, 50.0)
    s[0][3] = t[0][3] = float("-inf")
    s[2][0] = t[2][0] = float("-inf")
    cases.append(case("softcap_scale_neginf_s1.5c25_t30_T3_a0.9_3x7", s, t, [1, 6, IGNORE], 3.0,
                      0.9, 1.5, 25.0, 1.0, 30.0))
    s, t = logits(rng, 2, 4, 1e4), logits(rng, 2, 4, 1e4)
    cases.append(case("softcap_huge_1e4_c50_T1_a0.5_2x4", s, t, [3, 0], 1.0, 0.5,
                      1.0, 50.0, 1.0, 50.0))
    print(json.dumps({
        "family": "s_softcap",
        "title": "logit scale and soft cap before alpha * Hinton KD + (1 - alpha) * CE",
        "conventions": "see make_softcap.py",
        "generator": "tests/golden/own/make_softcap.py (Python standard library, float64)",
        "seed": 20261202,
        "cases": cases,
    }, indent=1))


main()
