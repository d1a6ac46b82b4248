/* XNOR-popcount kernels of the binsense deploy engine (built and loaded by __init__.py).
 *
 * xnor_gemm: C[m, n] = sum_k popcount(~(A[m, k] ^ B[n, k])), A (M, K) and B (N, K) 64-bit
 * words, C int32 (M, N). B is first packed into panels of NB columns, k-major
 * (panel[k][c] = B[p*NB + c, k], missing columns 0); the panels of a weight matrix are
 * packed once (xnor_pack_b) and kept. Rows are taken in blocks of MB (one OpenMP
 * iteration each when threads > 1); each block is computed as register tiles of RT rows
 * x NB columns, the panel in L1 and the row block in L2. The tiles count
 * popcount(A ^ B) and write 64 K minus it.
 *
 * Paths, chosen at run time (isa: 0 the best this CPU has, 1 portable, 2 AVX2, 3 AVX-512):
 *  - AVX-512 VPOPCNTDQ: the lanes are 8 output columns; per word: broadcast A, xor,
 *    _mm512_popcnt_epi64, add (4 rows x 32 columns, 16 zmm accumulators);
 *  - AVX2: the nibble-table popcount with _mm256_shuffle_epi8 (Mula, Kurz, Lemire),
 *    byte counts accumulated over up to 31 words, then summed with _mm256_sad_epu8
 *    (2 rows x 8 columns per sub-tile: no spills in 16 ymm registers). The fused
 *    convolution splits its input (per call) and weights (once) into nibble halves, so
 *    the tile's step is 6 operations per 4 columns instead of 8 (12-25 % faster);
 *  - portable: __builtin_popcountll (the popcnt instruction where the CPU has it).
 * A path the CPU lacks is refused (return -1), never run.
 *
 * xnor_conv2d: a binary convolution on packed words (B, H, W, G * wpg). With the fused
 * threshold (mode 1) the input is padded once with zero words (the padding the border
 * correction expects) and the tiles read each output position's taps in place (an
 * implicit GEMM: row pointers and tap offsets, no im2col copy); the epilogue writes each
 * position's threshold bits (2 C + off[p, n] >= 0, xor an inversion bit for "y <= tau")
 * packed into (B, H', W', ceil(C_out / 64)) words, the next layer's input, pad bits 0.
 * With int32 output (mode 0) the im2col rows of each block are built, and y = 2 C +
 * bias[n, p] written in (B, C_out, H', W').
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && !defined(XNOR_NO_X86)
#include <immintrin.h>
#define XNOR_X86 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define NB 32 /* columns per B panel */
#define RT 4  /* rows per register tile; row blocks are padded to a multiple */
#define MB 64 /* rows per block */

enum { ISA_AUTO = 0, ISA_PORTABLE = 1, ISA_AVX2 = 2, ISA_AVX512 = 3 };
enum { FEAT_POPCNT = 1, FEAT_AVX2 = 2, FEAT_AVX512 = 4 };

/* A tile: RT rows x NB columns of C = xnor counts; row r's word k is rows[r][kofs[k]]
 * (a contiguous row: kofs[k] = k; a convolution read in place: the tap's offset) */
typedef void (*tile_fn)(const uint64_t *const *rows, const int64_t *kofs, int64_t K,
                        const uint64_t *P, int32_t *C, int64_t ldc);

int xnor_version(void) { return 1; }

/* the first 16 hex digits of this source's SHA-256, compiled in by setup.py ("" else):
 * the loader never serves an install-time build of another source */
#ifndef XNOR_SOURCE_KEY
#define XNOR_SOURCE_KEY ""
#endif
const char *xnor_source_key(void) { return XNOR_SOURCE_KEY; }

int xnor_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* CPU features, found once (cpuid is slow, and traps to the hypervisor in a VM) */
int xnor_features(void) {
    static volatile int cached = -1;
    if (cached >= 0) return cached;
    int f = 0;
#ifdef XNOR_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("popcnt")) f |= FEAT_POPCNT;
    if (__builtin_cpu_supports("avx2")) f |= FEAT_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq"))
        f |= FEAT_AVX512;
#endif
    cached = f; /* every thread computes the same value */
    return f;
}

/* ------------------------------------------------------------------ portable */

/* 4 rows x 32 columns as 2 x 4 scalar sub-tiles */
#define SCALAR_TILE_BODY                                                                  \
    for (int r0 = 0; r0 < RT; r0 += 2) {                                                  \
        for (int c0 = 0; c0 < NB; c0 += 4) {                                              \
            uint64_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0,       \
                     s13 = 0;                                                             \
            const uint64_t *a0 = rows[r0], *a1 = rows[r0 + 1];                            \
            for (int64_t k = 0; k < K; k++) {                                             \
                const uint64_t *b = P + k * NB + c0;                                      \
                uint64_t x0 = a0[kofs[k]], x1 = a1[kofs[k]];                              \
                s00 += __builtin_popcountll(x0 ^ b[0]);                                   \
                s01 += __builtin_popcountll(x0 ^ b[1]);                                   \
                s02 += __builtin_popcountll(x0 ^ b[2]);                                   \
                s03 += __builtin_popcountll(x0 ^ b[3]);                                   \
                s10 += __builtin_popcountll(x1 ^ b[0]);                                   \
                s11 += __builtin_popcountll(x1 ^ b[1]);                                   \
                s12 += __builtin_popcountll(x1 ^ b[2]);                                   \
                s13 += __builtin_popcountll(x1 ^ b[3]);                                   \
            }                                                                             \
            int32_t full = (int32_t)(64 * K);                                             \
            int32_t *c = C + r0 * ldc + c0;                                               \
            c[0] = full - (int32_t)s00, c[1] = full - (int32_t)s01;                       \
            c[2] = full - (int32_t)s02, c[3] = full - (int32_t)s03;                       \
            c += ldc;                                                                     \
            c[0] = full - (int32_t)s10, c[1] = full - (int32_t)s11;                       \
            c[2] = full - (int32_t)s12, c[3] = full - (int32_t)s13;                       \
        }                                                                                 \
    }

static void tile_portable(const uint64_t *const *rows, const int64_t *kofs, int64_t K,
                          const uint64_t *P, int32_t *C, int64_t ldc) {
    SCALAR_TILE_BODY
}

#ifdef XNOR_X86
__attribute__((target("popcnt"))) static void tile_popcnt(const uint64_t *const *rows,
                                                          const int64_t *kofs, int64_t K,
                                                          const uint64_t *P, int32_t *C,
                                                          int64_t ldc) {
    SCALAR_TILE_BODY
}

/* ------------------------------------------------------------------ AVX2 */

#ifndef AVX2_R
#define AVX2_R 2 /* rows x AVX2_V * 4 columns per sub-tile: few enough for 16 ymm */
#endif
#ifndef AVX2_V
#define AVX2_V 2
#endif

#if AVX2_V % 2
#error "AVX2_V must be even (the counts are stored 8 columns at a time)"
#endif

/* c[0..8) = full - the counts of 8 columns, held as int64 in lo (columns 0-3) and hi (4-7):
 * their low halves gathered in order (shuffle within lanes, then across) */
__attribute__((target("avx2"))) static inline void store_counts_avx2(int32_t *c, __m256i full,
                                                                     __m256i lo, __m256i hi) {
    const __m256 halves = _mm256_shuffle_ps(_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi),
                                            _MM_SHUFFLE(2, 0, 2, 0));
    const __m256i ordered =
        _mm256_permute4x64_epi64(_mm256_castps_si256(halves), _MM_SHUFFLE(3, 1, 2, 0));
    _mm256_storeu_si256((__m256i *)c, _mm256_sub_epi32(full, ordered));
}

