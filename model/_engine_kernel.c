/* Compiled integer engine: Engine.step and Engine.tables_parallel (model/engine.py) in C.
 *
 * Why: the numpy engine makes ~170 numpy calls per step (call overhead dominates at small
 * B) and streams its (B, H, Q, K) score blocks through ~15 int64 passes (memory traffic
 * dominates at large B); benchmarks/results/engine.md has the profile. Here one call runs
 * every layer of one step, or of a whole parallel pass, with int8 x int8 dot products in
 * int32 (AVX2 vpmaddwd where the CPU has it, checked at run time; plain C otherwise).
 *
 * The numpy code stays the reference: tests/test_engine_kernel.py compares the two table
 * for table. Why they agree bit for bit (docs/numerics.md, "The compiled engine"):
 * - every matmul is a sum of int8 x int8 (or Q16 x int8) products that numpy forms in
 *   float32, exactly (every partial sum < 2**24). Here the same sums are formed in int32,
 *   exactly too (|sum| < 2**24 < 2**31), in whatever order SIMD likes: equal integers;
 * - every other op is the same int64 expression as in engine.py, evaluated in the same
 *   order of operations. Products and sums that numpy forms on int64 wrap modulo 2**64;
 *   here they are formed on uint64 and converted back (signed overflow is undefined in C),
 *   so even out-of-bound inputs give numpy's result. >> on a negative int64 is an
 *   arithmetic (flooring) shift as numpy's: gcc and clang define it so (checked below);
 *   / is only applied to positive operands, where C's truncation is numpy's floor;
 * - reductions (max, sums, argmax = first index of the max) are order-independent, so the
 *   ring buffer's slot order and the parallel pass's position order give equal values;
 *   masked keys are simply skipped (numpy gives them weight exactly 0).
 *
 * The kernel owns no state between calls: a Kernel holds read-only views of the packed
 * weights (built by engine.py), and the step-mode KV caches are numpy arrays owned by the
 * Engine and passed in on every call. The GIL is released while computing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_engine_step.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TZ_X86 1
#endif

#if (-1 >> 1) != -1
#error "this kernel needs an arithmetic >> on negative signed integers (as numpy's)"
#endif

typedef int64_t i64;
typedef uint64_t u64;
typedef int32_t i32;
typedef int16_t i16;
typedef uint32_t u32;

#define QMAX 127
#define RES_LIMIT ((i64)1 << 26)
#define NORM_FRAC_BITS 20
#define INV_BITS 40
#define PROB_BITS 16
#define NB 16 /* output columns per packed weight block */

static inline i64 asr(i64 v, int s) { return v >> s; }
/* numpy's int64 a * b + c (wrapping) */
static inline i64 mad(i64 a, i64 b, i64 c) { return (i64)((u64)a * (u64)b + (u64)c); }
/* requant(acc, M, S) = (acc * M + 2**(S-1)) >> S */
static inline i64 rq(i64 acc, i64 m, int s) { return asr(mad(acc, m, (i64)1 << (s - 1)), s); }
static inline i64 clip(i64 v, i64 lo, i64 hi) { return v < lo ? lo : (v > hi ? hi : v); }
static inline i64 clip8(i64 v) { return clip(v, -QMAX, QMAX); }

/* floor(sqrt(n)) for n >= 1: the Newton iteration of docs/numerics.md, then a check that
 * makes it exact whatever happened (numpy's isqrt equals math.isqrt, tested). */
static i64 isqrt64(i64 n) {
    i64 m = n, x;
    int bl = 1;
    static const int sh[6] = {32, 16, 8, 4, 2, 1};
    for (int i = 0; i < 6; i++)
        if ((m >> sh[i]) > 0) {
            bl += sh[i];
            m >>= sh[i];
        }
    x = (i64)1 << ((bl + 1) >> 1);
    for (int i = 0; i < 7; i++) {
        i64 y = (x + n / x) >> 1;
        if (y < x) x = y;
    }
    while ((u64)x * (u64)x > (u64)n) x--;
    while ((u64)(x + 1) * (u64)(x + 1) <= (u64)n) x++;
    return x;
}

/* ---- model layout ----------------------------------------------------------------- */

typedef struct {
    const i16 *w; /* packed [Np/16][Kp/2][16][2] */
    int8_t *w8;   /* the same as int8 (owned), or NULL if some entry is outside int8 */
    const i64 *m;
    int s, K, N, Kp, Np;
} Lin;

typedef struct {
    const i64 *m;
    int s;
} Sc;

typedef struct {
    Sc n1;
    Lin qkv;
    i64 score_m;
    int score_s;
    const i64 *alibi;
    i64 pv_m;
    int pv_s;
    Lin proj;
    Sc n2;
    Lin fc, down;
} Layer;

typedef struct {
    PyObject_HEAD
    Py_buffer wb, ib;
    int have_wb, have_ib;
    int V, C, L, H, hd, hdp, F, W, lut_n, fbits, Cp, Fp;
    const i16 *emb_w;
    const i64 *emb_m;
    int emb_s;
    Layer *layers;
    Sc nf;
    Lin head;
    const i64 *lut;
    int simd;
} Kernel;

static int cpu_avx2 = 0;

/* ---- int8 x int8 -> int32 matmul ---------------------------------------------------- */

/* out (rows, Np) int32 = a (rows, Kp) int16 @ W^T, W packed as in Lin. */
static void gemm_c(const i16 *a, int rows, int lda, const Lin *L, i32 *out) {
    int kp2 = L->Kp / 2, nblk = L->Np / NB;
    for (int r = 0; r < rows; r++) {
        const i16 *ar = a + (size_t)r * lda;
        for (int nb = 0; nb < nblk; nb++) {
            const i16 *w = L->w + (size_t)nb * kp2 * 2 * NB;
            i32 acc[NB] = {0};
            for (int p = 0; p < kp2; p++) {
                i32 a0 = ar[2 * p], a1 = ar[2 * p + 1];
                const i16 *wp = w + (size_t)p * 2 * NB;
                for (int c = 0; c < NB; c++) acc[c] += a0 * wp[2 * c] + a1 * wp[2 * c + 1];
            }
            memcpy(out + (size_t)r * L->Np + nb * NB, acc, sizeof acc);
        }
    }
}

#ifdef TZ_X86
static inline i32 pair_at(const i16 *p) {
    i32 v;
    memcpy(&v, p, 4);
    return v;
}

__attribute__((target("avx2"))) static void gemm_avx2(const i16 *a, int rows, int lda,
                                                      const Lin *L, i32 *out) {
    int kp2 = L->Kp / 2, nblk = L->Np / NB;
    size_t ldo = (size_t)L->Np;
    for (int nb = 0; nb < nblk; nb++) {
        const i16 *w = L->w + (size_t)nb * kp2 * 2 * NB;
        int r = 0;
        for (; r + 4 <= rows; r += 4) {
            const i16 *a0 = a + (size_t)r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
            __m256i c20 = c00, c21 = c00, c30 = c00, c31 = c00;
            for (int p = 0; p < kp2; p++) {
                __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + (size_t)p * 32));
                __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + (size_t)p * 32 + 16));
                __m256i x;
                x = _mm256_set1_epi32(pair_at(a0 + 2 * p));
                c00 = _mm256_add_epi32(c00, _mm256_madd_epi16(x, w0));
                c01 = _mm256_add_epi32(c01, _mm256_madd_epi16(x, w1));
                x = _mm256_set1_epi32(pair_at(a1 + 2 * p));
                c10 = _mm256_add_epi32(c10, _mm256_madd_epi16(x, w0));
                c11 = _mm256_add_epi32(c11, _mm256_madd_epi16(x, w1));
                x = _mm256_set1_epi32(pair_at(a2 + 2 * p));
                c20 = _mm256_add_epi32(c20, _mm256_madd_epi16(x, w0));
                c21 = _mm256_add_epi32(c21, _mm256_madd_epi16(x, w1));
                x = _mm256_set1_epi32(pair_at(a3 + 2 * p));
                c30 = _mm256_add_epi32(c30, _mm256_madd_epi16(x, w0));
                c31 = _mm256_add_epi32(c31, _mm256_madd_epi16(x, w1));
            }
            i32 *o = out + (size_t)r * ldo + nb * NB;
            _mm256_storeu_si256((__m256i *)o, c00);
            _mm256_storeu_si256((__m256i *)(o + 8), c01);
            _mm256_storeu_si256((__m256i *)(o + ldo), c10);
            _mm256_storeu_si256((__m256i *)(o + ldo + 8), c11);
            _mm256_storeu_si256((__m256i *)(o + 2 * ldo), c20);
            _mm256_storeu_si256((__m256i *)(o + 2 * ldo + 8), c21);
            _mm256_storeu_si256((__m256i *)(o + 3 * ldo), c30);
            _mm256_storeu_si256((__m256i *)(o + 3 * ldo + 8), c31);
        }
        for (; r < rows && L->w8; r++) {
            /* single rows (the decoder's steps) are bound by loading weights: int8 halves
             * the bytes, vpmovsxbw widens them to the same int16 lanes */
            const i16 *a0 = a + (size_t)r * lda;
            const int8_t *w8 = L->w8 + (size_t)nb * kp2 * 2 * NB;
            __m256i c0 = _mm256_setzero_si256(), c1 = c0;
            for (int p = 0; p < kp2; p++) {
                __m256i x = _mm256_set1_epi32(pair_at(a0 + 2 * p));
                c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(x, _mm256_cvtepi8_epi16(
                    _mm_loadu_si128((const __m128i *)(w8 + (size_t)p * 32)))));
                c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(x, _mm256_cvtepi8_epi16(
                    _mm_loadu_si128((const __m128i *)(w8 + (size_t)p * 32 + 16)))));
            }
            i32 *o = out + (size_t)r * ldo + nb * NB;
            _mm256_storeu_si256((__m256i *)o, c0);
            _mm256_storeu_si256((__m256i *)(o + 8), c1);
        }
        for (; r < rows; r++) {
            const i16 *a0 = a + (size_t)r * lda;
            __m256i c0 = _mm256_setzero_si256(), c1 = c0, d0 = c0, d1 = c0;
            int p = 0;
            for (; p + 2 <= kp2; p += 2) { /* two chains: more independent adds */
                __m256i x = _mm256_set1_epi32(pair_at(a0 + 2 * p));
                __m256i y = _mm256_set1_epi32(pair_at(a0 + 2 * p + 2));
                c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(
                    x, _mm256_loadu_si256((const __m256i *)(w + (size_t)p * 32))));
                c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(
                    x, _mm256_loadu_si256((const __m256i *)(w + (size_t)p * 32 + 16))));
                d0 = _mm256_add_epi32(d0, _mm256_madd_epi16(
                    y, _mm256_loadu_si256((const __m256i *)(w + (size_t)p * 32 + 32))));
                d1 = _mm256_add_epi32(d1, _mm256_madd_epi16(
                    y, _mm256_loadu_si256((const __m256i *)(w + (size_t)p * 32 + 48))));
            }
            for (; p < kp2; p++) {
                __m256i x = _mm256_set1_epi32(pair_at(a0 + 2 * p));
                c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(
                    x, _mm256_loadu_si256((const __m256i *)(w + (size_t)p * 32))));
                c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(
                    x, _mm256_loadu_si256((const __m256i *)(w + (size_t)p * 32 + 16))));
            }
            i32 *o = out + (size_t)r * ldo + nb * NB;
            _mm256_storeu_si256((__m256i *)o, _mm256_add_epi32(c0, d0));
            _mm256_storeu_si256((__m256i *)(o + 8), _mm256_add_epi32(c1, d1));
        }
    }
}
#endif

