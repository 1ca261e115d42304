/* The AVX-512 path of cpu.c (included there when the compiler targets AVX-512): block()
 * written with 16-lane intrinsics. Same operations, same order, same bits as block() (tested);
 * faster because the table look-ups are in-register permutes (the compilers' gathers are slower on
 * the CPUs measured), the encoder finds a value's decade from its float exponent instead of a compare
 * chain, and decode -> Adam -> write run in one loop without intermediate arrays. */
#include <immintrin.h>

/* encode_tree for 16 lanes. The decade e is found from the float's exponent instead of the
 * compare chain: an octave [2**k, 2**(k+1)) holds at most one threshold between decades (they are
 * ~10x apart), so e = E[octave] + (a > T[octave]), two 32-entry in-register look-ups; then the
 * decade's R, K and first code by 16-entry look-ups. Same comparisons, same arithmetic: same codes. */
typedef struct { __m512i e_lo, e_hi; __m512 t_lo, t_hi, R, K, low, high, zero, one, top; } tree16;

#define OCTAVE0 96  /* biased exponent of octave 0: 2**-31; smaller magnitudes share its decade */

static int tree16_init(tree16 *s, const tree_t *t, int F, int first) {
    int32_t E[32]; float T[32], hi[8];
    for (int o = 0; o < 32; o++) {
        float L = ldexpf(1.0f, o + OCTAVE0 - 127);
        int below = 0, inside = 0;
        T[o] = INFINITY;
        for (int e = first + 1; e < F; e++) {
            if (t->between[e] < L) below++;
            else if (t->between[e] < 2.0f * L) { T[o] = t->between[e]; inside++; }
        }
        if (inside > 1 || (o == 0 && below > 0)) return 0;  /* not this map's shape: generic path */
        E[o] = first + below;
    }
    for (int e = 0; e < 8; e++) hi[e] = 2.0f * t->low[e] - 1.0f;
    s->e_lo = _mm512_loadu_si512(E); s->e_hi = _mm512_loadu_si512(E + 16);
    s->t_lo = _mm512_loadu_ps(T); s->t_hi = _mm512_loadu_ps(T + 16);
    s->R = _mm512_castps256_ps512(_mm256_loadu_ps(t->R));
    s->K = _mm512_castps256_ps512(_mm256_loadu_ps(t->K));
    s->low = _mm512_castps256_ps512(_mm256_loadu_ps(t->low));
    s->high = _mm512_castps256_ps512(_mm256_loadu_ps(hi));
    s->zero = _mm512_set1_ps(t->zero); s->one = _mm512_set1_ps(t->one);
    s->top = _mm512_set1_ps((float)(1 << F));  /* signed maps: the sign bit */
    return 1;
}

/* table[code] for 16 codes of 8 bits: eight 32-entry in-register look-ups, merged by bits 5-7
 * (AVX-512 gathers are slower than this on the CPUs measured). */
INLINE __m512 lookup256(__m512i code, const float *table) {
    __m512 r[8];
    for (int k = 0; k < 8; k++)
        r[k] = _mm512_permutex2var_ps(_mm512_loadu_ps(table + 32 * k), code,
                                      _mm512_loadu_ps(table + 32 * k + 16));
    for (int bit = 5, n = 8; n > 1; bit++, n /= 2) {
        __mmask16 hi = _mm512_test_epi32_mask(code, _mm512_set1_epi32(1 << bit));
        for (int k = 0; k < n / 2; k++) r[k] = _mm512_mask_blend_ps(hi, r[2 * k], r[2 * k + 1]);
    }
    return r[0];
}

