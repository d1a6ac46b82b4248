/* The binsense C runtime: the layer functions a generated model.c calls.

   binsense.export.c copies the chunks a model needs (each starts at a line "//@name";
   which kinds need which chunks: _NEEDS in c.py) into model.c, after model.h's
   includes (<stdint.h>, <stddef.h>, <math.h>) and the configuration macros. This file is
   the source of those chunks; tests compile it whole with -Wall -Werror. Plain C99, no
   heap, no libm beyond fmaf. */

//@base
/* y = x * a + b rounded once (a fused multiply-add, C99's fmaf: exact; one vfma.f32 on
   a Cortex-M4F, vfmadd on x86 with -mfma). Define BSN_FMA to your core's intrinsic if
   fmaf is slow there. All float arithmetic below is single precision. */
#ifndef BSN_FMA
#define BSN_FMA(x, a, b) fmaf((x), (a), (b))
#endif

static void bsn_clear(uint32_t *p, size_t n) {
    size_t i;
    for (i = 0; i < n; ++i) p[i] = 0;
}

static float bsn_affine(float x, float a, float b, int fused) {
    float t;
    if (fused) return BSN_FMA(x, a, b);
    t = x * a;
    return t + b;
}

/* Where a layer writes bit (c, y, x) of its output, a dense bit stream of uint32 words:
   per pixel along all channels, bit (y * w + x) * c_all + c (flat = 0, a conv reads it),
   or in C, H, W order, bit (c * h + y) * w + x (flat = 1). perm8 / perm16: channel
   shuffles (uint8_t up to 256 channels), or NULL. */
typedef struct { int flat, h, w, c; const uint8_t *perm8; const uint16_t *perm16; } bsn_layout;

static void bsn_put(const bsn_layout *L, uint32_t *out, int c, int y, int x) {
    size_t i;
    if (L->perm8) c = L->perm8[c];
    else if (L->perm16) c = L->perm16[c];
    if (L->flat)
        i = ((size_t)c * (size_t)L->h + (size_t)y) * (size_t)L->w + (size_t)x;
    else
        i = ((size_t)y * (size_t)L->w + (size_t)x) * (size_t)L->c + (size_t)c;
    out[i >> 5] |= (uint32_t)1 << (i & 31);
}

//@bit
static int bsn_bit(const uint32_t *p, size_t i) {
    return (int)((p[i >> 5] >> (i & 31)) & 1u);
}

//@match
/* ---- popcount: portable SWAR (Hacker's Delight 5-1), or your own BSN_POPCOUNT32 ---- */
#ifndef BSN_POPCOUNT32
#if defined(BINSENSE_BUILTIN_POPCOUNT) && (defined(__GNUC__) || defined(__clang__))
#define BSN_POPCOUNT32(x) ((int32_t)__builtin_popcountl((unsigned long)(x)))
#else
static int32_t bsn_popcount32(uint32_t x) {
    x = x - ((x >> 1) & UINT32_C(0x55555555));
    x = (x & UINT32_C(0x33333333)) + ((x >> 2) & UINT32_C(0x33333333));
    x = (x + (x >> 4)) & UINT32_C(0x0F0F0F0F);
    return (int32_t)((uint32_t)(x * UINT32_C(0x01010101)) >> 24);
}
#define BSN_POPCOUNT32(x) bsn_popcount32(x)
#endif
#endif

/* n (1..32) bits of the stream p from bit pos in the low bits (the bits above them are
   the stream's next ones or 0: the caller masks); reads no word beyond the one holding
   bit pos + n - 1 */
static uint32_t bsn_get(const uint32_t *p, size_t pos, int n) {
    size_t i = pos >> 5;
    int s = (int)(pos & 31);
    uint32_t v = p[i] >> s;
    if (s + n > 32) v |= p[i + 1] << (32 - s);
    return v;
}

/* how many of the n bits of stream a from bit pa equal those of b from bit pb:
   the popcount of their XNOR. Both at word boundaries (channels in multiples of 32):
   whole words; else two words shifted together per 32 bits */
