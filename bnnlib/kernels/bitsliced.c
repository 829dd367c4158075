/* One image through a packed MLP with bit-sliced counters (paper Sections 1.6, 2.6 and 4).
 *
 * At batch 1 a hidden layer is a matrix-vector product: each weight bit is used once, so the
 * work is XOR-popcount over the whole weight matrix. Counting along a weight row (popcount of
 * a row's words, then a horizontal sum per neuron) spends a large share of its instructions
 * on the per-row reductions. Here the counting runs the other way ("vertical"): the weights
 * are stored transposed in blocks of LANES neurons (one vector: 512 with AVX-512, else 256
 * with AVX2), one vector per input i holding input i's weight bit of each of the block's
 * neurons, and for every input the vector
 *
 *     v_i = W^T[i] XOR (a_i ? all ones : 0)
 *
 * (a 1 where weight and activation differ) is added into LANES counters held bit-sliced: one
 * vector per binary digit. Carry-save adders (Harley-Seal) add 64 inputs into the low digits
 * for about one adder per input bit-vector (two vpternlogq with AVX-512, five logic
 * instructions with AVX2), and the 64s ripple into the high digits. After all k inputs,
 * digit d of lane j is bit d of h_j = popcount(a XOR w_j).
 *
 * Sign(BN) then needs no per-neuron integer: t = k - 2 h compared as in
 * bnnlib.kernels.threshold_pack is "h < C_j" exclusive-or a per-neuron flip (the caller
 * derives C_j and the flip, bnnlib.kernels.native), and h < C_j for all lanes at once is the
 * borrow of the bit-sliced subtraction h - C. The result is the layer's output bits, packed
 * as the next layer reads them (lane 64q + t of block b is bit t of output word VWORDS b + q).
 *
 * Two chains of carry-save adders take alternate groups of 8 inputs so that the processor
 * overlaps their latencies. The first layer (8-bit pixels) is counted the same way, bit plane
 * by bit plane (bnn_first_layer), the last layer by the popcount instruction, and the class is
 * the argmax of the last batch norm rounded as numpy rounds it (bnn_affine_argmax): one call
 * per image (bnn_mlp_image_class). Needs AVX2 at least: without it bnn_native_lanes() is 0
 * and only the argmax is defined. Built by bnnlib.kernels.native at -O3 -march=native
 * -ffp-contract=off with the system C compiler (-mno-avx512f added for the 256-lane build).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The first j of the largest a[j] (s[j] - mu[j]) + beta[j] in float64, each operation rounded
 * as numpy rounds it (built with -ffp-contract=off: no fused multiply-add), the first NaN
 * where there is one: numpy.argmax(a * (s - mu) + beta) for one image. */
int64_t bnn_affine_argmax(const int64_t *s, int64_t n, const double *a, const double *mu,
                          const double *beta) {
    int64_t best = 0;
    double top = a[0] * ((double)s[0] - mu[0]) + beta[0];
    if (isnan(top)) return 0;
    for (int64_t j = 1; j < n; j++) {
        double v = a[j] * ((double)s[j] - mu[j]) + beta[j];
        if (isnan(v)) return j;
        if (v > top) {
            best = j;
            top = v;
        }
    }
    return best;
}

#ifdef __AVX2__
#include <immintrin.h>

/* A carry-save adder on 256-bit vectors: (h, l) = the two digits of A + B + C. */
#define CSA256(h, l, A, B, C)                                                      \
    do {                                                                           \
        __m256i a_ = (A), b_ = (B), c_ = (C), u_ = _mm256_xor_si256(a_, b_);       \
        h = _mm256_or_si256(_mm256_and_si256(a_, b_), _mm256_and_si256(u_, c_));   \
        l = _mm256_xor_si256(u_, c_);                                              \
    } while (0)