static void gemm(const Kernel *k, const i16 *a, int rows, int lda, const Lin *L, i32 *out) {
#ifdef TZ_X86
    if (k->simd) {
        gemm_avx2(a, rows, lda, L, out);
        return;
    }
#endif
    gemm_c(a, rows, lda, L, out);
}

/* ---- attention -------------------------------------------------------------------- */

/* Scores s[j] = q . k_j for j in [j0, j1); kt holds int8 pairs [hp][ks][2]. */
static void scores_c(const i16 *q, int hp, const int8_t *kt, size_t ks, int j0, int j1,
                     i32 *s) {
    for (int j = j0; j < j1; j++) s[j] = 0;
    for (int p = 0; p < hp; p++) {
        i32 q0 = q[2 * p], q1 = q[2 * p + 1];
        const int8_t *kp = kt + (size_t)p * ks * 2;
        for (int j = j0; j < j1; j++) s[j] += q0 * kp[2 * j] + q1 * kp[2 * j + 1];
    }
}

/* acc[d] += sum_j P[j] v[j][d] for j in [j0, j1); v rows of hdp int8. */
static void pv_c(const i32 *P, const int8_t *v, int hdp, int j0, int j1, i32 *acc) {
    for (int j = j0; j < j1; j++) {
        i32 p = P[j];
        const int8_t *vj = v + (size_t)j * hdp;
        for (int d = 0; d < hdp; d++) acc[d] += p * vj[d];
    }
}

#ifdef TZ_X86
__attribute__((target("avx2"))) static inline __m256i kpairs8(const int8_t *kp) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)kp)); /* 8 key pairs */
}

__attribute__((target("avx2"))) static void scores_avx2(const i16 *q, int hp, const int8_t *kt,
                                                        size_t ks, int j0, int j1, i32 *s) {
    int j = j0;
    for (; j + 32 <= j1; j += 32) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int p = 0; p < hp; p++) {
            __m256i x = _mm256_set1_epi32(pair_at(q + 2 * p));
            const int8_t *kp = kt + ((size_t)p * ks + j) * 2;
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x, kpairs8(kp)));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(x, kpairs8(kp + 16)));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(x, kpairs8(kp + 32)));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(x, kpairs8(kp + 48)));
        }
        _mm256_storeu_si256((__m256i *)(s + j), a0);
        _mm256_storeu_si256((__m256i *)(s + j + 8), a1);
        _mm256_storeu_si256((__m256i *)(s + j + 16), a2);
        _mm256_storeu_si256((__m256i *)(s + j + 24), a3);
    }
    for (; j + 8 <= j1; j += 8) {
        __m256i a0 = _mm256_setzero_si256();
        for (int p = 0; p < hp; p++) {
            __m256i x = _mm256_set1_epi32(pair_at(q + 2 * p));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x, kpairs8(kt + ((size_t)p * ks + j) * 2)));
        }
        _mm256_storeu_si256((__m256i *)(s + j), a0);
    }
    if (j < j1) scores_c(q, hp, kt, ks, j, j1, s);
}

__attribute__((target("avx2"))) static inline __m256i v8(const int8_t *v) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)v));
}

__attribute__((target("avx2"))) static void pv_avx2(const i32 *P, const int8_t *v, int hdp,
                                                    int j0, int j1, i32 *acc) {
    int d0 = 0;
    for (; d0 + 32 <= hdp; d0 += 32) {
        __m256i c0 = _mm256_loadu_si256((const __m256i *)(acc + d0)), c1, c2, c3;
        c1 = _mm256_loadu_si256((const __m256i *)(acc + d0 + 8));
        c2 = _mm256_loadu_si256((const __m256i *)(acc + d0 + 16));
        c3 = _mm256_loadu_si256((const __m256i *)(acc + d0 + 24));
        for (int j = j0; j < j1; j++) {
            __m256i p = _mm256_set1_epi32(P[j]);
            const int8_t *vj = v + (size_t)j * hdp + d0;
            c0 = _mm256_add_epi32(c0, _mm256_mullo_epi32(p, v8(vj)));
            c1 = _mm256_add_epi32(c1, _mm256_mullo_epi32(p, v8(vj + 8)));
            c2 = _mm256_add_epi32(c2, _mm256_mullo_epi32(p, v8(vj + 16)));
            c3 = _mm256_add_epi32(c3, _mm256_mullo_epi32(p, v8(vj + 24)));
        }
        _mm256_storeu_si256((__m256i *)(acc + d0), c0);
        _mm256_storeu_si256((__m256i *)(acc + d0 + 8), c1);
        _mm256_storeu_si256((__m256i *)(acc + d0 + 16), c2);
        _mm256_storeu_si256((__m256i *)(acc + d0 + 24), c3);
    }
    if (d0 + 24 == hdp) { /* hd = 24 (d_model 96, 4 heads): one pass */
        __m256i c0 = _mm256_loadu_si256((const __m256i *)(acc + d0)), c1, c2;
        c1 = _mm256_loadu_si256((const __m256i *)(acc + d0 + 8));
        c2 = _mm256_loadu_si256((const __m256i *)(acc + d0 + 16));
        for (int j = j0; j < j1; j++) {
            __m256i p = _mm256_set1_epi32(P[j]);
            const int8_t *vj = v + (size_t)j * hdp + d0;
            c0 = _mm256_add_epi32(c0, _mm256_mullo_epi32(p, v8(vj)));
            c1 = _mm256_add_epi32(c1, _mm256_mullo_epi32(p, v8(vj + 8)));
            c2 = _mm256_add_epi32(c2, _mm256_mullo_epi32(p, v8(vj + 16)));
        }
        _mm256_storeu_si256((__m256i *)(acc + d0), c0);
        _mm256_storeu_si256((__m256i *)(acc + d0 + 8), c1);
        _mm256_storeu_si256((__m256i *)(acc + d0 + 16), c2);
        d0 += 24;
    }
    for (; d0 + 8 <= hdp; d0 += 8) {
        __m256i c0 = _mm256_loadu_si256((const __m256i *)(acc + d0));
        for (int j = j0; j < j1; j++)
            c0 = _mm256_add_epi32(c0, _mm256_mullo_epi32(_mm256_set1_epi32(P[j]),
                                                         v8(v + (size_t)j * hdp + d0)));
        _mm256_storeu_si256((__m256i *)(acc + d0), c0);
    }
    for (; d0 < hdp; d0++) {
        i32 c = acc[d0];
        for (int j = j0; j < j1; j++) c += P[j] * v[(size_t)j * hdp + d0];
        acc[d0] = c;
    }
}

/* z[j] = (s[j] * M - (base - j) * A + half) >> S for j in [j0, j1) (numpy's int64
 * expression, wrapping), returning max(zmax, max z[j]). 4 lanes of int64; AVX2 has no
 * arithmetic 64-bit shift: asr(x, S) = ~lsr(~x, S) for x < 0. |s| < 2**31, |M| < 2**30:
 * vpmuldq's signed 32 x 32 -> 64 product is exact. */
