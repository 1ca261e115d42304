/* The one-pass low-bit Adam step on a CPU: dequantize -> Adam -> absmax -> requantize, one block of
 * 256 (8-bit) or 128 (4-bit) elements at a time, in registers and L1.
 *
 * Built at first use by native.py with the machine's C compiler (-O3 -march=native, no
 * contraction into fused multiply-adds, IEEE math): the same float32 operations in the same order as
 * the eager reference (kernel._block_step, codec.encode / decode), so the results are the
 * same bits; tested. Decoding is a table look-up: the tables are codec.code_table's values, passed
 * in. Encoding mirrors codec.encode; its constants (per decade: slope R, offset K, first code 2**e;
 * the thresholds between decades) are quant's, passed in.
 *
 * block() is plain C written for the compiler's auto-vectorizer (branch-free selects, restrict
 * pointers, blocks in local arrays); cpu_avx512.h has the same block with AVX-512 intrinsics,
 * used when the CPU has them. The only integer tricks are the absolute maximum (max of the
 * sign-cleared bit patterns, exact for floats) and the bfloat16 conversions. fp8 states
 * (state_bits="fp8", expanded e4m3 codes) have their own block in cpu_fp8.h.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define INLINE static inline __attribute__((always_inline))

typedef struct {
    float R[8], K[8], low[8];  /* per decade e: u = floor(a * R + K), clamped to [low, 2 low - 1] */
    float between[8];          /* between[e]: a > between[e] is in decade e or above */
    float zero, one;           /* a <= zero: code 0; a > one: the code of 1.0 */
} tree_t;

typedef struct {
    void *target;              /* the parameter (float32 / bfloat16), or NULL: write direction */
    const void *grad;          /* float32 or bfloat16 */
    float *direction;          /* float32 output of the projected path */
    uint8_t *m_codes, *v_codes;
    float *m_absmax, *v_absmax;
    const float *m_table, *v_table;   /* code -> map value; fp8: expanded_table + e4m3 (18 x 256) */
    uint8_t *m_expand, *v_expand;     /* fp8: the expansion index j per block (k = j / 4) */
    tree_t m_tree, v_tree;
    float hp[8];               /* beta1, 1-beta1, beta2, 1-beta2, sqrt(bc2), eps, decay, step */
    int64_t index0;            /* element index of block 0 in the tensor (stochastic rounding) */
    uint32_t key;              /* stochastic rounding key */
    int32_t bits;              /* 8 or 4 */
    int32_t param_mode;        /* 0 direction, 1 float32, 2 bfloat16 nearest, 3 bfloat16 stochastic */
    int32_t grad_bf16;
    int32_t fp8;               /* float8 e4m3 codes (8-bit blocks): 1 expanded, 2 plain; 0 tree maps */
} step_args;