/* AVX2_R rows x 4 AVX2_V columns from P's column 0 (P already offset) */
__attribute__((target("avx2"))) static inline void subtile_avx2(const uint64_t *const *rows,
                                                                const int64_t *kofs,
                                                                int64_t K, const uint64_t *P,
                                                                int32_t *C, int64_t ldc) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1,
                                         1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    __m256i total[AVX2_R][AVX2_V];
    for (int r = 0; r < AVX2_R; r++)
        for (int v = 0; v < AVX2_V; v++) total[r][v] = zero;
    for (int64_t k0 = 0; k0 < K; k0 += 31) { /* a byte holds 31 counts of <= 8 */
        const int64_t k1 = K < k0 + 31 ? K : k0 + 31;
        __m256i acc[AVX2_R][AVX2_V];
        for (int r = 0; r < AVX2_R; r++)
            for (int v = 0; v < AVX2_V; v++) acc[r][v] = zero;
        for (int64_t k = k0; k < k1; k++) {
            const uint64_t *b = P + k * NB;
            for (int r = 0; r < AVX2_R; r++) {
                const __m256i a = _mm256_set1_epi64x((long long)rows[r][kofs[k]]);
                for (int v = 0; v < AVX2_V; v++) {
                    const __m256i t =
                        _mm256_xor_si256(a, _mm256_loadu_si256((const __m256i *)(b + 4 * v)));
                    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(t, low));
                    const __m256i hi =
                        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(t, 4), low));
                    acc[r][v] = _mm256_add_epi8(acc[r][v], _mm256_add_epi8(lo, hi));
                }
            }
        }
        for (int r = 0; r < AVX2_R; r++)
            for (int v = 0; v < AVX2_V; v++)
                total[r][v] = _mm256_add_epi64(total[r][v], _mm256_sad_epu8(acc[r][v], zero));
    }
    const __m256i full = _mm256_set1_epi32((int)(64 * K));
    for (int r = 0; r < AVX2_R; r++)
        for (int v = 0; v < AVX2_V; v += 2)
            store_counts_avx2(C + r * ldc + 4 * v, full, total[r][v], total[r][v + 1]);
}

__attribute__((target("avx2"))) static void tile_avx2(const uint64_t *const *rows,
                                                      const int64_t *kofs, int64_t K,
                                                      const uint64_t *P, int32_t *C,
                                                      int64_t ldc) {
    for (int r = 0; r < RT; r += AVX2_R)
        for (int c = 0; c < NB; c += 4 * AVX2_V)
            subtile_avx2(rows + r, kofs, K, P + c, C + r * ldc + c, ldc);
}

/* The split form of the AVX2 path (the fused convolution): every word w stored as its
 * two nibble halves, lo = w & 0x0f.. and hi = (w >> 4) & 0x0f.., since popcount(a ^ b) =
 * sum over bytes of lut[a_lo ^ b_lo] + lut[a_hi ^ b_hi]. The halves are made once per
 * call (input and weight panels), so a step of the tile is 2 xor, 2 shuffles and 2 adds
 * per 4 columns instead of 8 operations. Row word k: rows[r][kofs[k]] (lo) and the word
 * after it (hi); panel step k: NB lo words, then NB hi words. */
/* one row's 8 columns at step k: 2 x (2 xor, 2 shuffles, 2 byte adds) */
#define AVX2_SPLIT_ROW(a, c0, c1)                                                           \
    do {                                                                                  \
        const __m256i alo_ = _mm256_set1_epi64x((long long)(a)[0]);                        \
        const __m256i ahi_ = _mm256_set1_epi64x((long long)(a)[1]);                        \
        c0 = _mm256_add_epi8(c0, _mm256_shuffle_epi8(lut, _mm256_xor_si256(alo_, blo0)));  \
        c0 = _mm256_add_epi8(c0, _mm256_shuffle_epi8(lut, _mm256_xor_si256(ahi_, bhi0)));  \
        c1 = _mm256_add_epi8(c1, _mm256_shuffle_epi8(lut, _mm256_xor_si256(alo_, blo1)));  \
        c1 = _mm256_add_epi8(c1, _mm256_shuffle_epi8(lut, _mm256_xor_si256(ahi_, bhi1)));  \
    } while (0)

/* 2 rows x 8 columns from P's column 0 (P already offset), named accumulators */
__attribute__((target("avx2"))) static inline void subtile_avx2_split(
    const uint64_t *const *rows, const int64_t *kofs, int64_t K, const uint64_t *P, int32_t *C,
    int64_t ldc) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1,
                                         1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i zero = _mm256_setzero_si256();
    const uint64_t *r0 = rows[0], *r1 = rows[1];
    __m256i t00 = zero, t01 = zero, t10 = zero, t11 = zero;
    for (int64_t k0 = 0; k0 < K; k0 += 31) { /* a byte holds 31 counts of <= 8 */
        const int64_t k1 = K < k0 + 31 ? K : k0 + 31;
        __m256i c00 = zero, c01 = zero, c10 = zero, c11 = zero;
        for (int64_t k = k0; k < k1; k++) {
            const uint64_t *b = P + k * 2 * NB;
            const __m256i blo0 = _mm256_loadu_si256((const __m256i *)b);
            const __m256i blo1 = _mm256_loadu_si256((const __m256i *)(b + 4));
            const __m256i bhi0 = _mm256_loadu_si256((const __m256i *)(b + NB));
            const __m256i bhi1 = _mm256_loadu_si256((const __m256i *)(b + NB + 4));
            AVX2_SPLIT_ROW(r0 + kofs[k], c00, c01);
            AVX2_SPLIT_ROW(r1 + kofs[k], c10, c11);
        }
        t00 = _mm256_add_epi64(t00, _mm256_sad_epu8(c00, zero));
        t01 = _mm256_add_epi64(t01, _mm256_sad_epu8(c01, zero));
        t10 = _mm256_add_epi64(t10, _mm256_sad_epu8(c10, zero));
        t11 = _mm256_add_epi64(t11, _mm256_sad_epu8(c11, zero));
    }
    const __m256i full = _mm256_set1_epi32((int)(64 * K));
    store_counts_avx2(C, full, t00, t01);
    store_counts_avx2(C + ldc, full, t10, t11);
}

__attribute__((target("avx2"))) static void tile_avx2_split(const uint64_t *const *rows,
                                                            const int64_t *kofs, int64_t K,
                                                            const uint64_t *P, int32_t *C,
                                                            int64_t ldc) {
    for (int r = 0; r < RT; r += 2)
        for (int c = 0; c < NB; c += 8)
            subtile_avx2_split(rows + r, kofs, K, P + c, C + r * ldc + c, ldc);
}

/* ------------------------------------------------------------------ AVX-512 */

/* row r's 4 column vectors at word k: xor with the broadcast row word, popcount, add */
#define AVX512_ROW(a, c0, c1, c2, c3)                                                       \
    do {                                                                                  \
        const __m512i x_ = _mm512_set1_epi64((long long)(a));                              \
        c0 = _mm512_add_epi64(c0, _mm512_popcnt_epi64(_mm512_xor_si512(x_, b0)));          \
        c1 = _mm512_add_epi64(c1, _mm512_popcnt_epi64(_mm512_xor_si512(x_, b1)));          \
        c2 = _mm512_add_epi64(c2, _mm512_popcnt_epi64(_mm512_xor_si512(x_, b2)));          \
        c3 = _mm512_add_epi64(c3, _mm512_popcnt_epi64(_mm512_xor_si512(x_, b3)));          \
    } while (0)

/* The counts of a 4 x 32 tile: 16 named zmm accumulators (an array would be zeroed and
 * stored through the stack); a step is 4 panel loads, 4 broadcasts and 16 x (xor, popcnt,
 * add); the counts (each < 2^31) leave as int32 "64 K - popcount" through 8 two-register
 * permutes: oRH holds row R's columns 16 H .. 16 H + 15 */
