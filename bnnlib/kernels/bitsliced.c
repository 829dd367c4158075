/* One image through a packed hidden layer with bit-sliced counters (paper Sections 2.6, 4).
 *
 * At batch 1 a hidden layer is a matrix-vector product: each weight bit is used once, so the
 * work is XOR-popcount over the whole weight matrix. Counting along a weight row (popcount of
 * a row's words, then a horizontal sum per neuron) spends a large share of its instructions
 * on the per-row reductions. Here the counting runs the other way ("vertical"): the weights
 * are stored transposed in blocks of 256 neurons, one 256-bit vector per input i holding
 * input i's weight bit of each of the 256 neurons, and for every input the vector
 *
 *     v_i = W^T[i] XOR (a_i ? all ones : 0)
 *
 * (a 1 where weight and activation differ) is added into 256 counters held bit-sliced: one
 * vector per binary digit. Carry-save adders (Harley-Seal) add 16 inputs into the low digits
 * for about one logic operation per input bit-vector each, and the 32s ripple into the high
 * digits. After all k inputs, digit d of lane j is bit d of h_j = popcount(a XOR w_j).
 *
 * Sign(BN) then needs no per-neuron integer: t = k - 2 h compared as in
 * bnnlib.kernels.threshold_pack is "h < C_j" exclusive-or a per-neuron flip (the caller
 * derives C_j and the flip, bnnlib.kernels.native), and h < C_j for all 256 lanes at once is
 * the borrow of the bit-sliced subtraction h - C. The result is the layer's 256 output bits,
 * packed as the next layer reads them (lane 64q + t is bit t of output word q).
 *
 * Two chains of carry-save adders take alternate groups of 8 inputs so that the processor
 * overlaps their latencies. AVX2 only; without it bnn_native_isa() is 0 and nothing else is
 * defined. Built by bnnlib.kernels.native at -O3 -march=native with the system C compiler.
 */
#include <stdint.h>
#include <string.h>

#ifdef __AVX2__
#include <immintrin.h>

int bnn_native_isa(void) { return 2; }

/* The most binary digits of a counter: k < 2^MAX_DIGITS inputs. */
#define MAX_DIGITS 40

#define CSA(h, l, A, B, C)                                                         \
    do {                                                                           \
        __m256i u_ = _mm256_xor_si256(A, B);                                       \
        h = _mm256_or_si256(_mm256_and_si256(A, B), _mm256_and_si256(u_, C));      \
        l = _mm256_xor_si256(u_, C);                                               \
    } while (0)

/* Input i's bit-vector: its weights XOR its activation bit (mask: 0 or -1). */
static inline __m256i input(const uint64_t *wb, const int32_t *mask, int64_t i) {
    return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wb + 4 * i)),
                            _mm256_set1_epi32(mask[i]));
}

/* Inputs i .. i+7 into the counter (ones, twos, fours); e: the carry of weight 8. */
#define ADD8(ones, twos, fours, e, i)                                              \
    do {                                                                           \
        __m256i tA_, tB_, fA_, fB_;                                                \
        CSA(tA_, ones, ones, input(wb, mask, (i) + 0), input(wb, mask, (i) + 1));  \
        CSA(tB_, ones, ones, input(wb, mask, (i) + 2), input(wb, mask, (i) + 3));  \
        CSA(fA_, twos, twos, tA_, tB_);                                            \
        CSA(tA_, ones, ones, input(wb, mask, (i) + 4), input(wb, mask, (i) + 5));  \
        CSA(tB_, ones, ones, input(wb, mask, (i) + 6), input(wb, mask, (i) + 7));  \
        CSA(fB_, twos, twos, tA_, tB_);                                            \
        CSA(e, fours, fours, fA_, fB_);                                            \
    } while (0)

/* Add the bit-vector c (weight 2^from) into digits from .. digits-1 (carries past the top
 * digit cannot occur: the caller sized the counter for the layer's inputs). */
static inline void ripple(__m256i *digit, int from, int digits, __m256i c) {
    for (int d = from; d < digits; d++) {
        __m256i carry = _mm256_and_si256(digit[d], c);
        digit[d] = _mm256_xor_si256(digit[d], c);
        c = carry;
    }
}