INLINE __m512i encode_tree16(__m512 y, const tree16 *s, const int sign) {
    const __m512 a = _mm512_abs_ps(y), zero = _mm512_setzero_ps();
    __m512i o = _mm512_sub_epi32(_mm512_srli_epi32(_mm512_castps_si512(a), 23),
                                 _mm512_set1_epi32(OCTAVE0));
    o = _mm512_min_epi32(_mm512_max_epi32(o, _mm512_setzero_si512()), _mm512_set1_epi32(31));
    __m512i e = _mm512_permutex2var_epi32(s->e_lo, o, s->e_hi);
    __mmask16 up = _mm512_cmp_ps_mask(a, _mm512_permutex2var_ps(s->t_lo, o, s->t_hi), _CMP_GT_OQ);
    e = _mm512_mask_add_epi32(e, up, e, _mm512_set1_epi32(1));
    __m512 u = _mm512_add_ps(_mm512_mul_ps(a, _mm512_permutexvar_ps(e, s->R)),
                             _mm512_permutexvar_ps(e, s->K));
    u = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    u = _mm512_max_ps(u, _mm512_permutexvar_ps(e, s->low));
    u = _mm512_min_ps(u, _mm512_permutexvar_ps(e, s->high));
    __mmask16 big = _mm512_cmp_ps_mask(a, s->one, _CMP_GT_OQ);
    if (sign) {
        __mmask16 pos = _mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ);
        __mmask16 neg = _mm512_cmp_ps_mask(y, zero, _CMP_LT_OQ);
        u = _mm512_mask_mov_ps(u, big & pos, zero);
        u = _mm512_mask_add_ps(u, neg | big, u, s->top);
    } else {
        u = _mm512_mask_mov_ps(u, big, _mm512_set1_ps(1.0f));
    }
    u = _mm512_mask_mov_ps(u, _mm512_cmp_ps_mask(a, s->zero, _CMP_LE_OQ), zero);
    return _mm512_cvttps_epi32(u);
}

/* encode_linear for 16 lanes (rint: round half to even, as torch.round). */
INLINE __m512i encode_linear16(__m512 y, const int bits) {
    __m512 u = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_abs_ps(y), _mm512_set1_ps((float)(1 << bits))),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    u = _mm512_sub_ps(u, _mm512_set1_ps(1.0f));
    u = _mm512_min_ps(_mm512_max_ps(u, _mm512_setzero_ps()), _mm512_set1_ps((float)((1 << bits) - 1)));
    return _mm512_cvttps_epi32(u);
}

INLINE __m512 load_grad16(const step_args *a, int64_t at, const int grad_bf16) {
    if (grad_bf16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)a->grad + at));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float *)a->grad + at);
}

INLINE __m512i hash32_16(__m512i x) {
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7FEB352D));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x1B873593));
    return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

/* The parameter update (or the direction) of 16 elements at index ``at``: as block()'s. */
INLINE void write16(const step_args *a, int64_t at, __m512 d, const int mode) {
    const __m512 decay = _mm512_set1_ps(a->hp[6]), stepsize = _mm512_set1_ps(a->hp[7]);
    if (mode == 0) {
        _mm512_storeu_ps(a->direction + at, d);
    } else if (mode == 1) {
        float *p = (float *)a->target + at;
        _mm512_storeu_ps(p, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(p), decay),
                                          _mm512_mul_ps(stepsize, d)));
    } else {
        uint16_t *p = (uint16_t *)a->target + at;
        __m512 old = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
        __m512i u = _mm512_castps_si512(_mm512_add_ps(_mm512_mul_ps(old, decay),
                                                      _mm512_mul_ps(stepsize, d)));
        if (mode == 2) {
            __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                                    _mm512_set1_epi32(0x7F800000));
            u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
            u = _mm512_mask_mov_epi32(_mm512_srli_epi32(u, 16), nan, _mm512_set1_epi32(0x7FC0));
        } else {
            const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            __m512i index = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(uint32_t)(a->index0 + at)), lane);
            __m512i noise = _mm512_and_si512(hash32_16(_mm512_xor_si512(index, _mm512_set1_epi32((int32_t)a->key))),
                                             _mm512_set1_epi32(0xFFFF));
            u = _mm512_and_si512(_mm512_add_epi32(u, noise), _mm512_set1_epi32((int32_t)0xFFFF0000u));
            __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                                    _mm512_set1_epi32(0x7F800000));
            u = _mm512_mask_mov_epi32(_mm512_srli_epi32(u, 16), nan, _mm512_set1_epi32(0x7FC0));
        }
        _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(u));
    }
}