#define AVX512_TILE_COUNTS                                                                  \
    const uint64_t *a0 = rows[0], *a1 = rows[1], *a2 = rows[2], *a3 = rows[3];              \
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00,        \
            c11 = c00, c12 = c00, c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00,    \
            c30 = c00, c31 = c00, c32 = c00, c33 = c00;                                     \
    for (int64_t k = 0; k < K; k++) {                                                       \
        const uint64_t *b = P + k * NB;                                                     \
        const int64_t o = kofs[k];                                                          \
        const __m512i b0 = _mm512_loadu_si512((const void *)b);                             \
        const __m512i b1 = _mm512_loadu_si512((const void *)(b + 8));                       \
        const __m512i b2 = _mm512_loadu_si512((const void *)(b + 16));                      \
        const __m512i b3 = _mm512_loadu_si512((const void *)(b + 24));                      \
        AVX512_ROW(a0[o], c00, c01, c02, c03);                                              \
        AVX512_ROW(a1[o], c10, c11, c12, c13);                                              \
        AVX512_ROW(a2[o], c20, c21, c22, c23);                                              \
        AVX512_ROW(a3[o], c30, c31, c32, c33);                                              \
    }                                                                                       \
    const __m512i full = _mm512_set1_epi32((int)(64 * K));                                  \
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24,   \
                                           26, 28, 30);                                     \
    const __m512i o00 = _mm512_sub_epi32(full, _mm512_permutex2var_epi32(c00, even, c01));  \
    const __m512i o01 = _mm512_sub_epi32(full, _mm512_permutex2var_epi32(c02, even, c03));  \
    const __m512i o10 = _mm512_sub_epi32(full, _mm512_permutex2var_epi32(c10, even, c11));  \
    const __m512i o11 = _mm512_sub_epi32(full, _mm512_permutex2var_epi32(c12, even, c13));  \
    const __m512i o20 = _mm512_sub_epi32(full, _mm512_permutex2var_epi32(c20, even, c21));  \
    const __m512i o21 = _mm512_sub_epi32(full, _mm512_permutex2var_epi32(c22, even, c23));  \
    const __m512i o30 = _mm512_sub_epi32(full, _mm512_permutex2var_epi32(c30, even, c31));  \
    const __m512i o31 = _mm512_sub_epi32(full, _mm512_permutex2var_epi32(c32, even, c33));

__attribute__((target("avx512f,avx512vpopcntdq"))) static void tile_avx512(
    const uint64_t *const *rows, const int64_t *kofs, int64_t K, const uint64_t *P,
    int32_t *C, int64_t ldc) {
    AVX512_TILE_COUNTS
    _mm512_storeu_si512((void *)C, o00), _mm512_storeu_si512((void *)(C + 16), o01);
    _mm512_storeu_si512((void *)(C + ldc), o10), _mm512_storeu_si512((void *)(C + ldc + 16), o11);
    _mm512_storeu_si512((void *)(C + 2 * ldc), o20);
    _mm512_storeu_si512((void *)(C + 2 * ldc + 16), o21);
    _mm512_storeu_si512((void *)(C + 3 * ldc), o30);
    _mm512_storeu_si512((void *)(C + 3 * ldc + 16), o31);
}

/* The tile with the fused threshold (mode 1, one group), on panel `pan` (its columns are
 * channels 32 pan ..): row r's 32 columns j leave as the 32 bits (2 c_j + off[r][32 pan +
 * j] >= 0) XOR inv[r][pan], bits past `live` 0, in out[r][pan]; off is read under the live
 * mask only (no read past the last channel). */
__attribute__((target("avx512f,avx512vpopcntdq"))) static void tile_avx512_bits(
    const uint64_t *const *rows, const int64_t *kofs, int64_t K, const uint64_t *P,
    const int32_t *const *off, const uint32_t *const *inv, uint32_t *const *out, int64_t pan,
    uint32_t live) {
    AVX512_TILE_COUNTS
    const __mmask16 l0 = (__mmask16)live, l1 = (__mmask16)(live >> 16);
    const __m512i zero = _mm512_setzero_si512();
#define AVX512_BITS(r, lo, hi)                                                              \
    do {                                                                                  \
        const int32_t *o_ = off[r] + NB * pan;                                             \
        const __m512i v0_ = _mm512_add_epi32(_mm512_add_epi32(lo, lo),                     \
                                             _mm512_maskz_loadu_epi32(l0, o_));            \
        const __m512i v1_ = _mm512_add_epi32(_mm512_add_epi32(hi, hi),                     \
                                             _mm512_maskz_loadu_epi32(l1, o_ + 16));       \
        const uint32_t m_ = (uint32_t)_mm512_mask_cmpge_epi32_mask(l0, v0_, zero) |        \
                            (uint32_t)_mm512_mask_cmpge_epi32_mask(l1, v1_, zero) << 16;   \
        out[r][pan] = (m_ ^ inv[r][pan]) & live;                                           \
    } while (0)
    AVX512_BITS(0, o00, o01);
    AVX512_BITS(1, o10, o11);
    AVX512_BITS(2, o20, o21);
    AVX512_BITS(3, o30, o31);
#undef AVX512_BITS
}

/* ------------------------------------------------------------------ thresholds */

/* bits of a row: bit i of word i / 64 set iff 2 c[i] + off[i] >= 0; n bits, rest 0 */
__attribute__((target("avx512f"))) static void thresh_avx512(const int32_t *c,
                                                             const int32_t *off, int64_t n,
                                                             uint64_t *bits) {
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t j = 0; j * 64 < n; j++) {
        uint64_t w = 0;
        for (int q = 0; q < 4; q++) {
            const int64_t i = j * 64 + q * 16;
            if (i >= n) break;
            const __mmask16 live = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
            const __m512i cv = _mm512_maskz_loadu_epi32(live, c + i);
            const __m512i ov = _mm512_maskz_loadu_epi32(live, off + i);
            const __m512i v = _mm512_add_epi32(_mm512_add_epi32(cv, cv), ov);
            w |= (uint64_t)_mm512_mask_cmpge_epi32_mask(live, v, zero) << (16 * q);
        }
        bits[j] = w;
    }
}

__attribute__((target("avx2"))) static void thresh_avx2(const int32_t *c, const int32_t *off,
                                                        int64_t n, uint64_t *bits) {
    const __m256i minus1 = _mm256_set1_epi32(-1);
    for (int64_t j = 0; j * 64 < n; j++) {
        uint64_t w = 0;
        int64_t i = j * 64;
        const int64_t end = n < i + 64 ? n : i + 64;
        for (; i + 8 <= end; i += 8) {
            const __m256i cv = _mm256_loadu_si256((const __m256i *)(c + i));
            const __m256i ov = _mm256_loadu_si256((const __m256i *)(off + i));
            const __m256i v = _mm256_add_epi32(_mm256_add_epi32(cv, cv), ov);
            const int m = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(v, minus1)));
            w |= (uint64_t)(unsigned)m << (i - j * 64);
        }
        for (; i < end; i++) w |= (uint64_t)(2 * c[i] + off[i] >= 0) << (i - j * 64);
        bits[j] = w;
    }
}
#endif /* XNOR_X86 */

/* ------------------------------------------------------------------ dispatch */

static void thresh_portable(const int32_t *c, const int32_t *off, int64_t n, uint64_t *bits) {
    for (int64_t j = 0; j * 64 < n; j++) {
        uint64_t w = 0;
        const int64_t end = n < (j + 1) * 64 ? n : (j + 1) * 64;
        for (int64_t i = j * 64; i < end; i++) w |= (uint64_t)(2 * c[i] + off[i] >= 0) << (i & 63);
        bits[j] = w;
    }
}

typedef struct {
    tile_fn tile;
    void (*thresh)(const int32_t *c, const int32_t *off, int64_t n, uint64_t *bits);
    tile_fn split; /* the fused convolution's tile on nibble halves (NULL: none) */
    /* the fused convolution's tile with the threshold in its epilogue (NULL: none) */
    void (*bits)(const uint64_t *const *rows, const int64_t *kofs, int64_t K,
                 const uint64_t *P, const int32_t *const *off, const uint32_t *const *inv,
                 uint32_t *const *out, int64_t pan, uint32_t live);
} kernel_t;

static int best_isa(void) {
    const int f = xnor_features();
    return (f & FEAT_AVX512) ? ISA_AVX512 : (f & FEAT_AVX2) ? ISA_AVX2 : ISA_PORTABLE;
}