INLINE uint32_t bits_of(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
INLINE float float_of(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* c10's round-to-nearest-even float -> bfloat16, NaN -> 0x7FC0. */
INLINE uint16_t bf16_nearest(float x) {
    uint32_t u = bits_of(x);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FC0 : (uint16_t)r;
}

/* kernel._hash32 on 32-bit words. */
INLINE uint32_t hash32(uint32_t x) {
    x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x1B873593u; return x ^ (x >> 16);
}

/* kernel.stochastic_round_bf16 for one element of global index i. */
INLINE uint16_t bf16_stochastic(float x, uint32_t i, uint32_t key) {
    uint32_t u = (bits_of(x) + (hash32(i ^ key) & 0xFFFFu)) & 0xFFFF0000u;
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FC0 : (uint16_t)(u >> 16);
}

/* codec.encode of y (already divided by the block's absmax) in a tree map with F magnitude bits. */
INLINE float encode_tree(float y, const tree_t *t, const int F, const int first, const int sign) {
    float a = fabsf(y);
    float slope = t->R[first], offset = t->K[first], low = t->low[first];
    for (int e = first + 1; e < F; e++) {
        int above = a > t->between[e];
        slope = above ? t->R[e] : slope;
        offset = above ? t->K[e] : offset;
        low = above ? t->low[e] : low;
    }
    float u = floorf(a * slope + offset);
    u = u < low ? low : u;
    float high = 2.0f * low - 1.0f;
    u = high < u ? high : u;
    if (sign) {
        float top = (float)(1 << F);
        u = (a > t->one && y > 0.0f) ? 0.0f : u;
        u = u + ((y < 0.0f || a > t->one) ? top : 0.0f);
    } else {
        u = a > t->one ? 1.0f : u;
    }
    return a <= t->zero ? 0.0f : u;
}

/* codec.encode in the linear map (u + 1) / 2**bits. */
INLINE float encode_linear(float y, const int bits) {
    float u = rintf(fabsf(y) * (float)(1 << bits)) - 1.0f;
    u = u < 0.0f ? 0.0f : u;
    float top = (float)((1 << bits) - 1);
    return u > top ? top : u;
}


#define TINY 1.17549435e-38f  /* codec.quantize_blocks clamps absmax to the smallest normal float */

/* Codes one per byte (4-bit: element 2i in the high nibble of byte i, 2i+1 in the low one). */
INLINE void unpack_codes(const uint8_t *mc, const uint8_t *vc, uint8_t *mu, uint8_t *vu,
                         const int B, const int bits) {
    if (bits == 8) {
        memcpy(mu, mc, B); memcpy(vu, vc, B);
        return;
    }
    for (int i = 0; i < B / 2; i++) {
        mu[2 * i] = mc[i] >> 4; mu[2 * i + 1] = mc[i] & 15;
        vu[2 * i] = vc[i] >> 4; vu[2 * i + 1] = vc[i] & 15;
    }
}

INLINE void pack_codes(const uint8_t *mu, const uint8_t *vu, uint8_t *mc, uint8_t *vc,
                       const int B, const int bits) {
    if (bits == 8) {
        memcpy(mc, mu, B); memcpy(vc, vu, B);
        return;
    }
    for (int i = 0; i < B / 2; i++) {
        mc[i] = (uint8_t)(mu[2 * i] << 4 | mu[2 * i + 1]);
        vc[i] = (uint8_t)(vu[2 * i] << 4 | vu[2 * i + 1]);
    }
}

/* A block's gradient as float32 (bfloat16 widened). */
INLINE void load_grad(const step_args *restrict a, int64_t base, float *restrict g, const int B,
                      const int grad_bf16) {
    if (grad_bf16) {
        const uint16_t *restrict gp = (const uint16_t *)a->grad + base;
        for (int i = 0; i < B; i++) g[i] = float_of((uint32_t)gp[i] << 16);
    } else {
        memcpy(g, (const float *)a->grad + base, sizeof(float) * B);
    }
}

/* Adam on one element, in kernel._block_step's order: the new moments, and the direction. */
INLINE float adam_element(const float *hp, float mo, float vo, float g, float *mn, float *vn) {
    *mn = mo * hp[0] + g * hp[1];
    *vn = vo * hp[2] + (g * hp[3]) * g;
    return *mn / (sqrtf(*vn) / hp[4] + hp[5]);
}

/* Adam over B elements decoded by table look-up (codes mu / vu into tables mt / vt, times the
 * block's scales am / av): the new moments into m / v, the directions into d, and the largest
 * magnitudes' bit patterns (sign cleared: exact) into *mmax / *vmax. The tree and fp8 blocks share it. */
INLINE void adam_decoded(const float *hp, const float *restrict mt, const uint8_t *restrict mu,
                         float am, const float *restrict vt, const uint8_t *restrict vu, float av,
                         const float *restrict g, float *restrict m, float *restrict v,
                         float *restrict d, const int B, uint32_t *mmax_out, uint32_t *vmax_out) {
    uint32_t mmax = 0, vmax = 0;
    for (int i = 0; i < B; i++) {
        float mn, vn;
        d[i] = adam_element(hp, mt[mu[i]] * am, vt[vu[i]] * av, g[i], &mn, &vn);
        m[i] = mn; v[i] = vn;
        uint32_t ma = bits_of(mn) & 0x7FFFFFFFu, va = bits_of(vn) & 0x7FFFFFFFu;
        mmax = ma > mmax ? ma : mmax;
        vmax = va > vmax ? va : vmax;
    }
    *mmax_out = mmax; *vmax_out = vmax;
}

/* The parameter update p = p * decay + step * d of B elements at ``base`` (or the direction d). */
INLINE void write_target(const step_args *restrict a, int64_t base, const float *restrict d,
                         const int B, const int mode) {
    const float decay = a->hp[6], stepsize = a->hp[7];
    if (mode == 0) {
        memcpy(a->direction + base, d, sizeof(float) * B);
    } else if (mode == 1) {
        float *restrict p = (float *)a->target + base;
        for (int i = 0; i < B; i++) p[i] = p[i] * decay + stepsize * d[i];
    } else {
        uint16_t *restrict p = (uint16_t *)a->target + base;
        const uint32_t i0 = (uint32_t)(a->index0 + base), key = a->key;
        for (int i = 0; i < B; i++) {
            float x = float_of((uint32_t)p[i] << 16) * decay + stepsize * d[i];
            p[i] = mode == 2 ? bf16_nearest(x) : bf16_stochastic(x, i0 + (uint32_t)i, key);
        }
    }
}

/* One block, plain C for the auto-vectorizer. B, bits, the maps and the parameter mode are
 * constants after inlining. */
INLINE void block(const step_args *restrict a, int64_t blk, const int B, const int bits,
                  const int v_linear, const int mode, const int grad_bf16) {
    const int64_t base = blk * B;
    const int cb = B * bits / 8;  /* code bytes per block */
    uint8_t *restrict mc = a->m_codes + blk * cb, *restrict vc = a->v_codes + blk * cb;
    const float am = a->m_absmax[blk], av = a->v_absmax[blk];
    const float *restrict mt = a->m_table, *restrict vt = a->v_table;
    float m[256], v[256], g[256], d[256];
    uint8_t mu[256], vu[256];

    load_grad(a, base, g, B, grad_bf16);
    unpack_codes(mc, vc, mu, vu, B, bits);
    uint32_t mmax, vmax;
    adam_decoded(a->hp, mt, mu, am, vt, vu, av, g, m, v, d, B, &mmax, &vmax);
    write_target(a, base, d, B, mode);
    /* codec.quantize_blocks: divide by absmax clamped to the smallest normal float */
    const float mam = float_of(mmax), vam = float_of(vmax);
    const float md = mam < TINY ? TINY : mam, vd = vam < TINY ? TINY : vam;
    const tree_t mtr = a->m_tree, vtr = a->v_tree;  /* local copies: no aliasing with the codes */
    for (int i = 0; i < B; i++)
        m[i] = bits == 8 ? encode_tree(m[i] / md, &mtr, 7, 0, 1) : encode_tree(m[i] / md, &mtr, 3, 0, 1);
    for (int i = 0; i < B; i++)
        v[i] = v_linear ? encode_linear(v[i] / vd, bits) : encode_tree(v[i] / vd, &vtr, bits, 1, 0);
    for (int i = 0; i < B; i++) { mu[i] = (uint8_t)(int32_t)m[i]; vu[i] = (uint8_t)(int32_t)v[i]; }
    pack_codes(mu, vu, mc, vc, B, bits);
    a->m_absmax[blk] = mam; a->v_absmax[blk] = vam;
}

#include "cpu_fp8.h"

#if defined(__AVX512F__)
#define SIMD16 1
#include "cpu_avx512.h"
#endif

/* The block function for the format: fp8 (FP8 = 1) takes cpu_fp8.h's, 8-lane AVX2 unless the
 * portable path is asked for; the tree maps block16 (AVX-512) or block. */
#ifdef SIMD16
#define TREE_BLOCK(b, B, BITS, VLIN, MODE, GBF) \
    (simd ? block16(a, b, B, BITS, VLIN, MODE, GBF, simd) : block(a, b, B, BITS, VLIN, MODE, GBF))
#else
#define TREE_BLOCK(b, B, BITS, VLIN, MODE, GBF) block(a, b, B, BITS, VLIN, MODE, GBF)
#endif
#ifdef FP8_SIMD8
#define FP8_PLAIN(b, MODE, GBF, PLAIN) \
    (generic ? block_fp8(a, b, MODE, GBF, PLAIN) : block_fp8_avx2(a, b, MODE, GBF, PLAIN))
#else
#define FP8_PLAIN(b, MODE, GBF, PLAIN) block_fp8(a, b, MODE, GBF, PLAIN)
#endif
/* a->fp8: 1 expanded codes, 2 plain ones */
#define FP8_BLOCK(b, MODE, GBF) \
    do { if (a->fp8 == 2) FP8_PLAIN(b, MODE, GBF, 1); else FP8_PLAIN(b, MODE, GBF, 0); } while (0)
#define RUN(B, BITS, VLIN, MODE, GBF, FP8) do { for (int64_t b = begin; b < end; b++) { \
    if (FP8) FP8_BLOCK(b, MODE, GBF); else (void)TREE_BLOCK(b, B, BITS, VLIN, MODE, GBF); } } while (0)