__attribute__((target("avx2"))) static i64 logits_avx2(const i32 *s, i64 M, i64 A, i64 half,
                                                       int S, i64 base, int j0, int j1,
                                                       i64 *z, i64 zmax) {
    int j = j0;
    if (j1 - j0 >= 4 && M >= INT32_MIN && M <= INT32_MAX) {
        __m256i m = _mm256_set1_epi64x(M), h = _mm256_set1_epi64x(half);
        __m256i da = _mm256_set_epi64x((i64)((u64)(base - j0 - 3) * (u64)A),
                                       (i64)((u64)(base - j0 - 2) * (u64)A),
                                       (i64)((u64)(base - j0 - 1) * (u64)A),
                                       (i64)((u64)(base - j0) * (u64)A));
        __m256i step = _mm256_set1_epi64x((i64)((u64)A * 4));
        __m256i mx = _mm256_set1_epi64x(zmax), zero = _mm256_setzero_si256();
        __m128i sh = _mm_cvtsi32_si128(S);
        for (; j + 4 <= j1; j += 4) {
            __m256i sv = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(s + j)));
            __m256i x = _mm256_add_epi64(_mm256_sub_epi64(_mm256_mul_epi32(sv, m), da), h);
            __m256i neg = _mm256_cmpgt_epi64(zero, x);
            __m256i y = _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(x, neg), sh), neg);
            _mm256_storeu_si256((__m256i *)(z + j), y);
            mx = _mm256_blendv_epi8(mx, y, _mm256_cmpgt_epi64(y, mx));
            da = _mm256_sub_epi64(da, step);
        }
        i64 t[4];
        _mm256_storeu_si256((__m256i *)t, mx);
        for (int i = 0; i < 4; i++)
            if (t[i] > zmax) zmax = t[i];
    }
    for (; j < j1; j++) {
        i64 zz = asr((i64)((u64)s[j] * (u64)M - (u64)(base - j) * (u64)A + (u64)half), S);
        z[j] = zz;
        if (zz > zmax) zmax = zz;
    }
    return zmax;
}
#endif

#ifdef TZ_X86
/* e[j] = lut[min(zmax - z[j], last)] in place over z[j0..j1), returning their sum. */
__attribute__((target("avx2"))) static i64 exp_avx2(const i64 *lut, int last, i64 zmax,
                                                    i64 *z, int j0, int j1) {
    int j = j0;
    i64 Z = 0;
    if (j1 - j0 >= 4) {
        __m256i mx = _mm256_set1_epi64x(zmax), lim = _mm256_set1_epi64x(last);
        __m256i sum = _mm256_setzero_si256();
        for (; j + 4 <= j1; j += 4) {
            __m256i d = _mm256_sub_epi64(mx, _mm256_loadu_si256((const __m256i *)(z + j)));
            d = _mm256_blendv_epi8(d, lim, _mm256_cmpgt_epi64(d, lim)); /* d >= 0 */
            __m256i e = _mm256_i64gather_epi64((const long long *)lut, d, 8);
            _mm256_storeu_si256((__m256i *)(z + j), e);
            sum = _mm256_add_epi64(sum, e);
        }
        i64 t[4];
        _mm256_storeu_si256((__m256i *)t, sum);
        Z = t[0] + t[1] + t[2] + t[3];
    }
    for (; j < j1; j++) {
        u64 d = (u64)zmax - (u64)z[j];
        d = d < (u64)last ? d : (u64)last;
        z[j] = lut[d];
        Z += z[j];
    }
    return Z;
}

/* P[j] = (e[j] * R) >> 32 for e = z[j0..j1) (0 <= e <= 2**16) and R < 2**32: vpmuludq's
 * unsigned 32 x 32 -> 64 product is exact. */
__attribute__((target("avx2"))) static void probs_avx2(const i64 *z, i64 R, int j0, int j1,
                                                      i32 *P) {
    int j = j0;
    __m256i r = _mm256_set1_epi64x(R), pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (; j + 4 <= j1; j += 4) {
        __m256i p = _mm256_srli_epi64(
            _mm256_mul_epu32(_mm256_loadu_si256((const __m256i *)(z + j)), r), PROB_BITS + 16);
        _mm_storeu_si128((__m128i *)(P + j),
                         _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(p, pick)));
    }
    for (; j < j1; j++) P[j] = (i32)((z[j] * R) >> (PROB_BITS + 16));
}
#endif

/* Keys of one query: up to two ranges [j0, j1) of buffer slots, distance base - j. */
typedef struct {
    int n;
    int j0[2], j1[2];
    i64 base[2];
} Ranges;

/* One head of one query: q (hdp int16), keys kt (int8 [hp][ks][2]), values v (int8
 * [ks][hdp]) -> o[0..hd) int8 values. s: int32, z: int64 scratch of ks entries. */
static void attend(const Kernel *k, const Layer *ly, int h, const i16 *q, const int8_t *kt,
                   size_t ks, const int8_t *v, const Ranges *rg, i32 *s, i64 *z, i16 *o) {
    int hp = k->hdp / 2, last = k->lut_n - 1;
    i64 A = ly->alibi[h], M = ly->score_m, half = (i64)1 << (ly->score_s - 1);
    int S = ly->score_s;
    i64 zmax = INT64_MIN;
    for (int r = 0; r < rg->n; r++) {
        int j0 = rg->j0[r], j1 = rg->j1[r];
        i64 base = rg->base[r];
#ifdef TZ_X86
        if (k->simd) {
            scores_avx2(q, hp, kt, ks, j0, j1, s);
            zmax = logits_avx2(s, M, A, half, S, base, j0, j1, z, zmax);
            continue;
        }
#endif
        scores_c(q, hp, kt, ks, j0, j1, s);
        for (int j = j0; j < j1; j++) {
            /* (s * M - dist * A + 2**(S-1)) >> S, as numpy's int64 expression */
            i64 zz = asr((i64)((u64)s[j] * (u64)M - (u64)(base - j) * (u64)A + (u64)half), S);
            z[j] = zz;
            if (zz > zmax) zmax = zz;
        }
    }
    /* e = lut[min(zmax - z, last)] in place of z; zmax - z >= 0 (zmax is their max, and
     * |z| < 2**62 after the shift: no wrap) */
    i64 Z = 0;
    for (int r = 0; r < rg->n; r++) {
#ifdef TZ_X86
        if (k->simd) {
            Z += exp_avx2(k->lut, last, zmax, z, rg->j0[r], rg->j1[r]);
            continue;
        }
#endif
        for (int j = rg->j0[r]; j < rg->j1[r]; j++) {
            u64 d = (u64)zmax - (u64)z[j];
            d = d < (u64)last ? d : (u64)last; /* branch-free: a cmov */
            z[j] = k->lut[d];
            Z += z[j];
        }
    }
    /* Q16 probabilities via one reciprocal; e <= 2**16 <= Z, so e * R < 2**49. Keys of
     * probability 0 go through P @ V too (adding exactly 0): in trained models most keys
     * of the window have P > 0, and skipping the others costs more than it saves. */
    i64 R = ((i64)1 << (2 * PROB_BITS + 16)) / Z;
    i32 acc[1040 + 16];
    memset(acc, 0, sizeof(i32) * (size_t)k->hdp);
    for (int r = 0; r < rg->n; r++) {
        int j0 = rg->j0[r], j1 = rg->j1[r];
#ifdef TZ_X86
        if (k->simd && R < ((i64)1 << 32)) {
            probs_avx2(z, R, j0, j1, s);
            pv_avx2(s, v, k->hdp, j0, j1, acc);
            continue;
        }
#endif
        for (int j = j0; j < j1; j++) s[j] = (i32)asr(z[j] * R, PROB_BITS + 16);
        pv_c(s, v, k->hdp, j0, j1, acc);
    }
    for (int d = 0; d < k->hd; d++) o[d] = (i16)clip8(rq(acc[d], ly->pv_m, ly->pv_s));
}

/* ---- per-row pieces --------------------------------------------------------------- */

#ifdef TZ_X86
/* requant of 4 int32 accumulators by 4 multipliers (|M| < 2**31, checked at init, so
 * vpmuldq's signed 32 x 32 -> 64 product is exact and |acc * M + half| < 2**63: the
 * scalar code's uint64 wrap never happens); asr(x, s) = ~lsr(~x, s) for x < 0. */
__attribute__((target("avx2"))) static inline __m256i rq4(const i32 *acc, const i64 *m,
                                                          __m256i half, __m128i sh) {
    __m256i a = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)acc));
    __m256i x = _mm256_add_epi64(_mm256_mul_epi32(a, _mm256_loadu_si256((const __m256i *)m)),
                                 half);
    __m256i neg = _mm256_cmpgt_epi64(_mm256_setzero_si256(), x);
    return _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(x, neg), sh), neg);
}

__attribute__((target("avx2"))) static inline __m256i clip4(__m256i y, __m256i lo,
                                                            __m256i hi) {
    y = _mm256_blendv_epi8(y, lo, _mm256_cmpgt_epi64(lo, y));
    return _mm256_blendv_epi8(y, hi, _mm256_cmpgt_epi64(y, hi));
}

__attribute__((target("avx2"))) static void rq_row_avx2(const i32 *acc, const i64 *m, int s,
                                                        int n, i64 lo, i64 hi, i16 *out) {
    __m256i half = _mm256_set1_epi64x((i64)1 << (s - 1)), vlo = _mm256_set1_epi64x(lo);
    __m256i vhi = _mm256_set1_epi64x(hi), pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    __m128i sh = _mm_cvtsi32_si128(s);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256i y = clip4(rq4(acc + i, m + i, half, sh), vlo, vhi); /* fits int16 */
        __m128i y32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y, pick));
        _mm_storel_epi64((__m128i *)(out + i), _mm_packs_epi32(y32, y32));
    }
    for (; i < n; i++) out[i] = (i16)clip(rq(acc[i], m[i], s), lo, hi);
}

