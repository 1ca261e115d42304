/* The fp8 block of cpu.c (state_bits="fp8"): Adam on float8 e4m3 codes with COAT's dynamic range
 * expansion (or, ``plain``, fp8_expansion=False, without: fp8.quantize_blocks' "e4m3" kinds),
 * fp8.py's operations in the same order (same bits; tested). Per block of 256: decode by a look-up
 * in the block's row of the table (fp8.expanded_table's row j, or row 17: the e4m3 values), Adam,
 * the absolute maximum and the smallest nonzero magnitude (from the sign-cleared bit patterns:
 * exact, NaN excluded from the minimum), the block's new j (fp8.expansion_index), then each
 * magnitude |x| / absmax raised to j/4 (up to two square roots, binary exponentiation) and
 * rounded to e4m3 (fp8.e4m3_bits).
 *
 * block_fp8 is plain C for the auto-vectorizer; block_fp8_avx2 the same with 8-lane AVX2
 * intrinsics after a scalar decode, used where the compiler targets AVX2 unless
 * SLIMTRAIN_NATIVE=portable. */

#define FP8_FLOOR 7.88860905e-31f      /* 2**-110: fp8.quantize_blocks' floor of absmax */
#define FP8_SMALLEST 0.001953125f      /* 2**-9: e4m3's smallest subnormal */
#define FP8_INF_BITS 0x7F800000u
#define FP8_POW_FLOOR 8.67361738e-19f  /* 2**-60: fp8.expand_magnitudes' floor of the squares */

/* fp8.expansion_index: how many of 16 quarter steps keep 448 * (absmin / absmax)^(j/4) >= 2**-9. */
INLINE uint32_t expansion_index(float absmax, float absmin) {
    const float q = sqrtf(sqrtf(absmin / absmax));
    float p = 448.0f;
    uint32_t count = 0;
    for (int t = 0; t < 16; t++) {  /* p only falls (q <= 1): stop before it becomes subnormal */
        p = p * q;
        if (!(p >= FP8_SMALLEST)) break;
        count++;
    }
    return count < 1 ? 1 : count;
}

/* fp8.expand_magnitudes: 448 * a^(j/4) with j = n * 2^t (t <= 2): a, sqrt(a) or sqrt(sqrt(a)) for
 * t = 2, 1, 0, then its n-th power. The squares are floored at 2**-60 (a power n uses is at least
 * 2**-9 / 448): an unused one must not turn subnormal, which costs a microcode assist per lane on
 * x86 (measured: the encoder 5x slower). */
INLINE uint32_t pow_twos(uint32_t j) { return j % 4 == 0 ? 2 : j % 2 == 0 ? 1 : 0; }

INLINE float expand_magnitude(float a, const uint32_t t, const uint32_t n) {
    float b = t == 2 ? a : t == 1 ? sqrtf(a) : sqrtf(sqrtf(a)), r = 1.0f;
    for (int bit = 0; bit < 4; bit++) {
        r = (n >> bit) & 1u ? r * b : r;
        float bb = b * b;
        b = bb < FP8_POW_FLOOR ? FP8_POW_FLOOR : bb;  /* NaN stays NaN, as torch's clamp_min */
    }
    return r * 448.0f;
}

/* fp8.e4m3_bits of a >= 0 (or NaN): round to nearest even from the float32 bits (normal range) or
 * rint(a * 2**9) by adding 2**14, whose ulp is 2**-9 (subnormals); saturating at 448. */
INLINE uint32_t e4m3_magnitude(float a) {
    uint32_t b = bits_of(a);
    int32_t normal = (int32_t)((b + 0x7FFFFu + ((b >> 20) & 1u)) >> 20) - 960;
    int32_t sub = (int32_t)(bits_of(a + 16384.0f) - 0x46800000u);
    int32_t mag = a < 0.015625f ? sub : normal;
    mag = mag > 0x7E ? 0x7E : mag;
    return a != a ? 0x7Fu : (uint32_t)mag;
}

/* One moment's codes: signed (M: the sign bit of x) or nonnegative (V: no code 0); ``plain``
 * (fp8_expansion=False): e4m3 of |x| * (448 / absmax), no exponent. ``t`` (pow_twos) is a constant
 * in each inlined copy, so that the auto-vectorizer sees one loop without a per-element branch. */