#define BY_GRAD(B, BITS, VLIN, MODE, FP8) \
    do { if (a->grad_bf16) RUN(B, BITS, VLIN, MODE, 1, FP8); else RUN(B, BITS, VLIN, MODE, 0, FP8); } while (0)

#define BY_MODE(B, BITS, VLIN, FP8) \
    do { switch (a->param_mode) { \
        case 0: BY_GRAD(B, BITS, VLIN, 0, FP8); break; case 1: BY_GRAD(B, BITS, VLIN, 1, FP8); break; \
        case 2: BY_GRAD(B, BITS, VLIN, 2, FP8); break; default: BY_GRAD(B, BITS, VLIN, 3, FP8); } } while (0)

/* Blocks [begin, end) of one tensor; 8-bit: signed tree M, unsigned tree V; 4-bit: signed tree M,
 * linear V; fp8: expanded e4m3 M and V (V without code 0). ``generic`` != 0 forces the plain-C path (SLIMTRAIN_NATIVE=portable; tests compare both). Returns 0, or -1 for an
 * unsupported width. */
int slimtrain_adam_lowbit(const step_args *a, int64_t begin, int64_t end, int generic) {
#ifdef SIMD16
    tree16 trees[2];
    const tree16 *simd = NULL;
    if (!generic && !a->fp8 && tree16_init(&trees[0], &a->m_tree, a->bits - 1, 0)
        && (a->bits == 4 || tree16_init(&trees[1], &a->v_tree, a->bits, 1)))
        simd = trees;
#endif
    (void)generic;
    if (a->fp8 && a->bits == 8) BY_MODE(256, 8, 0, 1);
    else if (a->fp8) return -1;
    else if (a->bits == 8) BY_MODE(256, 8, 0, 0);
    else if (a->bits == 4) BY_MODE(128, 4, 1, 0);
    else return -1;
    return 0;
}

/* Whether this build has the AVX-512 path. */
int slimtrain_simd_width(void) {
#ifdef SIMD16
    return 16;
#else
    return 0;
#endif
}

/* Whether this build has fp8's AVX2 path (8 lanes). */
int slimtrain_fp8_simd_width(void) {
#ifdef FP8_SIMD8
    return 8;
#else
    return 0;
#endif
}

int slimtrain_abi_version(void) { return 5; }