static int32_t bsn_match(const uint32_t *a, size_t pa, const uint32_t *b, size_t pb,
                         int32_t n) {
    int32_t pop = 0;
    uint32_t m = 0xFFFFFFFFu;
    if (((pa | pb) & 31) == 0) {
        const uint32_t *x = a + (pa >> 5), *y = b + (pb >> 5);
        for (; n >= 32; n -= 32) pop += BSN_POPCOUNT32((uint32_t)~(*x++ ^ *y++));
        if (n > 0) pop += BSN_POPCOUNT32((uint32_t)~(*x ^ *y) & (((uint32_t)1 << n) - 1));
        return pop;
    }
    while (n > 0) {
        int k = n < 32 ? (int)n : 32;
        if (k < 32) m = ((uint32_t)1 << k) - 1;
        pop += BSN_POPCOUNT32((uint32_t)~(bsn_get(a, pa, k) ^ bsn_get(b, pb, k)) & m);
        pa += 32;
        pb += 32;
        n -= 32;
    }
    return pop;
}

//@thr_type
/* integer thresholds of a layer, one per channel and position class (tm, tn): int16 or
   int32 (t16 or t32), and the direction bits (up: 1 -> y >= tau, 0 -> y <= tau) */
typedef struct { const int16_t *t16; const int32_t *t32; const uint32_t *up; int tm, tn; } bsn_thr;

//@threshold
static int bsn_threshold(const bsn_thr *T, int32_t y, int idx) {
    int32_t tau = T->t16 ? (int32_t)T->t16[idx] : T->t32[idx];
    return ((T->up[idx >> 5] >> (idx & 31)) & 1u) ? y >= tau : y <= tau;
}

//@planes
/* ---- a binary encoder: ADC code -> planes, by its code table (a bit stream) ---- */
typedef struct { int c, h, w, k; const uint32_t *table; bsn_layout out; } bsn_planes;

static void bsn_run_planes(const bsn_planes *P, const uint8_t *img, uint32_t *out) {
    int y, x, c, k;
    for (y = 0; y < P->h; ++y)
        for (x = 0; x < P->w; ++x)
            for (c = 0; c < P->c; ++c) {
                int code = img[((size_t)c * P->h + y) * P->w + x];
                size_t row = ((size_t)c * 256 + (size_t)code) * (size_t)P->k;
                for (k = 0; k < P->k; ++k)
                    if (bsn_bit(P->table, row + (size_t)k))
                        bsn_put(&P->out, out, c * P->k + k, y, x);
            }
}

//@geom
/* ---- geometry of a conv (+ max-pool) ---- */
typedef struct {
    int in_h, in_w, cout, groups, cin_g, kh, kw, sh, sw, ph, pw;
    int conv_h, conv_w, pool_k, pool_s, pool_p, out_h, out_w;
} bsn_geom;

//@fconv
/* ---- the float first layer: encoder table, conv, [max-pool], norm, sign ---- */
typedef struct {
    bsn_geom g;
    const float *enc;   /* [C_in][256]: the encoder's output for each pixel value */
    const float *w;     /* [C_out][C_in / groups][k_h][k_w], or NULL: */
    const uint32_t *wbits;  /* ±1 weights as bits (1: +1.0f), same order, or NULL */
    const float *bias;  /* [C_out] or NULL */
    const float *a, *b; int fused;
    const float *shift; int sm, sn;  /* DeSign (C_out, m, n) or NULL */
    bsn_layout out;
} bsn_fconv;

/* one output of the conv, in the engine's order (binsense.deploy.floatops): kernel row,
   column, then channel, acc = fma(x, w, acc) from +0, padded taps skipped, bias last */