INLINE void encode_fp8_loop(const float *restrict x, uint8_t *restrict codes, float inv,
                            const uint32_t t, uint32_t n, const int nonneg, const int plain) {
    for (int i = 0; i < 256; i++) {
        float y = fabsf(x[i]) * inv;
        uint32_t mag = e4m3_magnitude(plain ? y : expand_magnitude(y, t, n));
        codes[i] = (uint8_t)(nonneg ? (mag < 1 ? 1 : mag) : mag | ((bits_of(x[i]) >> 24) & 0x80u));
    }
}

INLINE void encode_fp8(const float *restrict x, uint8_t *restrict codes, float absmax, uint32_t j,
                       const int nonneg, const int plain) {
    const float floored = absmax < FP8_FLOOR ? FP8_FLOOR : absmax;
    const float inv = plain ? 448.0f / floored : 1.0f / floored;
    const uint32_t t = pow_twos(j), n = j >> t;
    if (plain) encode_fp8_loop(x, codes, inv, 0, 0, nonneg, 1);
    else if (t == 2) encode_fp8_loop(x, codes, inv, 2, n, nonneg, 0);
    else if (t == 1) encode_fp8_loop(x, codes, inv, 1, n, nonneg, 0);
    else encode_fp8_loop(x, codes, inv, 0, n, nonneg, 0);
}

INLINE void block_fp8(const step_args *restrict a, int64_t blk, const int mode, const int grad_bf16,
                      const int plain) {
    const int64_t base = blk * 256;
    uint8_t *restrict mc = a->m_codes + base, *restrict vc = a->v_codes + base;
    /* plain codes: row 17 of the table (e4m3 values), scaled by absmax / 448 (fp8.dequantize_blocks) */
    const float *restrict mt = a->m_table + 256 * (plain ? 17 : a->m_expand[blk]);
    const float *restrict vt = a->v_table + 256 * (plain ? 17 : a->v_expand[blk]);
    const float am = plain ? a->m_absmax[blk] / 448.0f : a->m_absmax[blk];
    const float av = plain ? a->v_absmax[blk] / 448.0f : a->v_absmax[blk];
    float m[256], v[256], g[256], d[256];

    load_grad(a, base, g, 256, grad_bf16);
    uint32_t mmax, vmax, mmin = FP8_INF_BITS, vmin = FP8_INF_BITS;
    adam_decoded(a->hp, mt, mc, am, vt, vc, av, g, m, v, d, 256, &mmax, &vmax);
    write_target(a, base, d, 256, mode);
    if (!plain) {  /* the smallest nonzero magnitudes; NaN's bits exceed inf's: never the minimum */
        for (int i = 0; i < 256; i++) {
            uint32_t ma = bits_of(m[i]) & 0x7FFFFFFFu, va = bits_of(v[i]) & 0x7FFFFFFFu;
            mmin = ma != 0 && ma < mmin ? ma : mmin;
            vmin = va != 0 && va < vmin ? va : vmin;
        }
    }
    const float mam = float_of(mmax), vam = float_of(vmax);
    const uint32_t jm = plain ? 0 : expansion_index(mam, float_of(mmin));
    const uint32_t jv = plain ? 0 : expansion_index(vam, float_of(vmin));
    encode_fp8(m, mc, mam, jm, 0, plain);
    encode_fp8(v, vc, vam, jv, 1, plain);
    a->m_absmax[blk] = mam; a->v_absmax[blk] = vam;
    if (!plain) { a->m_expand[blk] = (uint8_t)jm; a->v_expand[blk] = (uint8_t)jv; }
}

#if defined(__AVX2__)
#define FP8_SIMD8 1
#include <immintrin.h>