/* the functions of path `isa` (0: the best here); 0 when this CPU cannot run it */
static int select_kernel(int isa, kernel_t *k) {
    const int f = xnor_features();
    if (isa == ISA_AUTO) isa = best_isa();
    k->split = NULL, k->bits = NULL;
    switch (isa) {
    case ISA_PORTABLE:
        k->tile = tile_portable, k->thresh = thresh_portable;
#ifdef XNOR_X86
        if (f & FEAT_POPCNT) k->tile = tile_popcnt;
#endif
        return 1;
#ifdef XNOR_X86
    case ISA_AVX2:
        k->tile = tile_avx2, k->thresh = thresh_avx2, k->split = tile_avx2_split;
        return (f & FEAT_AVX2) != 0;
    case ISA_AVX512:
        k->tile = tile_avx512, k->thresh = thresh_avx512, k->bits = tile_avx512_bits;
        return (f & FEAT_AVX512) != 0;
#endif
    default:
        (void)f;
        return 0;
    }
}

/* The best path this CPU has (1, 2 or 3) for isa 0; else `isa` if it runs here, or -1. */
int xnor_isa(int isa) {
    kernel_t k;
    if (isa == ISA_AUTO) return best_isa();
    return select_kernel(isa, &k) ? isa : -1;
}

/* ------------------------------------------------------------------ GEMM */

static int64_t panels(int64_t N) { return (N + NB - 1) / NB; }

int64_t xnor_packed_b_words(int64_t N, int64_t K) { return panels(N) * NB * K; }

/* B (N, K) -> panels (ceil(N / NB), K, NB), missing columns 0 */
void xnor_pack_b(const uint64_t *B, int64_t N, int64_t K, uint64_t *Bp) {
    for (int64_t p = 0; p < panels(N); p++) {
        uint64_t *dst = Bp + p * K * NB;
        for (int64_t c = 0; c < NB; c++) {
            const int64_t n = p * NB + c;
            for (int64_t k = 0; k < K; k++) dst[k * NB + c] = n < N ? B[n * K + k] : 0;
        }
    }
}

/* rows (a multiple of RT) against npan panels of pw words each: Cb (rows, npan * NB);
 * row r's word k is rowp[r][kofs[k]] */
static void block_tiles(tile_fn tile, const uint64_t *const *rowp, int64_t rows,
                        const int64_t *kofs, int64_t K, const uint64_t *Bp, int64_t npan,
                        int64_t pw, int32_t *Cb, int64_t ldc) {
    for (int64_t p = 0; p < npan; p++)
        for (int64_t r = 0; r < rows; r += RT)
            tile(rowp + r, kofs, K, Bp + p * pw, Cb + r * ldc + p * NB, ldc);
}

/* block_tiles of the contiguous rows of A (stride K, ident[k] = k); rowp: rows pointers */
static void block_rows(tile_fn tile, const uint64_t *A, int64_t rows, const int64_t *ident,
                       int64_t K, const uint64_t *Bp, int64_t npan, int32_t *Cb, int64_t ldc,
                       const uint64_t **rowp) {
    for (int64_t r = 0; r < rows; r++) rowp[r] = A + r * K;
    block_tiles(tile, rowp, rows, ident, K, Bp, npan, K * NB, Cb, ldc);
}

/* 0, 1, ..., n - 1 (NULL when out of memory) */
static int64_t *identity(int64_t n) {
    int64_t *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    if (v)
        for (int64_t k = 0; k < n; k++) v[k] = k;
    return v;
}

static int thread_count(int64_t threads, int64_t blocks) {
#ifdef _OPENMP
    const int64_t t = threads < 1 ? 1 : threads;
    return (int)(t < blocks ? t : (blocks < 1 ? 1 : blocks));
#else
    (void)threads, (void)blocks;
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* C (M, N) int32 = xnor counts of A (M, K) with the packed B; 0 ok, -1 isa, -2 memory */
int xnor_gemm_packed(const uint64_t *A, const uint64_t *Bp, int32_t *C, int64_t M, int64_t N,
                     int64_t K, int64_t threads, int isa) {
    kernel_t kn;
    if (!select_kernel(isa, &kn)) return -1;
    if (M <= 0 || N <= 0) return 0;
    const int64_t npan = panels(N), ldc = npan * NB, blocks = (M + MB - 1) / MB;
    const int nt = thread_count(threads, blocks);
    const int64_t cwords = MB * ldc, awords = RT * (K > 0 ? K : 1);
    int32_t *cbuf = malloc((size_t)nt * cwords * sizeof(int32_t));
    uint64_t *abuf = malloc((size_t)nt * awords * sizeof(uint64_t));
    const uint64_t **pbuf = malloc((size_t)nt * MB * sizeof(uint64_t *));
    int64_t *ident = identity(K);
    if (!cbuf || !abuf || !pbuf || !ident) {
        free(cbuf), free(abuf), free(pbuf), free(ident);
        return -2;
    }
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t ib = 0; ib < blocks; ib++) {
        int32_t *cb = cbuf + thread_id() * cwords;
        uint64_t *ab = abuf + thread_id() * awords;
        const uint64_t **rowp = pbuf + thread_id() * MB;
        const int64_t m0 = ib * MB, rows = M - m0 < MB ? M - m0 : MB, full = rows / RT * RT;
        block_rows(kn.tile, A + m0 * K, full, ident, K, Bp, npan, cb, ldc, rowp);
        if (rows > full) { /* the last rows, padded with zero rows */
            memset(ab, 0, (size_t)RT * K * sizeof(uint64_t));
            memcpy(ab, A + (m0 + full) * K, (size_t)(rows - full) * K * sizeof(uint64_t));
            block_rows(kn.tile, ab, RT, ident, K, Bp, npan, cb + full * ldc, ldc, rowp);
        }
        for (int64_t r = 0; r < rows; r++)
            memcpy(C + (m0 + r) * N, cb + r * ldc, (size_t)N * sizeof(int32_t));
    }
    free(cbuf), free(abuf), free(pbuf), free(ident);
    return 0;
}

int xnor_gemm(const uint64_t *A, const uint64_t *B, int32_t *C, int64_t M, int64_t N,
              int64_t K, int64_t threads, int isa) {
    kernel_t kn;
    if (!select_kernel(isa, &kn)) return -1;
    const int64_t words = xnor_packed_b_words(N, K);
    uint64_t *Bp = malloc((size_t)(words > 0 ? words : 1) * sizeof(uint64_t));
    if (!Bp) return -2;
    xnor_pack_b(B, N, K, Bp);
    const int rc = xnor_gemm_packed(A, Bp, C, M, N, K, threads, isa);
    free(Bp);
    return rc;
}

/* ------------------------------------------------------------------ packing */

/* ±1 (x > 0 is bit 1) NCHW -> words (B, HW, G, wpg), wpg = ceil((C / G) / 64), pad bits 0.
 * dtype: 0 bool / uint8, 1 int8, 2 float32 (x > 0), 3 float32 sign (x >= 0). */
int xnor_pack_nchw(const void *x, int dtype, int64_t B, int64_t C, int64_t HW, int64_t G,
                   uint64_t *out) {
    const int64_t cg = C / G, wpg = (cg + 63) / 64, ctot = G * wpg;
    uint64_t *tmp = malloc((size_t)(HW > 0 ? HW : 1) * sizeof(uint64_t));
    if (!tmp) return -2;
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t w = 0; w < wpg; w++) {
                memset(tmp, 0, (size_t)HW * sizeof(uint64_t));
                const int64_t n = cg - 64 * w < 64 ? cg - 64 * w : 64;
                for (int64_t i = 0; i < n; i++) {
                    const int64_t off = (b * C + g * cg + 64 * w + i) * HW;
                    if (dtype == 0) {
                        const uint8_t *s = (const uint8_t *)x + off;
                        for (int64_t p = 0; p < HW; p++) tmp[p] |= (uint64_t)(s[p] != 0) << i;
                    } else if (dtype == 1) {
                        const int8_t *s = (const int8_t *)x + off;
                        for (int64_t p = 0; p < HW; p++) tmp[p] |= (uint64_t)(s[p] > 0) << i;
                    } else if (dtype == 2) {
                        const float *s = (const float *)x + off;
                        for (int64_t p = 0; p < HW; p++) tmp[p] |= (uint64_t)(s[p] > 0.0f) << i;
                    } else { /* the sign of a float: bit 1 iff x >= 0 (sign(0) = +1) */
                        const float *s = (const float *)x + off;
                        for (int64_t p = 0; p < HW; p++) tmp[p] |= (uint64_t)(s[p] >= 0.0f) << i;
                    }
                }
                for (int64_t p = 0; p < HW; p++) out[(b * HW + p) * ctot + g * wpg + w] = tmp[p];
            }
    free(tmp);
    return 0;
}