/* The kernel's vector: 512 neurons per AVX-512 vector, where the compiler targets it (one
 * vpternlogq makes each digit of a carry-save adder: 2 instructions where AVX2 takes 5), else
 * 256 per AVX2 vector. VWORDS 64-bit words per vector; lane 64q + t is bit t of word q. */
#if defined(__AVX512F__)
typedef __m512i vec;
#define VWORDS 8
static inline vec v_zero(void) { return _mm512_setzero_si512(); }
static inline vec v_ones(void) { return _mm512_set1_epi64(-1); }
static inline vec v_load(const uint64_t *p) { return _mm512_loadu_si512((const void *)p); }
static inline void v_store(uint64_t *p, vec v) { _mm512_storeu_si512((void *)p, v); }
static inline vec v_xor(vec a, vec b) { return _mm512_xor_si512(a, b); }
static inline vec v_and(vec a, vec b) { return _mm512_and_si512(a, b); }
static inline vec v_or(vec a, vec b) { return _mm512_or_si512(a, b); }
static inline vec v_andnot(vec a, vec b) { return _mm512_andnot_si512(a, b); } /* ~a & b */
static inline vec v_splat32(int32_t x) { return _mm512_set1_epi32(x); }
#define CSA(h, l, A, B, C)                                                         \
    do {                                                                           \
        vec a_ = (A), b_ = (B), c_ = (C);                                          \
        h = _mm512_ternarylogic_epi64(a_, b_, c_, 0xE8); /* majority */            \
        l = _mm512_ternarylogic_epi64(a_, b_, c_, 0x96); /* a ^ b ^ c */           \
    } while (0)