__attribute__((target("avx2"))) static void add_residual_avx2(i64 *x, int C, const i32 *acc,
                                                              const i64 *m, int s) {
    __m256i half = _mm256_set1_epi64x((i64)1 << (s - 1));
    __m256i lo = _mm256_set1_epi64x(-RES_LIMIT), hi = _mm256_set1_epi64x(RES_LIMIT);
    __m128i sh = _mm_cvtsi32_si128(s);
    int c = 0;
    for (; c + 4 <= C; c += 4) {
        __m256i y = _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)(x + c)),
                                     rq4(acc + c, m + c, half, sh)); /* wraps as numpy */
        _mm256_storeu_si256((__m256i *)(x + c), clip4(y, lo, hi));
    }
    for (; c < C; c++)
        x[c] = clip((i64)((u64)x[c] + (u64)rq(acc[c], m[c], s)), -RES_LIMIT, RES_LIMIT);
}
#endif

/* out[i] = clip(requant(acc[i], m[i], s), lo, hi) as int16, for lo, hi within int16 */
static void rq_row(const Kernel *k, const i32 *acc, const i64 *m, int s, int n, i64 lo, i64 hi,
                   i16 *out) {
#ifdef TZ_X86
    if (k->simd) {
        rq_row_avx2(acc, m, s, n, lo, hi, out);
        return;
    }
#endif
    for (int i = 0; i < n; i++) out[i] = (i16)clip(rq(acc[i], m[i], s), lo, hi);
}

/* x = clip(x + requant(acc), +-RES_LIMIT) */
static void add_residual(const Kernel *k, i64 *x, int C, const i32 *acc, const Lin *L) {
#ifdef TZ_X86
    if (k->simd) {
        add_residual_avx2(x, C, acc, L->m, L->s);
        return;
    }
#endif
    for (int c = 0; c < C; c++)
        x[c] = clip((i64)((u64)x[c] + (u64)rq(acc[c], L->m[c], L->s)), -RES_LIMIT, RES_LIMIT);
}

#ifdef TZ_X86
/* The norm's x / rms and requant for |x| <= 2**26 (every residual after its first clip):
 * (x * inv) >> 20 = x * ih + ((x * il) >> 20) with inv = ih * 2**20 + il (exact: the first
 * term is a multiple of 2**20), both products exact in vpmuldq; |y| < 2**26 (numerics.md),
 * so rq4 applies. */
__attribute__((target("avx2"))) static void norm_apply_avx2(const i64 *x, int C, i64 inv,
                                                            const i64 *m, int s, i16 *h) {
    __m256i ih = _mm256_set1_epi64x(inv >> 20), il = _mm256_set1_epi64x(inv & 0xFFFFF);
    __m256i half = _mm256_set1_epi64x((i64)1 << (s - 1)), zero = _mm256_setzero_si256();
    __m256i lo = _mm256_set1_epi64x(-QMAX), hi = _mm256_set1_epi64x(QMAX);
    __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    __m128i sh = _mm_cvtsi32_si128(s), sh20 = _mm_cvtsi32_si128(20);
    int c = 0;
    for (; c + 4 <= C; c += 4) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + c));
        __m256i b = _mm256_mul_epi32(xv, il), nb = _mm256_cmpgt_epi64(zero, b);
        b = _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(b, nb), sh20), nb);
        __m256i y = _mm256_add_epi64(_mm256_mul_epi32(xv, ih), b);
        __m256i t = _mm256_add_epi64(
            _mm256_mul_epi32(y, _mm256_loadu_si256((const __m256i *)(m + c))), half);
        __m256i nt = _mm256_cmpgt_epi64(zero, t);
        t = _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(t, nt), sh), nt);
        t = clip4(t, lo, hi);
        __m128i t32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(t, pick));
        _mm_storel_epi64((__m128i *)(h + c), _mm_packs_epi32(t32, t32));
    }
    for (; c < C; c++) {
        i64 y = asr((i64)((u64)x[c] * (u64)inv), INV_BITS - NORM_FRAC_BITS);
        h[c] = (i16)clip8(rq(y, m[c], s));
    }
}

/* The head's tables (see tables_row) in 4 lanes. */
__attribute__((target("avx2"))) static void tables_row_avx2(const Kernel *k, const i32 *acc,
                                                            i64 *z, u32 *out) {
    int V = k->V, s = k->head.s, v = 0, top = 0;
    const i64 *m = k->head.m;
    __m256i half = _mm256_set1_epi64x((i64)1 << (s - 1)), mx = _mm256_set1_epi64x(INT64_MIN);
    __m128i sh = _mm_cvtsi32_si128(s);
    for (; v + 4 <= V; v += 4) {
        __m256i y = rq4(acc + v, m + v, half, sh);
        _mm256_storeu_si256((__m256i *)(z + v), y);
        mx = _mm256_blendv_epi8(mx, y, _mm256_cmpgt_epi64(y, mx));
    }
    i64 t4[4], zmax = INT64_MIN;
    _mm256_storeu_si256((__m256i *)t4, mx);
    for (int i = 0; i < 4; i++)
        if (t4[i] > zmax) zmax = t4[i];
    for (; v < V; v++) {
        z[v] = rq(acc[v], m[v], s);
        if (z[v] > zmax) zmax = z[v];
    }
    while (z[top] != zmax) top++; /* the first index of the max, as np.argmax */
    i64 Z = exp_avx2(k->lut, k->lut_n - 1, zmax, z, 0, V);
    i64 total = (i64)1 << k->fbits, budget = total - V;
    /* budget < 2**fb <= 2**20 and Z >= 2**16 (the top symbol's exp is 2**16): R < 2**36.
     * vpmuludq multiplies 32 x 32 bits, so R = Rh 2**32 + Rl and, as e = z[v] <= 2**16,
     * (e R) >> 32 = e Rh + ((e Rl) >> 32) exactly (Rh = 0 whenever fb <= 16). */
    i64 R = (budget << 32) / Z, sum = 0;
    __m256i rl = _mm256_set1_epi64x(R & 0xFFFFFFFF), rh = _mm256_set1_epi64x(R >> 32);
    __m256i one = _mm256_set1_epi64x(1), acc4 = _mm256_setzero_si256();
    __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (v = 0; v + 4 <= V; v += 4) {
        __m256i e = _mm256_loadu_si256((const __m256i *)(z + v));
        __m256i f = _mm256_add_epi64(
            _mm256_add_epi64(one, _mm256_mul_epu32(e, rh)),
            _mm256_srli_epi64(_mm256_mul_epu32(e, rl), 32));
        acc4 = _mm256_add_epi64(acc4, f);
        _mm_storeu_si128((__m128i *)(out + v),
                         _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(f, pick)));
    }
    _mm256_storeu_si256((__m256i *)t4, acc4);
    sum = t4[0] + t4[1] + t4[2] + t4[3];
    for (; v < V; v++) {
        i64 f = 1 + asr(z[v] * R, 32);
        out[v] = (u32)f;
        sum += f;
    }
    out[top] = (u32)((i64)out[top] + (total - sum));
}
#endif

static void norm_row(const Kernel *k, const i64 *x, int C, const Sc *sc, i16 *h, int Kp) {
    u64 ss = 0;
    int small = 1;
    for (int c = 0; c < C; c++) {
        ss += (u64)x[c] * (u64)x[c];
        small &= x[c] >= -RES_LIMIT && x[c] <= RES_LIMIT;
    }
    i64 ms = (i64)ss / C + 1; /* numpy: (sum x*x) // C + 1, sum >= 0 */
    /* ms < 1 only if the sum wrapped (|x| >= 2**31, never from a valid export): numpy's
     * isqrt raises there; the kernel just stays defined */
    i64 inv = ((i64)1 << INV_BITS) / isqrt64(ms < 1 ? 1 : ms);
#ifdef TZ_X86
    if (k->simd && small)
        norm_apply_avx2(x, C, inv, sc->m, sc->s, h);
    else
#endif
        for (int c = 0; c < C; c++) {
            i64 y = asr((i64)((u64)x[c] * (u64)inv), INV_BITS - NORM_FRAC_BITS);
            h[c] = (i16)clip8(rq(y, sc->m[c], sc->s));
        }
    for (int c = C; c < Kp; c++) h[c] = 0;
}

static void tables_row(const Kernel *k, const i32 *acc, i64 *z, u32 *out) {
#ifdef TZ_X86
    if (k->simd) {
        tables_row_avx2(k, acc, z, out);
        return;
    }
#endif
    int V = k->V, last = k->lut_n - 1, top = 0;
    i64 zmax = INT64_MIN;
    for (int v = 0; v < V; v++) {
        i64 zz = rq(acc[v], k->head.m[v], k->head.s);
        z[v] = zz;
        if (zz > zmax) {
            zmax = zz;
            top = v;
        }
    }
    i64 Z = 0;
    for (int v = 0; v < V; v++) {
        u64 d = (u64)zmax - (u64)z[v]; /* >= 0, as in attend */
        d = d < (u64)last ? d : (u64)last;
        i64 e = k->lut[d];
        z[v] = e;
        Z += e;
    }
    i64 total = (i64)1 << k->fbits, budget = total - V;
    i64 R = (budget << 32) / Z, sum = 0;
    for (int v = 0; v < V; v++) {
        i64 f = 1 + asr(z[v] * R, 32);
        out[v] = (u32)f;
        sum += f;
    }
    out[top] = (u32)((i64)out[top] + (total - sum));
}

/* MLP half of a block for `rows` rows of x (stride C). */
static void mlp_block(const Kernel *k, const Layer *ly, i64 *x, int rows, i16 *h, i32 *acc,
                      i16 *hid) {
    int C = k->C, F = k->F;
    for (int r = 0; r < rows; r++) norm_row(k, x + (size_t)r * C, C, &ly->n2, h + (size_t)r * k->Cp, k->Cp);
    gemm(k, h, rows, k->Cp, &ly->fc, acc);
    for (int r = 0; r < rows; r++) {
        i16 *o = hid + (size_t)r * k->Fp;
        rq_row(k, acc + (size_t)r * ly->fc.Np, ly->fc.m, ly->fc.s, F, 0, QMAX, o); /* ReLU */
        for (int f = F; f < k->Fp; f++) o[f] = 0;
    }
    gemm(k, hid, rows, k->Fp, &ly->down, acc);
    for (int r = 0; r < rows; r++)
        add_residual(k, x + (size_t)r * C, C, acc + (size_t)r * ly->down.Np, &ly->down);
}