/* ------------------------------------------------------------------ convolution */

/* dims: B, H, W, G, wpg, cout_g, kh, kw, sh, sw, ph, pw, Hout, Wout */
enum { D_B, D_H, D_W, D_G, D_WPG, D_COUTG, D_KH, D_KW, D_SH, D_SW, D_PH, D_PW, D_HO, D_WO };

typedef struct {
    int64_t b, oh, ow;
} pos_t;

static pos_t pos_of(const int64_t *d, int64_t m) {
    const int64_t P = d[D_HO] * d[D_WO], p = m % P;
    pos_t q = {m / P, p / d[D_WO], p % d[D_WO]};
    return q;
}

static void pos_next(const int64_t *d, pos_t *q) {
    if (++q->ow == d[D_WO]) {
        q->ow = 0;
        if (++q->oh == d[D_HO]) q->oh = 0, q->b++;
    }
}

/* the im2col row of output position q for group g: taps (i, j) x wpg words, word t at
 * dst[t * stride]; padding words 0. Inlined with a constant stride (1 or NB). */
static inline __attribute__((always_inline)) void im2col_row(const uint64_t *X,
                                                             const int64_t *d, int64_t g,
                                                             const pos_t *q, uint64_t *dst,
                                                             const int64_t stride) {
    const int64_t wpg = d[D_WPG], ctot = d[D_G] * wpg, kw = d[D_KW], W = d[D_W];
    const int64_t span = kw * wpg, iw0 = q->ow * d[D_SW] - d[D_PW];
    const int inside = iw0 >= 0 && iw0 + kw <= W;
    for (int64_t i = 0; i < d[D_KH]; i++, dst += span * stride) {
        const int64_t ih = q->oh * d[D_SH] - d[D_PH] + i;
        if (ih < 0 || ih >= d[D_H]) {
            for (int64_t e = 0; e < span; e++) dst[e * stride] = 0;
            continue;
        }
        const uint64_t *row = X + ((q->b * d[D_H] + ih) * W) * ctot + g * wpg;
        if (inside && ctot == wpg) { /* one group: the taps' words are contiguous */
            const uint64_t *src = row + iw0 * ctot;
            for (int64_t e = 0; e < span; e++) dst[e * stride] = src[e];
            continue;
        }
        for (int64_t j = 0; j < kw; j++) {
            const int64_t iw = iw0 + j;
            uint64_t *o = dst + j * wpg * stride;
            if (iw >= 0 && iw < W) {
                const uint64_t *src = row + iw * ctot;
                for (int64_t w = 0; w < wpg; w++) o[w * stride] = src[w];
            } else {
                for (int64_t w = 0; w < wpg; w++) o[w * stride] = 0;
            }
        }
    }
}

/* group g's im2col matrix A (B * Hout * Wout, kh * kw * wpg) */
void xnor_im2col(const uint64_t *X, const int64_t *d, int64_t g, uint64_t *A) {
    const int64_t M = d[D_B] * d[D_HO] * d[D_WO], K = d[D_KH] * d[D_KW] * d[D_WPG];
    pos_t q = pos_of(d, 0);
    for (int64_t m = 0; m < M; m++, pos_next(d, &q)) im2col_row(X, d, g, &q, A + m * K, 1);
}

/* OR the n bits of src into dst from bit `at` on (dst has `words` words) */
static void or_bits(uint64_t *dst, int64_t words, int64_t at, const uint64_t *src, int64_t n) {
    const int64_t shift = at & 63;
    for (int64_t j = 0; j * 64 < n; j++) {
        const int64_t w = (at >> 6) + j;
        dst[w] |= src[j] << shift;
        if (shift && w + 1 < words) dst[w + 1] |= src[j] >> (64 - shift);
    }
}

#define NIBBLES 0x0f0f0f0f0f0f0f0full

/* n words as their nibble halves, interleaved: out[2 i] = lo, out[2 i + 1] = hi */
static void split_words(const uint64_t *x, int64_t n, uint64_t *out) {
    for (int64_t i = 0; i < n; i++) out[2 * i] = x[i] & NIBBLES, out[2 * i + 1] = (x[i] >> 4) & NIBBLES;
}

/* Panels (words: a multiple of NB; (K, NB) each) as split panels (K, 2, NB): NB lo words,
 * then NB hi words per step; twice the words. Made once per weight matrix and kept
 * (xnor_fused_split says which paths read them). */
void xnor_split_panels(const uint64_t *Bp, int64_t words, uint64_t *out) {
    for (int64_t i = 0; i < words / NB; i++)
        for (int64_t c = 0; c < NB; c++) {
            const uint64_t w = Bp[i * NB + c];
            out[i * 2 * NB + c] = w & NIBBLES, out[i * 2 * NB + NB + c] = (w >> 4) & NIBBLES;
        }
}

/* Whether path `isa` (0: the best here) runs the fused convolution on split panels, so
 * that the caller may pass them to xnor_conv2d made once (xnor_split_panels); -1: the
 * path cannot run here. */
int xnor_fused_split(int isa) {
    kernel_t k;
    if (!select_kernel(isa, &k)) return -1;
    return k.split != NULL;
}

/* X (B, H, W, ctot) with ph rows and pw columns of zero words around each image, into
 * Xp (B, H + 2 ph, W + 2 pw, ctot): the padding the border correction expects */
static void pad_words(const uint64_t *X, const int64_t *d, int64_t ctot, uint64_t *Xp) {
    const int64_t H = d[D_H], W = d[D_W], ph = d[D_PH], pw = d[D_PW];
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
    for (int64_t b = 0; b < d[D_B]; b++)
        for (int64_t h = 0; h < Hp; h++) {
            uint64_t *dst = Xp + (b * Hp + h) * Wp * ctot;
            if (h < ph || h >= H + ph) {
                memset(dst, 0, (size_t)(Wp * ctot) * sizeof(uint64_t));
                continue;
            }
            memset(dst, 0, (size_t)(pw * ctot) * sizeof(uint64_t));
            memcpy(dst + pw * ctot, X + (b * H + h - ph) * W * ctot,
                   (size_t)(W * ctot) * sizeof(uint64_t));
            memset(dst + (W + pw) * ctot, 0, (size_t)(pw * ctot) * sizeof(uint64_t));
        }
}

/* Mode 1's row pointers: rowp[r] = the top-left tap of output position q0 + r in the
 * padded input Xs (positions of `step` words each; word offset `at` within one), for
 * r < full; rows past the last (r >= rows) repeat it. */
static void tap_rows(const uint64_t **rowp, const uint64_t *Xs, const int64_t *d, pos_t q,
                     int64_t rows, int64_t full, int64_t Hp, int64_t Wp, int64_t step,
                     int64_t at) {
    for (int64_t r = 0; r < full; r++) {
        rowp[r] = Xs + ((q.b * Hp + q.oh * d[D_SH]) * Wp + q.ow * d[D_SW]) * step + at;
        if (r + 1 < rows) pos_next(d, &q);
    }
}