/* expand_magnitude for 8 lanes; t and n are the block's, so the branches are uniform. */
INLINE __m256 expand_magnitude8(__m256 a, const uint32_t t, const uint32_t n) {
    __m256 b = t == 2 ? a : t == 1 ? _mm256_sqrt_ps(a) : _mm256_sqrt_ps(_mm256_sqrt_ps(a));
    __m256 r = _mm256_set1_ps(1.0f);
    const __m256 floor = _mm256_set1_ps(FP8_POW_FLOOR);
    for (int bit = 0; bit < 4; bit++) {
        if ((n >> bit) & 1u) r = _mm256_mul_ps(r, b);
        if (!(n >> (bit + 1))) break;                   /* no higher bit: no more squares needed */
        b = _mm256_max_ps(floor, _mm256_mul_ps(b, b));  /* max_ps(x, NaN) is NaN, as clamp_min */
    }
    return _mm256_mul_ps(r, _mm256_set1_ps(448.0f));
}

INLINE __m256i e4m3_magnitude8(__m256 a) {
    const __m256i b = _mm256_castps_si256(a), one = _mm256_set1_epi32(1);
    __m256i normal = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7FFFF),
                                      _mm256_and_si256(_mm256_srli_epi32(b, 20), one)));
    normal = _mm256_sub_epi32(_mm256_srli_epi32(normal, 20), _mm256_set1_epi32(960));
    __m256i sub = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(a, _mm256_set1_ps(16384.0f))),
                                   _mm256_set1_epi32(0x46800000));
    __m256 small = _mm256_cmp_ps(a, _mm256_set1_ps(0.015625f), _CMP_LT_OQ);
    __m256i mag = _mm256_blendv_epi8(normal, sub, _mm256_castps_si256(small));
    mag = _mm256_min_epi32(mag, _mm256_set1_epi32(0x7E));
    __m256 nan = _mm256_cmp_ps(a, a, _CMP_UNORD_Q);
    return _mm256_blendv_epi8(mag, _mm256_set1_epi32(0x7F), _mm256_castps_si256(nan));
}

/* 8 int32 lanes (each < 256) to 8 bytes at ``out``. */
INLINE void store_bytes8(uint8_t *out, __m256i x) {
    __m128i lo = _mm256_castsi256_si128(x), hi = _mm256_extracti128_si256(x, 1);
    __m128i w = _mm_packus_epi32(lo, hi);           /* 8 x u16 */
    _mm_storel_epi64((__m128i *)out, _mm_packus_epi16(w, w));
}

INLINE void encode_fp8_avx2(const float *restrict x, uint8_t *restrict codes, float absmax,
                            uint32_t j, const int nonneg, const int plain) {
    const float floored = absmax < FP8_FLOOR ? FP8_FLOOR : absmax;
    const __m256 inv = _mm256_set1_ps(plain ? 448.0f / floored : 1.0f / floored);
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const uint32_t t = pow_twos(j), n = j >> t;
    for (int i = 0; i < 256; i += 8) {
        __m256 xi = _mm256_loadu_ps(x + i);
        __m256 y = _mm256_mul_ps(_mm256_and_ps(xi, magnitude), inv);
        __m256i mag = e4m3_magnitude8(plain ? y : expand_magnitude8(y, t, n));
        if (nonneg) mag = _mm256_max_epi32(mag, _mm256_set1_epi32(1));
        else mag = _mm256_or_si256(mag, _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(xi), 24),
                                                          _mm256_set1_epi32(0x80)));
        store_bytes8(codes + i, mag);
    }
}

/* The smallest lane of 8 unsigned int32. */
INLINE uint32_t hmin_epu32(__m256i x) {
    __m128i y = _mm_min_epu32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    y = _mm_min_epu32(y, _mm_shuffle_epi32(y, 0x4E));
    y = _mm_min_epu32(y, _mm_shuffle_epi32(y, 0xB1));
    return (uint32_t)_mm_cvtsi128_si32(y);
}

INLINE uint32_t hmax_epu32(__m256i x) {
    __m128i y = _mm_max_epu32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    y = _mm_max_epu32(y, _mm_shuffle_epi32(y, 0x4E));
    y = _mm_max_epu32(y, _mm_shuffle_epi32(y, 0xB1));
    return (uint32_t)_mm_cvtsi128_si32(y);
}