/* ---- scratch ---------------------------------------------------------------------- */

typedef struct {
    i64 *x, *z;
    i16 *h, *q, *o, *hid;
    int8_t *kt, *v;
    i32 *acc, *s, *idx;
    u32 *row;
    i64 *ids;
    void *mem;
} Scratch;

/* rows: rows per call; keys: key slots of one head; kv: also allocate the parallel pass's
 * per-layer key/value windows of `keys` slots. */
static int scratch_alloc(const Kernel *k, Scratch *sc, size_t rows, size_t keys, int kv) {
    size_t nmax = (size_t)k->head.Np;
    for (int l = 0; l < k->L; l++) {
        const Layer *ly = &k->layers[l];
        size_t ns[4] = {(size_t)ly->qkv.Np, (size_t)ly->proj.Np, (size_t)ly->fc.Np,
                        (size_t)ly->down.Np};
        for (int i = 0; i < 4; i++)
            if (ns[i] > nmax) nmax = ns[i];
    }
    size_t zn = keys > (size_t)k->V ? keys : (size_t)k->V;
    size_t kvn = kv ? (size_t)k->L * k->H * k->hdp * keys : 0;
    size_t sizes[13] = {rows * k->C * 8, zn * 8, rows * k->Cp * 2, rows * k->H * k->hdp * 2,
                        rows * k->Cp * 2, rows * k->Fp * 2, kvn, kvn, rows * nmax * 4,
                        keys * 4, keys * 4, (size_t)k->V * 4 * (rows > 0 ? rows : 1), rows * 8};
    size_t total = 0, off[13];
    for (int i = 0; i < 13; i++) {
        off[i] = total;
        total += (sizes[i] + 63) & ~(size_t)63;
    }
    char *mem = malloc(total + 64);
    if (!mem) return -1;
    sc->mem = mem;
    sc->x = (i64 *)(mem + off[0]);
    sc->z = (i64 *)(mem + off[1]);
    sc->h = (i16 *)(mem + off[2]);
    sc->q = (i16 *)(mem + off[3]);
    sc->o = (i16 *)(mem + off[4]);
    sc->hid = (i16 *)(mem + off[5]);
    sc->kt = (int8_t *)(mem + off[6]);
    sc->v = (int8_t *)(mem + off[7]);
    sc->acc = (i32 *)(mem + off[8]);
    sc->s = (i32 *)(mem + off[9]);
    sc->idx = (i32 *)(mem + off[10]);
    sc->row = (u32 *)(mem + off[11]);
    sc->ids = (i64 *)(mem + off[12]);
    memset(sc->q, 0, sizes[3]); /* head padding stays 0 */
    return 0;
}

static void embed_rows(const Kernel *k, const i64 *ids, int rows, i64 *x) {
    int C = k->C;
    for (int r = 0; r < rows; r++) {
        i64 id = ids[r];
        const i16 *w = k->emb_w + (size_t)id * C;
        for (int c = 0; c < C; c++) x[(size_t)r * C + c] = rq(w[c], k->emb_m[id], k->emb_s);
    }
}

/* qkv outputs of row r: q into sc->q (row-major [r][H][hdp]); k and v via callbacks. */

/* ---- step mode -------------------------------------------------------------------- */

/* Streams [b0, b1) of a step at position t: ids[0..b1-b0) in, out[0..b1-b0) tables.
 * kc, vc: (L, B, H, hdp * W) int8 caches (keys as [hp][W][2], values as [W][hdp]). */
static void run_step(const Kernel *k, const i64 *ids, int b0, int b1, int B, i64 t,
                     int8_t *kc, int8_t *vc, u32 *out, Scratch *sc) {
    int rows = b1 - b0, C = k->C, H = k->H, hd = k->hd, hdp = k->hdp, W = k->W;
    int slot = (int)(t % W);
    size_t hstride = (size_t)hdp * W;
    Ranges rg;
    if (t < W) {
        rg.n = 1;
        rg.j0[0] = 0, rg.j1[0] = (int)t + 1, rg.base[0] = t;
    } else {
        rg.n = slot + 1 < W ? 2 : 1;
        rg.j0[0] = 0, rg.j1[0] = slot + 1, rg.base[0] = slot;
        rg.j0[1] = slot + 1, rg.j1[1] = W, rg.base[1] = (i64)slot + W;
    }
    embed_rows(k, ids, rows, sc->x);
    for (int l = 0; l < k->L; l++) {
        const Layer *ly = &k->layers[l];
        for (int r = 0; r < rows; r++)
            norm_row(k, sc->x + (size_t)r * C, C, &ly->n1, sc->h + (size_t)r * k->Cp, k->Cp);
        gemm(k, sc->h, rows, k->Cp, &ly->qkv, sc->acc);
        for (int r = 0; r < rows; r++) {
            i16 y[3 * 1040 + 16]; /* q, k, v of this row */
            rq_row(k, sc->acc + (size_t)r * ly->qkv.Np, ly->qkv.m, ly->qkv.s, 3 * C, -QMAX, QMAX, y);
            size_t cb = ((size_t)l * B + b0 + r) * H * hstride;
            for (int hh = 0; hh < H; hh++) {
                i16 *q = sc->q + ((size_t)r * H + hh) * hdp;
                int8_t *kh = kc + cb + hh * hstride, *vh = vc + cb + hh * hstride + (size_t)slot * hdp;
                const i16 *yq = y + hh * hd, *yk = yq + C, *yv = yk + C;
                for (int d = 0; d < hd; d++) {
                    q[d] = yq[d];
                    kh[((size_t)(d / 2) * W + slot) * 2 + (d & 1)] = (int8_t)yk[d];
                    vh[d] = (int8_t)yv[d];
                }
            }
            for (int hh = 0; hh < H; hh++)
                attend(k, ly, hh, sc->q + ((size_t)r * H + hh) * hdp, kc + cb + hh * hstride,
                       (size_t)W, vc + cb + hh * hstride, &rg, sc->s, sc->z,
                       sc->o + (size_t)r * k->Cp + hh * hd);
            for (int c = C; c < k->Cp; c++) sc->o[(size_t)r * k->Cp + c] = 0;
        }
        gemm(k, sc->o, rows, k->Cp, &ly->proj, sc->acc);
        for (int r = 0; r < rows; r++)
            add_residual(k, sc->x + (size_t)r * C, C, sc->acc + (size_t)r * ly->proj.Np, &ly->proj);
        mlp_block(k, ly, sc->x, rows, sc->h, sc->acc, sc->hid);
    }
    for (int r = 0; r < rows; r++)
        norm_row(k, sc->x + (size_t)r * C, C, &k->nf, sc->h + (size_t)r * k->Cp, k->Cp);
    gemm(k, sc->h, rows, k->Cp, &k->head, sc->acc);
    for (int r = 0; r < rows; r++)
        tables_row(k, sc->acc + (size_t)r * k->head.Np, sc->z, out + (size_t)r * k->V);
}

/* ---- parallel mode ---------------------------------------------------------------- */

/* Rows per block of the parallel pass: GEMM-shaped, and the scratch stays small. */
#define BLOCK_ROWS 256

/* Where a parallel pass puts its results: whole tables, or the coder's (start, freq) of
 * the known next symbol (the encoder), at starts[r * stride]. */
typedef struct {
    u32 *tables;                 /* (T, V) or NULL */
    const uint8_t *sym8;         /* next symbols (uint8 or uint16), row r codes sym[r] */
    const uint16_t *sym16;
    u32 *starts, *freqs;
    size_t stride;
} Sink;

static void sink_row(const Kernel *k, const i32 *acc, i64 *z, u32 *row, const Sink *out,
                     size_t r) {
    if (out->tables) {
        tables_row(k, acc, z, out->tables + r * k->V);
        return;
    }
    tables_row(k, acc, z, row);
    int sym = out->sym8 ? out->sym8[r] : out->sym16[r];
    u32 start = 0;
    for (int v = 0; v < sym; v++) start += row[v];
    out->starts[r * out->stride] = start;
    out->freqs[r * out->stride] = row[sym];
}

/* One stream: ids (T,) inputs (BOS first) -> results per row, BLOCK_ROWS rows at a time.
 * Each layer keeps a window of the last W - 1 positions' keys and values (sc->kt, sc->v:
 * per layer and head, keys [hp][cap][2] and values [cap][hdp], cap = W - 1 + BLOCK_ROWS),
 * so a row sees exactly the keys of the band, as in the one-pass numpy code. */