/* The binary convolution of packed words X (B, H, W, G * wpg) (dims above), row blocks of
 * MB output positions shared out over threads.
 *
 * mode 0 (int32 out): each group's im2col built per block. Wr holds each group's weight
 *   rows (cout_g rounded up to RT, K words, extra rows 0), multiplied as the A side against
 *   panels of the block's im2col (the output positions are the columns, so the result is
 *   channel-major like NCHW; a block of NB / 2 positions or fewer, where most of a panel
 *   would be padding, takes the other orientation with Bp); Y (B, G * cout_g, Hout, Wout) =
 *   2 C + bias[n, p], bias int32 (C_out, Hout * Wout).
 * mode 1 (fused threshold, packed out): no im2col. The input is padded once (zero words)
 *   and the tiles read each output position's taps in place (row pointer = the position's
 *   top-left tap, kofs[k] = the offset of tap (i, j)'s word w). Bp holds the panels of
 *   each group's weights (xnor_pack_b of (cout_g, K)), one group after the other; bit n of
 *   output position p is (2 C + bias[p, n] >= 0) XOR bit n of inv[p] (bias int32 (Hout *
 *   Wout, C_out), inv words (Hout * Wout, ceil(C_out / 64))), written into Yp (B, Hout,
 *   Wout, ceil(C_out / 64)), pad bits 0. A threshold "y <= tau" is (2 C + bias - 1 >= 0)
 *   inverted. Bsplit: Bp as split panels (xnor_split_panels), for a path that reads them
 *   (xnor_fused_split); NULL: split here, once per call.
 * 0 ok, -1 isa, -2 memory. */
int xnor_conv2d(const uint64_t *X, const uint64_t *Wr, const uint64_t *Bp, const int64_t *d,
                int mode, const int32_t *bias, int32_t *Y, const uint64_t *inv, uint64_t *Yp,
                int64_t threads, int isa, const uint64_t *Bsplit) {
    kernel_t kn;
    if (!select_kernel(isa, &kn)) return -1;
    const int64_t G = d[D_G], coutg = d[D_COUTG], cout = G * coutg, wpg = d[D_WPG];
    const int64_t P = d[D_HO] * d[D_WO], M = d[D_B] * P, K = d[D_KH] * d[D_KW] * wpg;
    if (M <= 0 || cout <= 0) return 0;
    const int64_t blocks = (M + MB - 1) / MB, wout = (cout + 63) / 64, ctot = G * wpg;
    const int64_t rows_w = (coutg + RT - 1) / RT * RT; /* mode 0: weight rows per group */
    const int64_t npan = panels(coutg), setw = npan * NB * K; /* mode 1: weight panels */
    const int64_t ldc = mode == 0 ? MB : npan * NB;
    const int64_t cwords = mode == 0 ? (rows_w > npan * NB ? rows_w : npan * NB) * MB : MB * ldc;
    const int64_t awords = (mode == 0 ? MB * (K > 0 ? K : 1) : 0) + wout + wout;
    const int64_t pwords = mode == 0 ? (rows_w > MB ? rows_w : MB) : 4 * MB;
    const int64_t Hp = d[D_H] + 2 * d[D_PH], Wp = d[D_W] + 2 * d[D_PW];
    const int padded = mode == 1 && (d[D_PH] > 0 || d[D_PW] > 0);
    const int split = mode == 1 && kn.split != NULL; /* the input and weights as nibbles */
    const int64_t xwords = d[D_B] * Hp * Wp * ctot, sx = split ? 2 : 1;
    const int nt = thread_count(threads, blocks);
    int32_t *cbuf = malloc((size_t)nt * cwords * sizeof(int32_t));
    uint64_t *abuf = malloc((size_t)nt * awords * sizeof(uint64_t));
    const uint64_t **pbuf = malloc((size_t)nt * pwords * sizeof(uint64_t *));
    int64_t *kofs = identity(K);
    uint64_t *Xp = padded ? malloc((size_t)xwords * sizeof(uint64_t)) : NULL;
    uint64_t *Xh = split ? malloc((size_t)(2 * xwords) * sizeof(uint64_t)) : NULL;
    uint64_t *Bh = split && !Bsplit ? malloc((size_t)(2 * G * setw) * sizeof(uint64_t)) : NULL;
    if (!cbuf || !abuf || !pbuf || !kofs || (padded && !Xp) || (split && (!Xh || (!Bsplit && !Bh)))) {
        free(cbuf), free(abuf), free(pbuf), free(kofs), free(Xp), free(Xh), free(Bh);
        return -2;
    }
    if (mode == 1) { /* the taps' offsets from a position's top-left tap in the padded input */
        for (int64_t i = 0, k = 0; i < d[D_KH]; i++)
            for (int64_t j = 0; j < d[D_KW]; j++)
                for (int64_t w = 0; w < wpg; w++) kofs[k++] = (i * Wp + j) * ctot * sx + w * sx;
        if (padded) pad_words(X, d, ctot, Xp);
        if (split) {
            split_words(padded ? Xp : X, xwords, Xh);
            if (!Bsplit) xnor_split_panels(Bp, G * setw, Bh);
        }
    }
    /* mode 1's input, weight panels, tile and words per input word */
    const uint64_t *Xs = split ? Xh : padded ? Xp : X;
    const uint64_t *Bs = !split ? Bp : Bsplit ? Bsplit : Bh;
    const tile_fn ftile = split ? kn.split : kn.tile;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t ib = 0; ib < blocks; ib++) {
        int32_t *cb = cbuf + thread_id() * cwords;
        uint64_t *ab = abuf + thread_id() * awords;
        uint64_t *bits = ab + (mode == 0 ? MB * (K > 0 ? K : 1) : 0);
        const uint64_t **rowp = pbuf + thread_id() * pwords;
        const int64_t m0 = ib * MB, rows = M - m0 < MB ? M - m0 : MB;
        const pos_t q0 = pos_of(d, m0);
        if (mode == 0 && rows <= NB / 2) { /* few positions: weights as the columns */
            const int64_t full = (rows + RT - 1) / RT * RT;
            for (int64_t g = 0; g < G; g++) {
                pos_t q = q0;
                for (int64_t r = 0; r < rows; r++, pos_next(d, &q))
                    im2col_row(X, d, g, &q, ab + r * K, 1);
                memset(ab + rows * K, 0, (size_t)(full - rows) * K * sizeof(uint64_t));
                block_rows(kn.tile, ab, full, kofs, K, Bp + g * setw, npan, cb, npan * NB, rowp);
                for (int64_t r = 0; r < rows; r++) {
                    const int64_t m = m0 + r, b = m / P, p = m % P;
                    for (int64_t n = 0; n < coutg; n++) {
                        const int64_t ng = g * coutg + n;
                        Y[(b * cout + ng) * P + p] = 2 * cb[r * npan * NB + n] + bias[ng * P + p];
                    }
                }
            }
        } else if (mode == 0) {
            const int64_t np = (rows + NB - 1) / NB; /* panels of output positions */
            for (int64_t g = 0; g < G; g++) {
                pos_t q = q0;
                for (int64_t r = 0; r < np * NB; r++) {
                    uint64_t *dst = ab + (r / NB) * K * NB + (r % NB);
                    if (r < rows) {
                        im2col_row(X, d, g, &q, dst, NB);
                        pos_next(d, &q);
                    } else {
                        for (int64_t k = 0; k < K; k++) dst[k * NB] = 0;
                    }
                }
                block_rows(kn.tile, Wr + g * rows_w * K, rows_w, kofs, K, ab, np, cb, ldc, rowp);
                /* Y[b, n, p..] for the runs of positions of one image */
                int64_t r = 0, b = q0.b, p = q0.oh * d[D_WO] + q0.ow;
                while (r < rows) {
                    const int64_t run = rows - r < P - p ? rows - r : P - p;
                    for (int64_t n = 0; n < coutg; n++) {
                        const int64_t ng = g * coutg + n;
                        int32_t *y = Y + (b * cout + ng) * P + p;
                        const int32_t *c = cb + n * ldc + r, *bi = bias + ng * P + p;
                        for (int64_t e = 0; e < run; e++) y[e] = 2 * c[e] + bi[e];
                    }
                    r += run, b++, p = 0;
                }
            }
        } else if (G == 1 && kn.bits != NULL && !split) { /* the threshold in the tile's epilogue */
            const int64_t full = (rows + RT - 1) / RT * RT;
            const int32_t **off = (const int32_t **)(rowp + MB);
            const uint32_t **inv32 = (const uint32_t **)(rowp + 2 * MB);
            uint32_t **out = (uint32_t **)(rowp + 3 * MB);
            uint32_t *spare = (uint32_t *)bits; /* rows past the last write here (npan words) */
            memset(Yp + m0 * wout, 0, (size_t)rows * wout * sizeof(uint64_t));
            tap_rows(rowp, Xs, d, q0, rows, full, Hp, Wp, ctot, 0);
            for (int64_t r = 0; r < full; r++) {
                const int64_t p = (m0 + (r < rows ? r : rows - 1)) % P;
                off[r] = bias + p * cout;
                inv32[r] = (const uint32_t *)(inv + p * wout);
                out[r] = r < rows ? (uint32_t *)(Yp + (m0 + r) * wout) : spare;
            }
            for (int64_t pan = 0; pan < npan; pan++) {
                const int64_t left = coutg - pan * NB;
                const uint32_t live = left >= 32 ? 0xFFFFFFFFu : (1u << left) - 1;
                for (int64_t r = 0; r < full; r += RT)
                    kn.bits(rowp + r, kofs, K, Bs + pan * K * NB, off + r, inv32 + r, out + r,
                            pan, live);
            }
        } else {
            const int64_t full = (rows + RT - 1) / RT * RT;
            memset(Yp + m0 * wout, 0, (size_t)rows * wout * sizeof(uint64_t));
            for (int64_t g = 0; g < G; g++) {
                tap_rows(rowp, Xs, d, q0, rows, full, Hp, Wp, ctot * sx, g * wpg * sx);
                block_tiles(ftile, rowp, full, kofs, K, Bs + g * setw * sx, npan, K * NB * sx,
                            cb, ldc);
                for (int64_t r = 0; r < rows; r++) {
                    const int64_t p = (m0 + r) % P;
                    uint64_t *dst = Yp + (m0 + r) * wout;
                    if (G == 1) {
                        kn.thresh(cb + r * ldc, bias + p * cout, coutg, dst);
                    } else {
                        kn.thresh(cb + r * ldc, bias + p * cout + g * coutg, coutg, bits);
                        or_bits(dst, wout, g * coutg, bits, coutg);
                    }
                }
            }
            for (int64_t r = 0; r < rows; r++) {
                const uint64_t *iv = inv + ((m0 + r) % P) * wout;
                uint64_t *dst = Yp + (m0 + r) * wout;
                for (int64_t w = 0; w < wout; w++) dst[w] ^= iv[w];
            }
        }
    }
    free(cbuf), free(abuf), free(pbuf), free(kofs), free(Xp), free(Xh), free(Bh);
    return 0;
}