#else
typedef __m256i vec;
#define VWORDS 4
static inline vec v_zero(void) { return _mm256_setzero_si256(); }
static inline vec v_ones(void) { return _mm256_set1_epi64x(-1); }
static inline vec v_load(const uint64_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline void v_store(uint64_t *p, vec v) { _mm256_storeu_si256((__m256i *)p, v); }
static inline vec v_xor(vec a, vec b) { return _mm256_xor_si256(a, b); }
static inline vec v_and(vec a, vec b) { return _mm256_and_si256(a, b); }
static inline vec v_or(vec a, vec b) { return _mm256_or_si256(a, b); }
static inline vec v_andnot(vec a, vec b) { return _mm256_andnot_si256(a, b); } /* ~a & b */
static inline vec v_splat32(int32_t x) { return _mm256_set1_epi32(x); }
#define CSA(h, l, A, B, C) CSA256(h, l, A, B, C)
#endif
#define LANES (64 * VWORDS)

/* Neurons per block of the layout, which the caller builds to match. */
int bnn_native_lanes(void) { return LANES; }

/* The most binary digits of a counter: k < 2^MAX_DIGITS inputs. */
#define MAX_DIGITS 40

/* Adds 8 input bit-vectors IN(i) .. IN(i+7) into the counter (ones, twos, fours); e: the
 * carry of weight 8. */
#define ADD8(IN, ones, twos, fours, e, i)                                          \
    do {                                                                           \
        vec tA_, tB_, fA_, fB_;                                                    \
        CSA(tA_, ones, ones, IN((i) + 0), IN((i) + 1));                            \
        CSA(tB_, ones, ones, IN((i) + 2), IN((i) + 3));                            \
        CSA(fA_, twos, twos, tA_, tB_);                                            \
        CSA(tA_, ones, ones, IN((i) + 4), IN((i) + 5));                            \
        CSA(tB_, ones, ones, IN((i) + 6), IN((i) + 7));                            \
        CSA(fB_, twos, twos, tA_, tB_);                                            \
        CSA(e, fours, fours, fA_, fB_);                                            \
    } while (0)

/* Adds 32 inputs IN(i) .. IN(i+31): the two chains' 8s meet in `eights`, their 16s in
 * `s16`; x32: the carry of weight 32. */
#define ADD32(IN, i, x32)                                                          \
    do {                                                                           \
        vec eA_, eB_, x16_, y16_;                                                  \
        ADD8(IN, oA, tA, fA, eA_, i);                                              \
        ADD8(IN, oB, tB, fB, eB_, (i) + 8);                                        \
        CSA(x16_, eights, eights, eA_, eB_);                                       \
        ADD8(IN, oA, tA, fA, eA_, (i) + 16);                                       \
        ADD8(IN, oB, tB, fB, eB_, (i) + 24);                                       \
        CSA(y16_, eights, eights, eA_, eB_);                                       \
        CSA(x32, s16, s16, x16_, y16_);                                            \
    } while (0)

/* One digit of a bit-sliced addition: a + b + *carry, its carry out into *carry. */
static inline vec full_add(vec a, vec b, vec *carry) {
    vec high, sum;
    CSA(high, sum, a, b, *carry);
    *carry = high;
    return sum;
}

/* Add the bit-vector c (weight 2^from) into digits from .. digits-1 (carries past the top
 * digit cannot occur: the caller sized the counter for the count). */
static inline void ripple(vec *digit, int from, int digits, vec c) {
    for (int d = from; d < digits; d++) {
        vec carry = v_and(digit[d], c);
        digit[d] = v_xor(digit[d], c);
        c = carry;
    }
}

/* digit[0 .. digits) = the bit-sliced sum of the m bit-vectors IN(0) .. IN(m-1) (digits >= 7,
 * m < 2^digits). Two chains of carry-save adders take alternate groups of 8 inputs, so that
 * the processor overlaps their latencies; their 8s, 16s and 32s meet in one adder each, and
 * only the 64s ripple into the high digits (once per 64 inputs). */
#define COUNT(IN)                                                                  \
    do {                                                                           \
        const vec z = v_zero();                                                    \
        vec oA = z, tA = z, fA = z, oB = z, tB = z, fB = z, eights = z, s16 = z;   \
        vec s32 = z, x32, y32, x64, c1, c2, c3;                                    \
        for (int d = 0; d < digits; d++) digit[d] = z;                             \
        int64_t i = 0;                                                             \
        for (; i + 64 <= m; i += 64) {                                             \
            ADD32(IN, i, x32);                                                     \
            ADD32(IN, i + 32, y32);                                                \
            CSA(x64, s32, s32, x32, y32);                                          \
            ripple(digit, 6, digits, x64);                                         \
        }                                                                          \
        for (; i + 16 <= m; i += 16) {                                             \
            vec eA_, eB_, x16_;                                                    \
            ADD8(IN, oA, tA, fA, eA_, i);                                          \
            ADD8(IN, oB, tB, fB, eB_, i + 8);                                      \
            CSA(x16_, eights, eights, eA_, eB_);                                   \
            CSA(x32, s16, s16, x16_, z);                                           \
            CSA(x64, s32, s32, x32, z);                                            \
            ripple(digit, 6, digits, x64);                                         \
        }                                                                          \
        digit[5] = s32; /* the two chains' low digits added, with the 8s to 32s */ \
        digit[4] = s16;                                                            \
        digit[3] = eights;                                                         \
        CSA(c1, digit[0], oA, oB, z);                                              \
        CSA(c2, digit[1], tA, tB, c1);                                             \
        CSA(c3, digit[2], fA, fB, c2);                                             \
        ripple(digit, 3, digits, c3);                                              \
        for (; i < m; i++) ripple(digit, 0, digits, IN(i));                        \
    } while (0)

/* A hidden layer's inputs: input i's weights XOR its activation bit (mask[i]: 0 or -1). */
#define XOR_INPUT(i) v_xor(v_load(wb + VWORDS * (i)), v_splat32(mask[i]))

static void count_differing(const uint64_t *wb, const int32_t *mask, int64_t m, vec *digit,
                            int digits) {
    COUNT(XOR_INPUT);
}

/* The first layer's inputs: the weights of the pixels listed in idx. */
#define LISTED_INPUT(i) v_load(wb + VWORDS * (int64_t)idx[i])

static void count_listed(const uint64_t *wb, const int32_t *idx, int64_t m, vec *digit,
                         int digits) {
    COUNT(LISTED_INPUT);
}

/* Lanes where the bit-sliced h < c (c: digits x VWORDS words): the borrow of h - c. */
static inline vec less_than(const vec *h, const uint64_t *c, int digits) {
    vec borrow = v_zero();
    for (int d = 0; d < digits; d++) {
        vec cd = v_load(c + VWORDS * d);
        borrow = v_or(v_andnot(h[d], cd), v_andnot(v_xor(h[d], cd), borrow));
    }
    return borrow;
}

/* Store the LANES output bits of block b (only the words below out_words). */
static inline void store_block(uint64_t *out, int64_t b, int64_t out_words, vec bits) {
    uint64_t words[VWORDS];
    v_store(words, bits);
    int64_t n = out_words - VWORDS * b < VWORDS ? out_words - VWORDS * b : VWORDS;
    memcpy(out + VWORDS * b, words, 8 * (size_t)n);
}

/* One image through one layer.
 *   a      the packed activations: input i is bit i % 64 of word i / 64;
 *   k      the inputs counted (every bit of the packed words, padding included);
 *   wt     blocks x k x VWORDS words: block b, input i = the weight bits of neurons LANES b ..
 *          LANES b + LANES - 1;
 *   blocks the blocks of LANES neurons; digits: binary digits of the counters (k < 2^digits);
 *   cbits  blocks x digits x VWORDS words: the digits of C_j, bit-sliced like the counters;
 *   flip   blocks x VWORDS words: output bit j is (h_j < C_j) XOR lane j of flip (a padding
 *          lane: C_j = 0 and flip 0, so its bit is 0);
 *   out    the packed output: out_words words (the lanes of neurons beyond the layer's are 0);
 *   mask   scratch, k int32. Returns 0, or -1 if digits is out of range. */
int bnn_bitsliced_layer(const uint64_t *a, int64_t k, const uint64_t *wt, int64_t blocks,
                        int64_t digits, const uint64_t *cbits, const uint64_t *flip,
                        uint64_t *out, int64_t out_words, int32_t *mask) {
    if (digits < 7 || digits > MAX_DIGITS || k >= (int64_t)1 << digits) return -1;
    for (int64_t w = 0; 64 * w < k; w++) {
        uint64_t x = a[w];
        int64_t n = k - 64 * w < 64 ? k - 64 * w : 64;
        for (int64_t t = 0; t < n; t++) mask[64 * w + t] = -(int32_t)((x >> t) & 1);
    }
    vec h[MAX_DIGITS];
    for (int64_t b = 0; b < blocks; b++) {
        count_differing(wt + b * k * VWORDS, mask, k, h, (int)digits);
        vec f = v_load(flip + VWORDS * b);
        store_block(out, b, out_words,
                    v_xor(less_than(h, cbits + b * digits * VWORDS, (int)digits), f));
    }
    return 0;
}

/* One image through the first layer (8-bit pixels) by bit planes, counted bit-sliced.
 *
 * With x_i = sum_n 2^n x_i^n and b_ij the weight bits (w = 2b - 1), P_j = sum_n 2^n
 * #{i : x_i^n = 1, b_ij = 1} and W_b . x = 2 P_j - sum(x): each plane n adds the weight
 * vectors of the pixels whose bit n is set (only those: MNIST's zeros cost nothing), counted
 * as above, into P at digit n. The compare of the numba path, t = 2 (W_b . x) - 255 sum_i w_ij
 * against the threshold, is the sign of Z_j = 4 P_j + K_j - 2 sum(x) in two's complement, with
 * K_j = -(threshold_j + 255 wsum_j) (minus 1 more for direction -1, whose bit is Z_j < 0, i.e.
 * t <= threshold); direction +1's bit is Z_j >= 0.
 *   x       k0 pixels; wt0: blocks x (k0 + 1) x VWORDS words: pixel i's weight bits of LANES
 *           neurons, then a zero row (the lists are padded with it to whole groups of 16);
 *   qdigits digits of one plane's count (k0 + 16 < 2^qdigits, >= 7);
 *   zdigits digits of Z (two's complement; the caller clipped K so that Z fits);
 *   kbits   blocks x zdigits x VWORDS words: K, bit-sliced; flip: blocks x VWORDS words, 1
 *           where the bit is Z >= 0 (padding lanes: K = -1, flip 1, so their bit is 0);
 *   lists   scratch, 8 (k0 + 16) int32. */
int bnn_first_layer(const uint8_t *x, int64_t k0, const uint64_t *wt0, int64_t blocks,
                    int64_t qdigits, int64_t zdigits, const uint64_t *kbits,
                    const uint64_t *flip, uint64_t *out, int64_t out_words, int32_t *lists) {
    if (qdigits < 7 || qdigits > MAX_DIGITS || k0 + 16 >= (int64_t)1 << qdigits) return -1;
    if (zdigits < 3 || zdigits > 62) return -1;
    int64_t count[8] = {0}, sumx = 0;
    const int64_t stride = k0 + 16;
    for (int64_t i = 0; i < k0; i++) {
        unsigned v = x[i];
        if (!v) continue; /* a background pixel (in long runs: a well-predicted branch) */
        sumx += v;
        for (int n = 0; n < 8; n++) { /* no branch on the bits: written, kept if set */
            lists[n * stride + count[n]] = (int32_t)i;
            count[n] += (v >> n) & 1;
        }
    }
    for (int n = 0; n < 8; n++) /* to a multiple of 16 with the zero row k0: no slow tail */
        while (count[n] % 16) lists[n * stride + count[n]++] = (int32_t)k0;
    const vec z = v_zero(), all = v_ones();
    const int64_t e = -2 * sumx; /* its two's complement digits, broadcast */
    vec q[MAX_DIGITS], p[64], t[64];
    for (int64_t b = 0; b < blocks; b++) {
        const uint64_t *wb = wt0 + b * (k0 + 1) * VWORDS;
        for (int d = 0; d < zdigits; d++) p[d] = z;
        for (int n = 0; n < 8; n++) { /* P += 2^n Q_n, Q_n: plane n's count */
            if (!count[n]) continue;
            count_listed(wb, lists + n * stride, count[n], q, (int)qdigits);
            vec carry = z;
            for (int d = n; d < zdigits; d++)
                p[d] = full_add(p[d], d - n < qdigits ? q[d - n] : z, &carry);
        }
        const uint64_t *kb = kbits + b * zdigits * VWORDS;
        vec carry = z;
        for (int d = 0; d < zdigits; d++) /* t = K + e */
            t[d] = full_add(v_load(kb + VWORDS * d), (e >> d) & 1 ? all : z, &carry);
        carry = z;
        for (int d = 2; d < zdigits; d++) /* t += 4 P (digits 0 and 1 of 4 P are 0) */
            t[d] = full_add(t[d], p[d - 2], &carry);
        vec f = v_load(flip + VWORDS * b);
        store_block(out, b, out_words, v_xor(t[zdigits - 1], f)); /* sign ^ flip */
    }
    return 0;
}

/* The last layer's integer pre-activations of one image: s[j] = k - 2 popcount(a XOR w_j),
 * w: n rows of `words` words. */
static void last_layer(const uint64_t *a, const uint64_t *w, int64_t n, int64_t words,
                       int64_t k, int64_t *s) {
    for (int64_t j = 0; j < n; j++) {
        int64_t h = 0;
        for (int64_t u = 0; u < words; u++) h += __builtin_popcountll(a[u] ^ w[j * words + u]);
        s[j] = k - 2 * h;
    }
}

/* One image through the hidden layers and the last layer, in one call from Python. plan:
 * per hidden layer 9 integers, the arguments of bnn_bitsliced_layer but mask (addresses as
 * integers: a, k, wt, blocks, digits, cbits, flip, out, out_words), then 5 for the last
 * layer (a, w, n, words, k). Returns 0, or the 1-based index of a layer that refused. */
int bnn_hidden_and_last(const int64_t *plan, int64_t layers, int32_t *mask, int64_t *s) {
    for (int64_t l = 0; l < layers; l++) {
        const int64_t *p = plan + 9 * l;
        if (bnn_bitsliced_layer((const uint64_t *)p[0], p[1], (const uint64_t *)p[2], p[3],
                                p[4], (const uint64_t *)p[5], (const uint64_t *)p[6],
                                (uint64_t *)p[7], p[8], mask) != 0)
            return (int)l + 1;
    }
    const int64_t *p = plan + 9 * layers;
    last_layer((const uint64_t *)p[0], (const uint64_t *)p[1], p[2], p[3], p[4], s);
    return 0;
}

/* The first layer of m images, image i's k0 pixels at x + k0 i and its packed output at
 * out + stride i (first: as in bnn_mlp_image; its out is not used). Returns 0, or -1 if the
 * first layer refused. */
int bnn_first_layer_images(const uint8_t *x, int64_t m, const int64_t *first, int32_t *lists,
                           uint64_t *out, int64_t stride) {
    for (int64_t i = 0; i < m; i++)
        if (bnn_first_layer(x + first[0] * i, first[0], (const uint64_t *)first[1], first[2],
                            first[3], first[4], (const uint64_t *)first[5],
                            (const uint64_t *)first[6], out + stride * i, first[8], lists) != 0)
            return -1;
    return 0;
}

/* One image through the whole MLP: the first layer (first: the arguments of bnn_first_layer
 * but x and lists, addresses as integers: k0, wt0, blocks, qdigits, zdigits, kbits, flip,
 * out, out_words), then bnn_hidden_and_last. Returns 0, -1 if the first layer refused, or
 * the 1-based index of a hidden layer that refused. */
int bnn_mlp_image(const uint8_t *x, const int64_t *first, const int64_t *plan, int64_t layers,
                  int32_t *lists, int32_t *mask, int64_t *s) {
    if (bnn_first_layer(x, first[0], (const uint64_t *)first[1], first[2], first[3], first[4],
                        (const uint64_t *)first[5], (const uint64_t *)first[6],
                        (uint64_t *)first[7], first[8], lists) != 0)
        return -1;
    return bnn_hidden_and_last(plan, layers, mask, s);
}

/* bnn_mlp_image, then the class of the image. One argument, so that a call from Python
 * converts one integer: args holds, as integers, bnn_mlp_image's x, first, plan, layers,
 * lists, mask and s, then affine (a, mu, beta of the last layer's batch norm, classes doubles
 * each, one after the other). Returns the class (>= 0), or -1 - the layer that refused (0:
 * the first layer, l: hidden layer l). */
int64_t bnn_mlp_image_class(const int64_t *args) {
    const int64_t *plan = (const int64_t *)args[2];
    const int64_t layers = args[3];
    int64_t *s = (int64_t *)args[6];
    const double *affine = (const double *)args[7];
    int refused = bnn_mlp_image((const uint8_t *)args[0], (const int64_t *)args[1], plan, layers,
                                (int32_t *)args[4], (int32_t *)args[5], s);
    if (refused) return -1 - (refused > 0 ? refused : 0);
    int64_t n = plan[9 * layers + 2];
    return bnn_affine_argmax(s, n, affine, affine + n, affine + 2 * n);
}

#else
int bnn_native_lanes(void) { return 0; }
#endif