static void run_stream(const Kernel *k, const i64 *ids, int T, const Sink *out, Scratch *sc) {
    int C = k->C, H = k->H, hd = k->hd, hdp = k->hdp, W = k->W, hp = hdp / 2;
    size_t cap = (size_t)W - 1 + BLOCK_ROWS, hstride = (size_t)hdp * cap;
    int filled = 0; /* positions held in every layer's window, ending at p0 */
    for (int p0 = 0; p0 < T; p0 += BLOCK_ROWS) {
        int rows = T - p0 < BLOCK_ROWS ? T - p0 : BLOCK_ROWS;
        int keep = filled < W - 1 ? filled : W - 1;
        embed_rows(k, ids + p0, rows, sc->x);
        for (int l = 0; l < k->L; l++) {
            const Layer *ly = &k->layers[l];
            int8_t *kt = sc->kt + (size_t)l * H * hstride, *vv = sc->v + (size_t)l * H * hstride;
            if (keep < filled) /* slide: the last `keep` positions to the front */
                for (int hh = 0; hh < H; hh++) {
                    for (int p = 0; p < hp; p++) {
                        int8_t *row = kt + hh * hstride + (size_t)p * cap * 2;
                        memmove(row, row + (size_t)(filled - keep) * 2, (size_t)keep * 2);
                    }
                    int8_t *vh = vv + hh * hstride;
                    memmove(vh, vh + (size_t)(filled - keep) * hdp, (size_t)keep * hdp);
                }
            for (int r = 0; r < rows; r++)
                norm_row(k, sc->x + (size_t)r * C, C, &ly->n1, sc->h + (size_t)r * k->Cp, k->Cp);
            gemm(k, sc->h, rows, k->Cp, &ly->qkv, sc->acc);
            for (int r = 0; r < rows; r++) {
                i16 y[3 * 1040 + 16]; /* q, k, v of this row */
                rq_row(k, sc->acc + (size_t)r * ly->qkv.Np, ly->qkv.m, ly->qkv.s, 3 * C, -QMAX,
                       QMAX, y);
                size_t j = (size_t)keep + r;
                for (int hh = 0; hh < H; hh++) {
                    i16 *q = sc->q + ((size_t)r * H + hh) * hdp;
                    int8_t *kh = kt + hh * hstride, *vh = vv + hh * hstride + j * hdp;
                    const i16 *yq = y + hh * hd, *yk = yq + C, *yv = yk + C;
                    for (int d = 0; d < hd; d++) {
                        q[d] = yq[d];
                        kh[((size_t)(d / 2) * cap + j) * 2 + (d & 1)] = (int8_t)yk[d];
                        vh[d] = (int8_t)yv[d];
                    }
                    if (hd & 1) { /* the padding lane stays 0 */
                        kh[((size_t)(hd / 2) * cap + j) * 2 + 1] = 0;
                        vh[hd] = 0;
                    }
                }
            }
            for (int r = 0; r < rows; r++) {
                Ranges rg;
                int qi = keep + r; /* the query's own slot: distance base - j */
                rg.n = 1;
                rg.j0[0] = qi - W + 1 > 0 ? qi - W + 1 : 0, rg.j1[0] = qi + 1, rg.base[0] = qi;
                for (int hh = 0; hh < H; hh++)
                    attend(k, ly, hh, sc->q + ((size_t)r * H + hh) * hdp, kt + hh * hstride,
                           cap, vv + hh * hstride, &rg, sc->s, sc->z,
                           sc->o + (size_t)r * k->Cp + hh * hd);
                for (int c = C; c < k->Cp; c++) sc->o[(size_t)r * k->Cp + c] = 0;
            }
            gemm(k, sc->o, rows, k->Cp, &ly->proj, sc->acc);
            for (int r = 0; r < rows; r++)
                add_residual(k, sc->x + (size_t)r * C, C, sc->acc + (size_t)r * ly->proj.Np,
                             &ly->proj);
            mlp_block(k, ly, sc->x, rows, sc->h, sc->acc, sc->hid);
        }
        filled = keep + rows;
        for (int r = 0; r < rows; r++)
            norm_row(k, sc->x + (size_t)r * C, C, &k->nf, sc->h + (size_t)r * k->Cp, k->Cp);
        gemm(k, sc->h, rows, k->Cp, &k->head, sc->acc);
        for (int r = 0; r < rows; r++)
            sink_row(k, sc->acc + (size_t)r * k->head.Np, sc->z, sc->row, out, (size_t)(p0 + r));
    }
}

/* ---- decoding (step mode + rANS) -------------------------------------------------- */

/* One rANS decode of coder/rans.py's StreamDecoder.decode for one stream and one table
 * row (summing to 2**fb, every entry >= 1): the symbol, the state updated in place. The
 * state's lower bound is L = 2**max(16, fb), so M = 2**fb divides it. */
static int rans_decode(const u32 *row, int V, int fb, i64 *x, i64 *cursor, i64 limit,
                       const uint16_t *words) {
    u64 xv = (u64)*x, slot = xv & (((u64)1 << fb) - 1), cum = 0;
    int s = 0;
    for (; s < V - 1; s++) { /* first s with cum[s] > slot (inclusive cumsum) */
        if (cum + row[s] > slot) break;
        cum += row[s];
    }
    u64 xn = (u64)row[s] * (xv >> fb) + slot - cum, lower = (u64)1 << (fb > 16 ? fb : 16);
    /* xn >= row[s] >= 1: one word reaches 2**16, two any L <= 2**32 (fb > 16 only) */
    for (int i = 0; i < 2 && xn < lower; i++) {
        i64 c = *cursor < limit ? *cursor : limit;
        xn = (xn << 16) | words[c];
        *cursor += 1;
    }
    *x = (i64)xn;
    return s;
}

/* ---- Python glue ------------------------------------------------------------------ */

/* The kernel's Lins: 4 per layer (qkv, proj, fc, down), then the head; n_lins of them. */
static int n_lins(const Kernel *self) { return self->layers ? 4 * self->L + 1 : 1; }

static Lin *lin_at(Kernel *self, int i) {
    if (i == n_lins(self) - 1) return &self->head;
    Layer *ly = &self->layers[i / 4];
    Lin *four[4] = {&ly->qkv, &ly->proj, &ly->fc, &ly->down};
    return four[i % 4];
}

/* int8 copies of the packed weights (Lin.w8) where every entry fits: 0, or -1 (no memory). */
static int make_int8_weights(Kernel *self) {
    for (int i = 0; i < n_lins(self); i++) {
        Lin *L = lin_at(self, i);
        size_t size = (size_t)L->Kp * L->Np;
        int fits = 1;
        for (size_t j = 0; j < size && fits; j++) fits = L->w[j] >= -128 && L->w[j] <= 127;
        if (!fits) continue;
        L->w8 = PyMem_Malloc(size);
        if (!L->w8) return -1;
        for (size_t j = 0; j < size; j++) L->w8[j] = (int8_t)L->w[j];
    }
    return 0;
}

static void Kernel_dealloc(Kernel *self) {
    for (int i = 0; i < n_lins(self); i++) PyMem_Free(lin_at(self, i)->w8);
    if (self->have_wb) PyBuffer_Release(&self->wb);
    if (self->have_ib) PyBuffer_Release(&self->ib);
    PyMem_Free(self->layers);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Kernel(wblob int16, iblob int64, meta int64, simd bool). meta: V C L H F W lut_n fbits,
 * emb_w emb_m emb_s, per layer 21 entries (see engine.py _pack_kernel), then nf_m nf_s
 * head_w head_m head_s lut. *_w are offsets into wblob, *_m and lut into iblob, *_s the
 * shifts themselves. */
static int Kernel_init(Kernel *self, PyObject *args, PyObject *kw) {
    Py_buffer meta;
    int simd = 1;
    if (!PyArg_ParseTuple(args, "y*y*y*|p", &self->wb, &self->ib, &meta, &simd)) return -1;
    self->have_wb = self->have_ib = 1;
    int ok = 0;
    const i64 *m = meta.buf;
    size_t nm = (size_t)meta.len / 8, nw = (size_t)self->wb.len / 2, ni = (size_t)self->ib.len / 8;
    if (self->wb.itemsize != 2 || self->ib.itemsize != 8 || meta.itemsize != 8 || nm < 8)
        goto bad;
    {
        i64 V = m[0], C = m[1], L = m[2], H = m[3], F = m[4], W = m[5], lut_n = m[6], fb = m[7];
        if (V < 2 || C < 1 || C > 1040 || L < 1 || L > 1024 || H < 1 || C % H || F < 1 ||
            F > 1040 || W < 1 || W > (1 << 20) || lut_n < 2 || fb < 1 || fb > 20 ||
            nm != (size_t)(8 + 3 + 21 * L + 6))
            goto bad;
        self->V = (int)V, self->C = (int)C, self->L = (int)L, self->H = (int)H;
        self->F = (int)F, self->W = (int)W, self->lut_n = (int)lut_n, self->fbits = (int)fb;
        self->hd = (int)(C / H);
        self->hdp = self->hd + (self->hd & 1);
        self->Cp = (int)(C + (C & 1));
        self->Fp = (int)(F + (F & 1));
        self->layers = PyMem_Calloc((size_t)L, sizeof(Layer));
        if (!self->layers) {
            PyErr_NoMemory();
            PyBuffer_Release(&meta);
            return -1;
        }
        const i16 *wb = self->wb.buf;
        const i64 *ib = self->ib.buf;
#define WOFF(off, n) ((off) >= 0 && (size_t)(off) + (size_t)(n) <= nw)
#define IOFF(off, n) ((off) >= 0 && (size_t)(off) + (size_t)(n) <= ni)
#define SHIFT(s) ((s) >= 1 && (s) <= 62)
#define LIN(dst, base, K_, N_)                                                      \
    do {                                                                            \
        (dst).K = (int)(K_), (dst).N = (int)(N_);                                   \
        (dst).Kp = (dst).K + ((dst).K & 1), (dst).Np = ((dst).N + NB - 1) / NB * NB; \
        if (!WOFF(m[base], (size_t)(dst).Kp * (dst).Np) || !IOFF(m[base + 1], (dst).N) || \
            !SHIFT(m[base + 2]))                                                    \
            goto bad;                                                               \
        (dst).w = wb + m[base], (dst).m = ib + m[base + 1], (dst).s = (int)m[base + 2]; \
    } while (0)
#define SC(dst, base, N_)                                              \
    do {                                                               \
        if (!IOFF(m[base], (N_)) || !SHIFT(m[base + 1])) goto bad;     \
        (dst).m = ib + m[base], (dst).s = (int)m[base + 1];            \
    } while (0)
        if (!WOFF(m[8], (V + 1) * C) || !IOFF(m[9], V + 1) || !SHIFT(m[10])) goto bad;
        self->emb_w = wb + m[8], self->emb_m = ib + m[9], self->emb_s = (int)m[10];
        for (i64 l = 0; l < L; l++) {
            size_t b = 11 + 21 * (size_t)l;
            Layer *ly = &self->layers[l];
            Sc tmp;
            SC(ly->n1, b, C);
            LIN(ly->qkv, b + 2, C, 3 * C);
            SC(tmp, b + 5, 1);
            ly->score_m = tmp.m[0], ly->score_s = tmp.s;
            if (!IOFF(m[b + 7], H)) goto bad;
            ly->alibi = ib + m[b + 7];
            SC(tmp, b + 8, 1);
            ly->pv_m = tmp.m[0], ly->pv_s = tmp.s;
            LIN(ly->proj, b + 10, C, C);
            SC(ly->n2, b + 13, C);
            LIN(ly->fc, b + 15, C, F);
            LIN(ly->down, b + 18, F, C);
        }
        size_t b = 11 + 21 * (size_t)L;
        SC(self->nf, b, C);
        LIN(self->head, b + 2, C, V);
        if (!IOFF(m[b + 5], lut_n)) goto bad;
        self->lut = ib + m[b + 5];
        /* every multiplier within int32 (the checkpoint guarantees |M| < 2**30): the AVX2
         * requant multiplies them in 32-bit lanes */
        {
            const Lin *lins[5];
            for (i64 l = 0; l <= L; l++) {
                int nl = 0;
                if (l < L) {
                    Layer *ly = &self->layers[l];
                    lins[nl++] = &ly->qkv, lins[nl++] = &ly->proj, lins[nl++] = &ly->fc;
                    lins[nl++] = &ly->down;
                } else {
                    lins[nl++] = &self->head;
                }
                for (int i = 0; i < nl; i++)
                    for (int c = 0; c < lins[i]->N; c++)
                        if (lins[i]->m[c] < INT32_MIN || lins[i]->m[c] > INT32_MAX) goto bad;
                const Sc *norms[2] = {l < L ? &self->layers[l].n1 : &self->nf,
                                      l < L ? &self->layers[l].n2 : &self->nf};
                for (int i = 0; i < 2; i++)
                    for (int c = 0; c < C; c++)
                        if (norms[i]->m[c] < INT32_MIN || norms[i]->m[c] > INT32_MAX) goto bad;
            }
        }
        /* lut[0] = 2**16 (as the checkpoint guarantees) keeps Z >= 2**16 in the tables */
        if (self->lut[lut_n - 1] != 0 || self->lut[0] != 65536) goto bad;
    }
    self->simd = simd && cpu_avx2;
    if (make_int8_weights(self)) {
        PyBuffer_Release(&meta);
        PyErr_NoMemory();
        return -1;
    }
    ok = 1;
bad:
    PyBuffer_Release(&meta);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "engine kernel: bad packed model");
        return -1;
    }
    return 0;
}