/* ------------------------------------------------------------------ pooling on bits */

/* Non-overlapping k x k max-pool of thresholded bits, words (B, H, W, nw) -> out (B, H / k,
 * W / k, nw): a +1 anywhere in the window (OR) where the threshold rises, +1 everywhere
 * (AND) where it falls (down: words (H / k, W / k, nw), bit set = falling); the rows and
 * columns past the last full window are dropped, as by torch's max_pool2d. */
void xnor_pool_bits(const uint64_t *words, int64_t B, int64_t H, int64_t W, int64_t nw,
                    int64_t k, const uint64_t *down, uint64_t *out) {
    const int64_t hp = H / k, wp = W / k;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < hp; i++)
            for (int64_t j = 0; j < wp; j++) {
                const uint64_t *dn = down + (i * wp + j) * nw;
                uint64_t *o = out + ((b * hp + i) * wp + j) * nw;
                for (int64_t w = 0; w < nw; w++) {
                    uint64_t any = 0, all = ~0ull;
                    for (int64_t y = 0; y < k; y++)
                        for (int64_t x = 0; x < k; x++) {
                            const uint64_t v = words[((b * H + i * k + y) * W + j * k + x) * nw + w];
                            any |= v, all &= v;
                        }
                    o[w] = (any & ~dn[w]) | (all & dn[w]);
                }
            }
}

/* ------------------------------------------------------------------ float convolution */

/* The float parts of a deployed model (a float first conv, a float head) in ONE order,
 * whatever the batch and the CPU: for each image, group and output position, the
 * accumulator starts at +0 and takes each tap (kernel row i, column j, then input channel
 * c, the taps outside the image skipped: zero padding) as acc = fmaf(x, w, acc), one
 * rounding per tap; the bias, if any, is added last (one rounding). A linear layer is the
 * 1 x 1 case: its inputs in index order. This is the order of oneDNN's direct
 * convolution on AVX2 / AVX-512 CPUs (so the engine equals batched PyTorch there) and of
 * onnxruntime's GEMM on ±1 inputs; the exports write the same chain.
 *
 * w: (G, KH, KW, C / G, O / G) float32 (the taps of each group, k-major, the output
 * channels contiguous); x: (N, C, H, W); y: (N, O, HO, WO). The accumulators of one
 * position run over the output channels (vectorised: fmaf is one vfmadd on an FMA CPU).
 * No mul + add pair appears anywhere, so -ffp-contract cannot change a result. */
static inline __attribute__((always_inline)) void float_conv_body(
    const float *x, const float *w, const float *bias, float *y, float *acc, int64_t N,
    int64_t C, int64_t H, int64_t W, int64_t O, int64_t G, int64_t KH, int64_t KW,
    int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t HO, int64_t WO) {
    const int64_t cg = C / G, og = O / G, taps = KH * KW * cg;
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t oy = 0; oy < HO; oy++)
                for (int64_t ox = 0; ox < WO; ox++) {
                    for (int64_t o = 0; o < og; o++) acc[o] = 0.0f;
                    for (int64_t i = 0; i < KH; i++) {
                        const int64_t iy = oy * SH - PH + i;
                        if (iy < 0 || iy >= H) continue;
                        for (int64_t j = 0; j < KW; j++) {
                            const int64_t ix = ox * SW - PW + j;
                            if (ix < 0 || ix >= W) continue;
                            const float *xp = x + ((n * C + g * cg) * H + iy) * W + ix;
                            const float *wt = w + (g * taps + (i * KW + j) * cg) * og;
                            for (int64_t c = 0; c < cg; c++, wt += og) {
                                const float v = xp[c * H * W];
                                for (int64_t o = 0; o < og; o++) acc[o] = fmaf(v, wt[o], acc[o]);
                            }
                        }
                    }
                    float *out = y + ((n * O + g * og) * HO + oy) * WO + ox;
                    for (int64_t o = 0; o < og; o++)
                        out[o * HO * WO] = bias ? acc[o] + bias[g * og + o] : acc[o];
                }
}

static void float_conv_portable(const float *x, const float *w, const float *bias, float *y,
                                float *acc, const int64_t *d) {
    float_conv_body(x, w, bias, y, acc, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8],
                    d[9], d[10], d[11], d[12], d[13]);
}

#ifdef XNOR_X86
__attribute__((target("avx2,fma"))) static void float_conv_fma(const float *x, const float *w,
                                                                 const float *bias, float *y,
                                                                 float *acc, const int64_t *d) {
    float_conv_body(x, w, bias, y, acc, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8],
                    d[9], d[10], d[11], d[12], d[13]);
}
#endif

#ifdef XNOR_X86
/* O / G a multiple of 8: blocks of up to 64 output channels whose accumulators stay in 8
   ymm registers across a position's taps; _mm256_fmadd_ps rounds once, as fmaf, and each
   output takes the same taps in the same order, so the bits are float_conv_body's. */