INLINE void block_fp8_avx2(const step_args *restrict a, int64_t blk, const int mode,
                           const int grad_bf16, const int plain) {
    const __m256 b1 = _mm256_set1_ps(a->hp[0]), omb1 = _mm256_set1_ps(a->hp[1]);
    const __m256 b2 = _mm256_set1_ps(a->hp[2]), omb2 = _mm256_set1_ps(a->hp[3]);
    const __m256 bc2s = _mm256_set1_ps(a->hp[4]), eps = _mm256_set1_ps(a->hp[5]);
    const __m256i magnitude = _mm256_set1_epi32(0x7FFFFFFF), zero = _mm256_setzero_si256();
    const __m256i inf = _mm256_set1_epi32((int32_t)FP8_INF_BITS);
    const int64_t base = blk * 256;
    uint8_t *restrict mc = a->m_codes + base, *restrict vc = a->v_codes + base;
    const float *restrict mt = a->m_table + 256 * (plain ? 17 : a->m_expand[blk]);
    const float *restrict vt = a->v_table + 256 * (plain ? 17 : a->v_expand[blk]);
    const __m256 am = _mm256_set1_ps(plain ? a->m_absmax[blk] / 448.0f : a->m_absmax[blk]);
    const __m256 av = _mm256_set1_ps(plain ? a->v_absmax[blk] / 448.0f : a->v_absmax[blk]);
    float m[256], v[256], d[256];
    /* decode: scalar look-ups of the block's table row (faster here than rebuilding the values
     * with permutes or from the code's bits, and than AVX2 gathers: measured) */
    for (int i = 0; i < 256; i++) { m[i] = mt[mc[i]]; v[i] = vt[vc[i]]; }
    __m256i mmax = zero, vmax = zero, mmin = inf, vmin = inf;
    for (int i = 0; i < 256; i += 8) {
        __m256 g;
        if (grad_bf16) {
            __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)a->grad + base + i));
            g = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        } else {
            g = _mm256_loadu_ps((const float *)a->grad + base + i);
        }
        __m256 mo = _mm256_mul_ps(_mm256_loadu_ps(m + i), am);
        __m256 vo = _mm256_mul_ps(_mm256_loadu_ps(v + i), av);
        __m256 mn = _mm256_add_ps(_mm256_mul_ps(mo, b1), _mm256_mul_ps(g, omb1));
        __m256 vn = _mm256_add_ps(_mm256_mul_ps(vo, b2), _mm256_mul_ps(_mm256_mul_ps(g, omb2), g));
        _mm256_storeu_ps(d + i, _mm256_div_ps(mn, _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vn), bc2s), eps)));
        _mm256_storeu_ps(m + i, mn); _mm256_storeu_ps(v + i, vn);
        __m256i ma = _mm256_and_si256(_mm256_castps_si256(mn), magnitude);
        __m256i va = _mm256_and_si256(_mm256_castps_si256(vn), magnitude);
        mmax = _mm256_max_epu32(mmax, ma); vmax = _mm256_max_epu32(vmax, va);
        if (plain) continue;  /* no expansion: no minimum */
        /* nonzero magnitudes only: a zero lane becomes inf's bits, which never lowers the minimum */
        mmin = _mm256_min_epu32(mmin, _mm256_blendv_epi8(ma, inf, _mm256_cmpeq_epi32(ma, zero)));
        vmin = _mm256_min_epu32(vmin, _mm256_blendv_epi8(va, inf, _mm256_cmpeq_epi32(va, zero)));
    }
    write_target(a, base, d, 256, mode);
    const float mam = float_of(hmax_epu32(mmax)), vam = float_of(hmax_epu32(vmax));
    const uint32_t jm = plain ? 0 : expansion_index(mam, float_of(hmin_epu32(mmin)));
    const uint32_t jv = plain ? 0 : expansion_index(vam, float_of(hmin_epu32(vmin)));
    encode_fp8_avx2(m, mc, mam, jm, 0, plain);
    encode_fp8_avx2(v, vc, vam, jv, 1, plain);
    a->m_absmax[blk] = mam; a->v_absmax[blk] = vam;
    if (!plain) { a->m_expand[blk] = (uint8_t)jm; a->v_expand[blk] = (uint8_t)jv; }
}
#endif