static int check_ids(const Kernel *k, const i64 *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] > k->V) {
            PyErr_SetString(PyExc_ValueError, "engine kernel: token id out of range");
            return -1;
        }
    return 0;
}

/* step(ids int64 (n,), t, k_cache, v_cache, out uint32 (n, V), b0=0, b1=n): streams
 * [b0, b1) of one step at position t; caches (L, B, H, hdp * W) int8. */
static PyObject *Kernel_step(Kernel *self, PyObject *args) {
    Py_buffer ids, kc, vc, out;
    Py_ssize_t t, b0 = 0, b1 = -1;
    if (!PyArg_ParseTuple(args, "y*nw*w*w*|nn", &ids, &t, &kc, &vc, &out, &b0, &b1))
        return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n = ids.len / 8;
    size_t per_layer_stream = (size_t)self->H * self->hdp * self->W;
    Py_ssize_t B = kc.len / (Py_ssize_t)(per_layer_stream * self->L);
    if (b1 < 0) b1 = n;
    if (ids.itemsize != 8 || kc.itemsize != 1 || vc.itemsize != 1 || out.itemsize != 4 ||
        t < 0 || kc.len != vc.len || (size_t)kc.len != (size_t)B * per_layer_stream * self->L ||
        n > B || out.len != n * self->V * 4 || b0 < 0 || b1 > n || b0 > b1) {
        PyErr_SetString(PyExc_ValueError, "engine kernel step: bad arrays");
        goto done;
    }
    if (check_ids(self, ids.buf, (size_t)n)) goto done;
    if (b1 > b0) {
        Scratch sc;
        if (scratch_alloc(self, &sc, (size_t)(b1 - b0), (size_t)self->W, 0)) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        run_step(self, (const i64 *)ids.buf + b0, (int)b0, (int)b1, (int)B, t, kc.buf, vc.buf,
                 (u32 *)out.buf + (size_t)b0 * self->V, &sc);
        Py_END_ALLOW_THREADS
        free(sc.mem);
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&ids);
    PyBuffer_Release(&kc);
    PyBuffer_Release(&vc);
    PyBuffer_Release(&out);
    return ret;
}

static int stream_scratch(const Kernel *k, Scratch *sc) {
    return scratch_alloc(k, sc, BLOCK_ROWS, (size_t)k->W - 1 + BLOCK_ROWS, 1);
}

/* forward(inputs int64 (B, T), T, out uint32 (B, T, V), b0=0, b1=B): the parallel pass of
 * rows [b0, b1), one stream at a time. */
static PyObject *Kernel_forward(Kernel *self, PyObject *args) {
    Py_buffer ids, out;
    Py_ssize_t T, b0 = 0, b1 = -1;
    if (!PyArg_ParseTuple(args, "y*nw*|nn", &ids, &T, &out, &b0, &b1)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t B = T > 0 ? ids.len / 8 / T : 0;
    if (b1 < 0) b1 = B;
    if (ids.itemsize != 8 || out.itemsize != 4 || T < 0 || T > INT32_MAX || ids.len != B * T * 8 ||
        out.len != B * T * self->V * 4 || b0 < 0 || b1 > B || b0 > b1) {
        PyErr_SetString(PyExc_ValueError, "engine kernel forward: bad arrays");
        goto done;
    }
    if (check_ids(self, ids.buf, (size_t)(B * T))) goto done;
    if (T > 0 && b1 > b0) {
        Scratch sc;
        if (stream_scratch(self, &sc)) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t b = b0; b < b1; b++) {
            Sink sink = {(u32 *)out.buf + (size_t)b * T * self->V, NULL, NULL, NULL, NULL, 0};
            run_stream(self, (const i64 *)ids.buf + b * T, (int)T, &sink, &sc);
        }
        Py_END_ALLOW_THREADS
        free(sc.mem);
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&ids);
    PyBuffer_Release(&out);
    return ret;
}

/* ranges(grid (B, T) uint8/uint16 symbols, lengths int64 (B,), starts, freqs uint32 (T, B),
 * b0, b1): the encoder's symbol ranges. Stream b's inputs are BOS, grid[b, :len - 1];
 * for t < lengths[b], (starts, freqs)[t, b] = the range of grid[b, t] in its table, as
 * coder/rans.py's symbol_ranges gives it. */
static PyObject *Kernel_ranges(Kernel *self, PyObject *args) {
    Py_buffer grid, lens, st, fr;
    Py_ssize_t b0, b1;
    if (!PyArg_ParseTuple(args, "y*y*w*w*nn", &grid, &lens, &st, &fr, &b0, &b1)) return NULL;
    PyObject *ret = NULL;
    i64 *ids = NULL;
    Py_ssize_t B = lens.len / 8, T = B > 0 ? st.len / 4 / B : 0;
    const i64 *len = lens.buf;
    int g8 = grid.itemsize == 1;
    if (lens.itemsize != 8 || (grid.itemsize != 1 && grid.itemsize != 2) ||
        st.itemsize != 4 || fr.itemsize != 4 || st.len != fr.len || st.len != B * T * 4 ||
        grid.len != B * T * grid.itemsize || b0 < 0 || b1 > B || b0 > b1 || T > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "engine kernel ranges: bad arrays");
        goto done;
    }
    for (Py_ssize_t b = 0; b < B; b++)
        if (len[b] < 0 || len[b] > T) {
            PyErr_SetString(PyExc_ValueError, "engine kernel ranges: bad lengths");
            goto done;
        }
    for (Py_ssize_t i = 0; i < B * T; i++) {
        int v = g8 ? ((const uint8_t *)grid.buf)[i] : ((const uint16_t *)grid.buf)[i];
        if (v >= self->V) {
            PyErr_SetString(PyExc_ValueError, "engine kernel ranges: symbol out of range");
            goto done;
        }
    }
    if (b1 > b0 && T > 0) {
        Scratch sc;
        ids = malloc((size_t)T * 8);
        if (!ids || stream_scratch(self, &sc)) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t b = b0; b < b1; b++) {
            i64 n = len[b];
            if (!n) continue;
            ids[0] = self->V; /* BOS */
            for (i64 t = 1; t < n; t++)
                ids[t] = g8 ? ((const uint8_t *)grid.buf)[b * T + t - 1]
                            : ((const uint16_t *)grid.buf)[b * T + t - 1];
            Sink sink = {NULL, g8 ? (const uint8_t *)grid.buf + b * T : NULL,
                         g8 ? NULL : (const uint16_t *)grid.buf + b * T,
                         (u32 *)st.buf + b, (u32 *)fr.buf + b, (size_t)B};
            run_stream(self, ids, (int)n, &sink, &sc);
        }
        Py_END_ALLOW_THREADS
        free(sc.mem);
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    free(ids);
    PyBuffer_Release(&grid);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&st);
    PyBuffer_Release(&fr);
    return ret;
}