__attribute__((target("avx2,fma"))) static void float_conv_blocked(const float *x,
                                                                     const float *w,
                                                                     const float *bias,
                                                                     float *y, const int64_t *d) {
    const int64_t N = d[0], C = d[1], H = d[2], W = d[3], O = d[4], G = d[5], KH = d[6];
    const int64_t KW = d[7], SH = d[8], SW = d[9], PH = d[10], PW = d[11], HO = d[12];
    const int64_t WO = d[13], cg = C / G, og = O / G, taps = KH * KW * cg;
    float tmp[64];
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t ob = 0; ob < og; ob += 64) {
                const int nv = (int)((og - ob < 64 ? og - ob : 64) / 8);
                for (int64_t oy = 0; oy < HO; oy++)
                    for (int64_t ox = 0; ox < WO; ox++) {
                        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0,
                               a5 = a0, a6 = a0, a7 = a0;
                        for (int64_t i = 0; i < KH; i++) {
                            const int64_t iy = oy * SH - PH + i;
                            if (iy < 0 || iy >= H) continue;
                            for (int64_t j = 0; j < KW; j++) {
                                const int64_t ix = ox * SW - PW + j;
                                if (ix < 0 || ix >= W) continue;
                                const float *xp = x + ((n * C + g * cg) * H + iy) * W + ix;
                                const float *wt = w + (g * taps + (i * KW + j) * cg) * og + ob;
                                for (int64_t c = 0; c < cg; c++, wt += og) {
                                    const __m256 v = _mm256_broadcast_ss(xp + c * H * W);
                                    a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt), a0);
                                    if (nv > 1) a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + 8), a1);
                                    if (nv > 2) a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + 16), a2);
                                    if (nv > 3) a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + 24), a3);
                                    if (nv > 4) a4 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + 32), a4);
                                    if (nv > 5) a5 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + 40), a5);
                                    if (nv > 6) a6 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + 48), a6);
                                    if (nv > 7) a7 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + 56), a7);
                                }
                            }
                        }
                        _mm256_storeu_ps(tmp, a0), _mm256_storeu_ps(tmp + 8, a1);
                        _mm256_storeu_ps(tmp + 16, a2), _mm256_storeu_ps(tmp + 24, a3);
                        _mm256_storeu_ps(tmp + 32, a4), _mm256_storeu_ps(tmp + 40, a5);
                        _mm256_storeu_ps(tmp + 48, a6), _mm256_storeu_ps(tmp + 56, a7);
                        float *out = y + ((n * O + g * og + ob) * HO + oy) * WO + ox;
                        const float *bb = bias ? bias + g * og + ob : NULL;
                        for (int o = 0; o < nv * 8; o++)
                            out[o * HO * WO] = bb ? tmp[o] + bb[o] : tmp[o];
                    }
            }
}
#endif

#ifdef XNOR_X86
/* AVX-512, stride 1 in x and O / G a multiple of 16: the lanes of a zmm are 16
   neighbouring output positions of a row, and 16 output channels are 16 accumulators.
   A tap (kernel row i, column j, input channel c) is one load of 16 input values and
   16 FMAs with the taps' weights broadcast, so the FMAs, not the loads, set the pace;
   the outputs are stored 16 at a time. A lane whose tap falls in the padding, or whose
   position is past the row's end, is masked out of that FMA (mask3: its accumulator is
   kept), which is the skip of float_conv_body. So every output takes its taps in the
   one order with one rounding each: the same bits. */
__attribute__((target("avx512f"))) static void float_conv_avx512(const float *x,
                                                                   const float *w,
                                                                   const float *bias,
                                                                   float *y, const int64_t *d) {
    const int64_t N = d[0], C = d[1], H = d[2], W = d[3], O = d[4], G = d[5], KH = d[6];
    const int64_t KW = d[7], SH = d[8], PH = d[10], PW = d[11], HO = d[12], WO = d[13];
    const int64_t cg = C / G, og = O / G, taps = KH * KW * cg, plane = H * W;
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t oy = 0; oy < HO; oy++)
                for (int64_t ox = 0; ox < WO; ox += 16) {
                    const __mmask16 live = _mm512_cmplt_epi32_mask(
                        lane, _mm512_set1_epi32((int)(WO - ox < 16 ? WO - ox : 16)));
                    for (int64_t ob = 0; ob < og; ob += 16) {
                        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0,
                               a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0,
                               a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
                        for (int64_t i = 0; i < KH; i++) {
                            const int64_t iy = oy * SH - PH + i;
                            if (iy < 0 || iy >= H) continue;
                            for (int64_t j = 0; j < KW; j++) {
                                const int64_t ix = ox - PW + j; /* lane 0's input column */
                                const __m512i col = _mm512_add_epi32(lane, _mm512_set1_epi32((int)ix));
                                const __mmask16 m =
                                    live & _mm512_cmpge_epi32_mask(col, _mm512_setzero_si512()) &
                                    _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32((int)W));
                                if (!m) continue;
                                const float *xp = x + (n * C + g * cg) * plane + iy * W + ix;
                                const float *wt = w + (g * taps + (i * KW + j) * cg) * og + ob;
                                for (int64_t c = 0; c < cg; c++, wt += og, xp += plane) {
                                    const __m512 v = _mm512_maskz_loadu_ps(m, xp);
#define TAP(A, O) A = _mm512_mask3_fmadd_ps(v, _mm512_set1_ps(wt[O]), A, m)
                                    TAP(a0, 0), TAP(a1, 1), TAP(a2, 2), TAP(a3, 3);
                                    TAP(a4, 4), TAP(a5, 5), TAP(a6, 6), TAP(a7, 7);
                                    TAP(a8, 8), TAP(a9, 9), TAP(a10, 10), TAP(a11, 11);
                                    TAP(a12, 12), TAP(a13, 13), TAP(a14, 14), TAP(a15, 15);
#undef TAP
                                }
                            }
                        }
                        float *out = y + ((n * O + g * og + ob) * HO + oy) * WO + ox;
                        const float *bb = bias ? bias + g * og + ob : NULL;
#define OUT(A, O)                                                                         \
    _mm512_mask_storeu_ps(out + (O) * HO * WO, live,                                      \
                          bb ? _mm512_add_ps(A, _mm512_set1_ps(bb[O])) : A)
                        OUT(a0, 0), OUT(a1, 1), OUT(a2, 2), OUT(a3, 3), OUT(a4, 4);
                        OUT(a5, 5), OUT(a6, 6), OUT(a7, 7), OUT(a8, 8), OUT(a9, 9);
                        OUT(a10, 10), OUT(a11, 11), OUT(a12, 12), OUT(a13, 13);
                        OUT(a14, 14), OUT(a15, 15);
#undef OUT
                    }
                }
}
#endif

/* d: N, C, H, W, O, G, KH, KW, SH, SW, PH, PW, HO, WO; isa as the XNOR kernels' (0: the
 * best this CPU has, 1 portable, 2 AVX2, 3 AVX-512). Returns 0, 1 when out of memory, -1
 * when this CPU cannot run `isa`. Every path gives the same bits (fmaf and the vector
 * FMAs are exact: correctly rounded by their definition; one order of taps). */
int xnor_float_conv(const float *x, const float *w, const float *bias, float *y,
                    const int64_t *d, int isa) {
    const int64_t og = d[4] / d[5];
    if (isa == ISA_AUTO) isa = best_isa();
#ifdef XNOR_X86
    const int f = xnor_features();
    if ((isa == ISA_AVX512 && !(f & FEAT_AVX512)) || (isa == ISA_AVX2 && !(f & FEAT_AVX2)))
        return -1;
    const int fma = __builtin_cpu_supports("fma");
    if (isa == ISA_AVX512 && og % 16 == 0 && d[9] == 1) {
        float_conv_avx512(x, w, bias, y, d);
        return 0;
    }
    if (isa >= ISA_AVX2 && fma && og % 8 == 0) {
        float_conv_blocked(x, w, bias, y, d);
        return 0;
    }
#else
    if (isa > ISA_PORTABLE) return -1;
#endif
    float *acc = malloc(sizeof(float) * (size_t)(og > 0 ? og : 1));
    if (!acc) return 1;
#ifdef XNOR_X86
    if (isa >= ISA_AVX2 && fma)
        float_conv_fma(x, w, bias, y, acc, d);
    else
#endif
        float_conv_portable(x, w, bias, y, acc, d);
    free(acc);
    return 0;
}