static float bsn_fconv_at(const bsn_fconv *L, const uint8_t *img, int o, int y, int x) {
    const bsn_geom *G = &L->g;
    int c0 = (o / (G->cout / G->groups)) * G->cin_g, ci, i, j;
    float acc = 0.0f;
    for (i = 0; i < G->kh; ++i) {
        int iy = y * G->sh - G->ph + i;
        if (iy < 0 || iy >= G->in_h) continue;
        for (j = 0; j < G->kw; ++j) {
            int ix = x * G->sw - G->pw + j;
            if (ix < 0 || ix >= G->in_w) continue;
            for (ci = 0; ci < G->cin_g; ++ci) {
                int c = c0 + ci;
                size_t wi = (((size_t)o * G->cin_g + ci) * G->kh + i) * G->kw + j;
                float w = L->w ? L->w[wi] : ((L->wbits[wi >> 5] >> (wi & 31)) & 1u) ? 1.0f : -1.0f;
                float v = L->enc[(size_t)c * 256 + img[((size_t)c * G->in_h + iy) * G->in_w + ix]];
                acc = BSN_FMA(v, w, acc);
            }
        }
    }
    if (L->bias) acc = acc + L->bias[o];
    return acc;
}

static void bsn_run_fconv(const bsn_fconv *L, const uint8_t *img, uint32_t *out) {
    const bsn_geom *G = &L->g;
    int o, y, x, a, b;
    for (o = 0; o < G->cout; ++o)
        for (y = 0; y < G->out_h; ++y)
            for (x = 0; x < G->out_w; ++x) {
                float v;
                if (G->pool_k == 0) {
                    v = bsn_fconv_at(L, img, o, y, x);
                } else {
                    int first = 1;
                    v = 0.0f;
                    for (a = 0; a < G->pool_k; ++a)
                        for (b = 0; b < G->pool_k; ++b) {
                            int cy = y * G->pool_s - G->pool_p + a;
                            int cx = x * G->pool_s - G->pool_p + b;
                            float u;
                            if (cy < 0 || cy >= G->conv_h || cx < 0 || cx >= G->conv_w) continue;
                            u = bsn_fconv_at(L, img, o, cy, cx);
                            if (first || u > v) v = u;
                            first = 0;
                        }
                }
                v = bsn_affine(v, L->a[o], L->b[o], L->fused);
                if (L->shift) v = v - L->shift[((size_t)o * L->sm + y % L->sm) * L->sn + x % L->sn];
                if (v >= 0.0f) bsn_put(&L->out, out, o, y, x);
            }
}

//@bconv_at
/* ---- a binary conv on packed bits, zero padding exactly as PyTorch: skipped taps ---- */
typedef struct {
    bsn_geom g;
    const uint32_t *w;  /* bit stream [C_out][k_h][k_w][cin_g]: C_out * fan-in bits */
    bsn_thr t;          /* thresholds (C_out, tm, tn); NULL in a head */
    bsn_layout out;
} bsn_bconv;

/* y = 2 popcount(xnor) - K_valid over the taps inside the image. A tap's cin_g bits are
   contiguous in the input (pixel-major) and in the weights; without groups, so are a
   kernel row's in-bounds taps: one run each */
static int32_t bsn_bconv_at(const bsn_bconv *L, const uint32_t *in, int o, int y, int x) {
    const bsn_geom *G = &L->g;
    int grp = o / (G->cout / G->groups), i, j, cin = G->groups * G->cin_g;
    int x0 = x * G->sw - G->pw, j0 = x0 < 0 ? -x0 : 0;
    int j1 = G->in_w - x0 < G->kw ? G->in_w - x0 : G->kw;
    int32_t pop = 0, bits = 0;
    size_t wo = (size_t)o * (size_t)G->kh * (size_t)G->kw * (size_t)G->cin_g;
    for (i = 0; i < G->kh; ++i) {
        int iy = y * G->sh - G->ph + i;
        size_t a, b;
        if (iy < 0 || iy >= G->in_h || j1 <= j0) continue;
        a = ((size_t)iy * (size_t)G->in_w + (size_t)(x0 + j0)) * (size_t)cin
            + (size_t)grp * (size_t)G->cin_g;
        b = wo + (size_t)(i * G->kw + j0) * (size_t)G->cin_g;
        if (G->groups == 1) {
            int32_t n = (int32_t)(j1 - j0) * G->cin_g;
            pop += bsn_match(in, a, L->w, b, n);
            bits += n;
        } else {
            for (j = j0; j < j1; ++j) {
                pop += bsn_match(in, a, L->w, b, G->cin_g);
                bits += G->cin_g;
                a += (size_t)cin;
                b += (size_t)G->cin_g;
            }
        }
    }
    return 2 * pop - bits;
}