/* decode(grid (B, T) uint8/uint16, lengths int64 (B,), dec int64 (B,), x, cursor, limit
 * int64 (D,), words uint16, k_cache, v_cache, t0, t1, b0, b1): steps [t0, t1) of grid rows
 * [b0, b1) (lengths non-increasing): each step feeds BOS (t = 0) or grid[r, t - 1] to the
 * engine; a row with dec[r] >= 0 then decodes grid[r, t] from its table with decoder stream
 * dec[r] (coder/rans.py's state arrays, updated in place), other rows keep their known
 * symbols. Rows are independent, so threads may run disjoint row ranges. */
static PyObject *Kernel_decode(Kernel *self, PyObject *args) {
    Py_buffer grid, lens, dec, xs, cur, lim, words, kc, vc;
    Py_ssize_t t0, t1, b0, b1;
    if (!PyArg_ParseTuple(args, "w*y*y*w*w*y*y*w*w*nnnn", &grid, &lens, &dec, &xs, &cur, &lim,
                          &words, &kc, &vc, &t0, &t1, &b0, &b1))
        return NULL;
    PyObject *ret = NULL;
    Py_ssize_t B = lens.len / 8, T = B > 0 ? grid.len / grid.itemsize / B : 0;
    Py_ssize_t D = xs.len / 8, nw = words.len / 2;
    size_t per_layer_stream = (size_t)self->H * self->hdp * self->W;
    const i64 *len = lens.buf, *dc = dec.buf, *lm = lim.buf;
    int g8 = grid.itemsize == 1;
    if (lens.itemsize != 8 || (grid.itemsize != 1 && grid.itemsize != 2) ||
        dec.len != lens.len || xs.itemsize != 8 || cur.len < xs.len || lim.len < xs.len ||
        words.itemsize != 2 || nw < 1 || kc.itemsize != 1 || vc.len != kc.len ||
        (size_t)kc.len != (size_t)B * per_layer_stream * self->L || t0 < 0 || t1 > T ||
        t0 > t1 || b0 < 0 || b1 > B || b0 > b1) {
        PyErr_SetString(PyExc_ValueError, "engine kernel decode: bad arrays");
        goto done;
    }
    for (Py_ssize_t b = 0; b < B; b++)
        if (len[b] < 0 || len[b] > T || (b && len[b] > len[b - 1]) || dc[b] >= D ||
            (dc[b] >= 0 && (lm[dc[b]] < 0 || lm[dc[b]] >= nw))) {
            PyErr_SetString(PyExc_ValueError, "engine kernel decode: bad lengths or streams");
            goto done;
        }
    if (b1 > b0 && t1 > t0) {
        Scratch sc;
        if (scratch_alloc(self, &sc, (size_t)(b1 - b0), (size_t)self->W, 0)) {
            PyErr_NoMemory();
            goto done;
        }
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t t = t0; t < t1 && !bad; t++) {
            Py_ssize_t end = b0;
            while (end < b1 && len[end] > t) end++;
            if (end == b0) break;
            for (Py_ssize_t r = b0; r < end; r++) {
                i64 id = t == 0 ? self->V
                         : (g8 ? ((uint8_t *)grid.buf)[r * T + t - 1]
                               : ((uint16_t *)grid.buf)[r * T + t - 1]);
                if (id > self->V) bad = 1; /* a known symbol out of range */
                sc.ids[r - b0] = id;
            }
            if (bad) break;
            run_step(self, sc.ids, (int)b0, (int)end, (int)B, t, kc.buf, vc.buf, sc.row, &sc);
            for (Py_ssize_t r = b0; r < end; r++) {
                i64 d = dc[r];
                if (d < 0) continue;
                int s = rans_decode(sc.row + (size_t)(r - b0) * self->V, self->V, self->fbits,
                                    (i64 *)xs.buf + d, (i64 *)cur.buf + d, lm[d], words.buf);
                if (g8)
                    ((uint8_t *)grid.buf)[r * T + t] = (uint8_t)s;
                else
                    ((uint16_t *)grid.buf)[r * T + t] = (uint16_t)s;
            }
        }
        Py_END_ALLOW_THREADS
        free(sc.mem);
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "engine kernel decode: symbol out of range");
            goto done;
        }
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&grid);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&dec);
    PyBuffer_Release(&xs);
    PyBuffer_Release(&cur);
    PyBuffer_Release(&lim);
    PyBuffer_Release(&words);
    PyBuffer_Release(&kc);
    PyBuffer_Release(&vc);
    return ret;
}

/* ---- a C caller's step (_engine_step.h) ------------------------------------------ */

/* The stepper holds the kernel and the caches (references and buffers) and one scratch,
 * so that each step is run_step alone: no argument parsing, no allocation. */
typedef struct {
    TzStepper pub;
    Kernel *k;
    Py_buffer kc, vc;
    Scratch sc;
} Stepper;

static void stepper_step(TzStepper *s, const int64_t *ids, int b0, int b1, int64_t t,
                         uint32_t *out) {
    Stepper *st = (Stepper *)s;
    run_step(st->k, ids, b0, b1, st->pub.streams, t, st->kc.buf, st->vc.buf, out, &st->sc);
}

/* Releases what a stepper holds (the kernel only once it holds it). */
static void stepper_release(Stepper *st) {
    if (st->kc.obj) PyBuffer_Release(&st->kc);
    if (st->vc.obj) PyBuffer_Release(&st->vc);
    free(st->sc.mem);
    Py_XDECREF(st->k);
    PyMem_Free(st);
}

static void stepper_free(PyObject *capsule) {
    Stepper *st = PyCapsule_GetPointer(capsule, TZ_STEPPER_CAPSULE);
    if (st) stepper_release(st);
}

/* stepper(k_cache, v_cache): a capsule of a TzStepper over these caches (Engine.reset's). */
static PyObject *Kernel_stepper(Kernel *self, PyObject *args) {
    PyObject *kobj, *vobj;
    if (!PyArg_ParseTuple(args, "OO", &kobj, &vobj)) return NULL;
    Stepper *st = PyMem_Calloc(1, sizeof(Stepper));
    if (!st) return PyErr_NoMemory();
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE;
    if (PyObject_GetBuffer(kobj, &st->kc, flags) < 0 ||
        PyObject_GetBuffer(vobj, &st->vc, flags) < 0) {
        stepper_release(st);
        return NULL;
    }
    size_t per_layer_stream = (size_t)self->H * self->hdp * self->W;
    Py_ssize_t B = st->kc.len / (Py_ssize_t)(per_layer_stream * self->L);
    if (st->kc.itemsize != 1 || st->vc.itemsize != 1 || st->kc.len != st->vc.len ||
        (size_t)st->kc.len != (size_t)B * per_layer_stream * self->L || B < 1 ||
        B > INT32_MAX || scratch_alloc(self, &st->sc, (size_t)B, (size_t)self->W, 0)) {
        stepper_release(st);
        PyErr_SetString(PyExc_ValueError, "engine kernel stepper: bad caches");
        return NULL;
    }
    st->pub.step = stepper_step;
    st->pub.V = self->V;
    st->pub.streams = (int)B;
    st->k = self;
    Py_INCREF(self);
    PyObject *cap = PyCapsule_New(st, TZ_STEPPER_CAPSULE, stepper_free);
    if (!cap) stepper_release(st);
    return cap;
}

static PyObject *Kernel_get_simd(Kernel *self, void *closure) {
    return PyBool_FromLong(self->simd);
}

static PyGetSetDef Kernel_getset[] = {
    {"simd", (getter)Kernel_get_simd, NULL, "True when the AVX2 code runs", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Kernel_methods[] = {
    {"step", (PyCFunction)Kernel_step, METH_VARARGS, "one step of streams [b0, b1)"},
    {"forward", (PyCFunction)Kernel_forward, METH_VARARGS, "parallel pass of rows [b0, b1)"},
    {"ranges", (PyCFunction)Kernel_ranges, METH_VARARGS, "the encoder's symbol ranges"},
    {"decode", (PyCFunction)Kernel_decode, METH_VARARGS, "steps + rANS decode of rows"},
    {"stepper", (PyCFunction)Kernel_stepper, METH_VARARGS,
     "stepper(k_cache, v_cache): a capsule of the C step for another kernel's loop"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tinyzip.model._engine_kernel.Kernel",
    .tp_basicsize = sizeof(Kernel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Kernel_init,
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_methods = Kernel_methods,
    .tp_getset = Kernel_getset,
    .tp_doc = "The integer engine over packed weights (see model/_engine_kernel.c).",
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_engine_kernel",
    "Compiled integer engine (optional; model/engine.py is the reference).", -1, NULL,
};

PyMODINIT_FUNC PyInit__engine_kernel(void) {
#ifdef TZ_X86
    __builtin_cpu_init();
    cpu_avx2 = __builtin_cpu_supports("avx2");
#endif
    if (PyType_Ready(&KernelType) < 0) return NULL;
    PyObject *mod = PyModule_Create(&moduledef);
    if (!mod) return NULL;
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(mod, "Kernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(&KernelType);
        Py_DECREF(mod);
        return NULL;
    }
    PyModule_AddIntConstant(mod, "cpu_avx2", cpu_avx2);
    return mod;
}