/* One image through one layer.
 *   a      the packed activations: input i is bit i % 64 of word i / 64;
 *   k      the inputs counted (every bit of the packed words, padding included);
 *   wt     blocks x k x 4 words: block b, input i = the weight bits of neurons 256b .. 256b+255;
 *   blocks the blocks of 256 neurons; digits: binary digits of the counters (k < 2^digits);
 *   cbits  blocks x digits x 4 words: the digits of C_j, bit-sliced like the counters;
 *   flip   blocks x 4 words: output bit j is (h_j < C_j) XOR lane j of flip (a padding
 *          lane: C_j = 0 and flip 0, so its bit is 0);
 *   out    the packed output: out_words words (the lanes of neurons beyond the layer's are 0);
 *   mask   scratch, k int32. Returns 0, or -1 if digits is out of range. */
int bnn_bitsliced_layer(const uint64_t *a, int64_t k, const uint64_t *wt, int64_t blocks,
                        int64_t digits, const uint64_t *cbits, const uint64_t *flip,
                        uint64_t *out, int64_t out_words, int32_t *mask) {
    if (digits < 6 || digits > MAX_DIGITS) return -1;
    for (int64_t w = 0; 64 * w < k; w++) {
        uint64_t x = a[w];
        int64_t n = k - 64 * w < 64 ? k - 64 * w : 64;
        for (int64_t t = 0; t < n; t++) mask[64 * w + t] = -(int32_t)((x >> t) & 1);
    }
    const __m256i z = _mm256_setzero_si256();
    for (int64_t b = 0; b < blocks; b++) {
        const uint64_t *wb = wt + b * k * 4;
        __m256i oA = z, tA = z, fA = z, oB = z, tB = z, fB = z, eights = z, s16 = z;
        __m256i eA, eB, x16, y16, x32;
        __m256i digit[MAX_DIGITS];
        for (int d = 0; d < digits; d++) digit[d] = z;
        int64_t i = 0;
        for (; i + 32 <= k; i += 32) { /* two chains: inputs i..i+7, i+16.. in A, the rest B */
            ADD8(oA, tA, fA, eA, i);
            ADD8(oB, tB, fB, eB, i + 8);
            CSA(x16, eights, eights, eA, eB);
            ADD8(oA, tA, fA, eA, i + 16);
            ADD8(oB, tB, fB, eB, i + 24);
            CSA(y16, eights, eights, eA, eB);
            CSA(x32, s16, s16, x16, y16);
            ripple(digit, 5, (int)digits, x32);
        }
        for (; i + 16 <= k; i += 16) {
            ADD8(oA, tA, fA, eA, i);
            ADD8(oB, tB, fB, eB, i + 8);
            CSA(x16, eights, eights, eA, eB);
            CSA(x32, s16, s16, x16, z);
            ripple(digit, 5, (int)digits, x32);
        }
        /* The two chains' low digits added: bit 0, 1, 2 and the carry into weight 8. */
        __m256i c1, c2, c3;
        digit[4] = s16;
        digit[3] = eights;
        CSA(c1, digit[0], oA, oB, z);
        CSA(c2, digit[1], tA, tB, c1);
        CSA(c3, digit[2], fA, fB, c2);
        ripple(digit, 3, (int)digits, c3);
        for (; i < k; i++) ripple(digit, 0, (int)digits, input(wb, mask, i));
        /* borrow of h - C, digit by digit from the lowest: lane j set where h_j < C_j */
        const uint64_t *cb = cbits + b * digits * 4;
        __m256i borrow = z;
        for (int d = 0; d < digits; d++) {
            __m256i h = digit[d], c = _mm256_loadu_si256((const __m256i *)(cb + 4 * d));
            borrow = _mm256_or_si256(_mm256_andnot_si256(h, c),
                                     _mm256_andnot_si256(_mm256_xor_si256(h, c), borrow));
        }
        /* output bits: (h < C) XOR flip */
        __m256i bits = _mm256_xor_si256(borrow, _mm256_loadu_si256((const __m256i *)(flip + 4 * b)));
        uint64_t words[4];
        _mm256_storeu_si256((__m256i *)words, bits);
        int64_t n = out_words - 4 * b < 4 ? out_words - 4 * b : 4;
        memcpy(out + 4 * b, words, 8 * (size_t)n);
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

#else
int bnn_native_isa(void) { return 0; }
#endif