INLINE __m512 decode16(const uint8_t *codes, const float *table, const int bits) {
    __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)codes));
    return bits == 8 ? lookup256(c, table) : _mm512_permutexvar_ps(c, _mm512_loadu_ps(table));
}

/* block() with 16-lane AVX-512 code: one loop for decode -> Adam -> write, one for encode. */
INLINE void block16(const step_args *restrict a, int64_t blk, const int B, const int bits,
                    const int v_linear, const int mode, const int grad_bf16, const tree16 *tr) {
    const __m512 b1 = _mm512_set1_ps(a->hp[0]), omb1 = _mm512_set1_ps(a->hp[1]);
    const __m512 b2 = _mm512_set1_ps(a->hp[2]), omb2 = _mm512_set1_ps(a->hp[3]);
    const __m512 bc2s = _mm512_set1_ps(a->hp[4]), eps = _mm512_set1_ps(a->hp[5]);
    const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
    const int64_t base = blk * B;
    const int cb = B * bits / 8;
    uint8_t *restrict mc = a->m_codes + blk * cb, *restrict vc = a->v_codes + blk * cb;
    const __m512 am = _mm512_set1_ps(a->m_absmax[blk]), av = _mm512_set1_ps(a->v_absmax[blk]);
    float m[256], v[256];
    uint8_t mu[256], vu[256];
    unpack_codes(mc, vc, mu, vu, B, bits);
    __m512i mmax = _mm512_setzero_si512(), vmax = _mm512_setzero_si512();
    for (int i = 0; i < B; i += 16) {
        __m512 g = load_grad16(a, base + i, grad_bf16);
        __m512 mo = _mm512_mul_ps(decode16(mu + i, a->m_table, bits), am);
        __m512 vo = _mm512_mul_ps(decode16(vu + i, a->v_table, bits), av);
        __m512 mn = _mm512_add_ps(_mm512_mul_ps(mo, b1), _mm512_mul_ps(g, omb1));
        __m512 vn = _mm512_add_ps(_mm512_mul_ps(vo, b2), _mm512_mul_ps(_mm512_mul_ps(g, omb2), g));
        __m512 d = _mm512_div_ps(mn, _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vn), bc2s), eps));
        _mm512_storeu_ps(m + i, mn); _mm512_storeu_ps(v + i, vn);
        mmax = _mm512_max_epu32(mmax, _mm512_and_si512(_mm512_castps_si512(mn), magnitude));
        vmax = _mm512_max_epu32(vmax, _mm512_and_si512(_mm512_castps_si512(vn), magnitude));
        write16(a, base + i, d, mode);
    }
    const float mam = float_of(_mm512_reduce_max_epu32(mmax));
    const float vam = float_of(_mm512_reduce_max_epu32(vmax));
    const __m512 md = _mm512_set1_ps(mam < TINY ? TINY : mam), vd = _mm512_set1_ps(vam < TINY ? TINY : vam);
    for (int i = 0; i < B; i += 16) {
        __m512 y = _mm512_div_ps(_mm512_loadu_ps(m + i), md);
        _mm_storeu_si128((__m128i *)(mu + i), _mm512_cvtepi32_epi8(encode_tree16(y, &tr[0], 1)));
        y = _mm512_div_ps(_mm512_loadu_ps(v + i), vd);
        __m512i u = v_linear ? encode_linear16(y, bits) : encode_tree16(y, &tr[1], 0);
        _mm_storeu_si128((__m128i *)(vu + i), _mm512_cvtepi32_epi8(u));
    }
    pack_codes(mu, vu, mc, vc, B, bits);
    a->m_absmax[blk] = mam; a->v_absmax[blk] = vam;
}