//@bconv_run
static int32_t bsn_bconv_pooled(const bsn_bconv *L, const uint32_t *in, int o, int y, int x) {
    const bsn_geom *G = &L->g;
    int a, b, first = 1;
    int32_t v = 0;
    if (G->pool_k == 0) return bsn_bconv_at(L, in, o, y, x);
    for (a = 0; a < G->pool_k; ++a)
        for (b = 0; b < G->pool_k; ++b) {
            int cy = y * G->pool_s - G->pool_p + a, cx = x * G->pool_s - G->pool_p + b;
            int32_t u;
            if (cy < 0 || cy >= G->conv_h || cx < 0 || cx >= G->conv_w) continue;
            u = bsn_bconv_at(L, in, o, cy, cx);
            if (first || u > v) v = u;
            first = 0;
        }
    return v;
}

static void bsn_run_bconv(const bsn_bconv *L, const uint32_t *in, uint32_t *out) {
    const bsn_geom *G = &L->g;
    int o, y, x;
    for (o = 0; o < G->cout; ++o)
        for (y = 0; y < G->out_h; ++y)
            for (x = 0; x < G->out_w; ++x) {
                int32_t v = bsn_bconv_pooled(L, in, o, y, x);
                int idx = (o * L->t.tm + y % L->t.tm) * L->t.tn + x % L->t.tn;
                if (bsn_threshold(&L->t, v, idx)) bsn_put(&L->out, out, o, y, x);
            }
}

//@blin_at
/* ---- a binary fully connected layer on flat bits ---- */
typedef struct {
    int n_in, n_out;
    const uint32_t *w;  /* bit stream [n_out][n_in] */
    bsn_thr t;          /* thresholds (n_out); NULL in a head */
    bsn_layout out;
} bsn_blin;

static int32_t bsn_blin_at(const bsn_blin *L, const uint32_t *in, int o) {
    return 2 * bsn_match(in, 0, L->w, (size_t)o * (size_t)L->n_in, L->n_in) - L->n_in;
}

//@blin_run
static void bsn_run_blin(const bsn_blin *L, const uint32_t *in, uint32_t *out) {
    int o;
    for (o = 0; o < L->n_out; ++o)
        if (bsn_threshold(&L->t, bsn_blin_at(L, in, o), o)) bsn_put(&L->out, out, o, 0, 0);
}

//@head_lin
static void bsn_head_lin(const bsn_blin *L, const float *a, const float *b, int fused,
                         const uint32_t *in, float *logits) {
    int o;
    for (o = 0; o < L->n_out; ++o)
        logits[o] = bsn_affine((float)bsn_blin_at(L, in, o), a[o], b[o], fused);
}

//@head_conv
/* ---- a binary 1x1 conv head, global pool (sum or mean), norm ---- */
static void bsn_head_conv(const bsn_bconv *L, int mean, const float *a, const float *b,
                          int fused, const uint32_t *in, float *logits) {
    const bsn_geom *G = &L->g;
    int o, y, x;
    for (o = 0; o < G->cout; ++o) {
        int32_t sum = 0;
        float v;
        for (y = 0; y < G->conv_h; ++y)
            for (x = 0; x < G->conv_w; ++x) sum += bsn_bconv_at(L, in, o, y, x);
        v = (float)sum;
        if (mean) v = v / (float)(G->conv_h * G->conv_w);
        logits[o] = bsn_affine(v, a[o], b[o], fused);
    }
}

//@head_float
/* ---- a float linear head on ±1 bits ---- */
static void bsn_head_float(int n_in, int n_out, const float *w, const float *bias,
                           const float *a, const float *b, int fused, const uint32_t *in,
                           float *logits) {
    int o, i;
    for (o = 0; o < n_out; ++o) {
        float acc = 0.0f;
        const float *row = w + (size_t)o * n_in;
        for (i = 0; i < n_in; ++i) acc = bsn_bit(in, (size_t)i) ? acc + row[i] : acc - row[i];
        if (bias) acc = acc + bias[o];
        logits[o] = a ? bsn_affine(acc, a[o], b[o], fused) : acc;
    }
}
