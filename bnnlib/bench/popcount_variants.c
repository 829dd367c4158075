/* Hand-written XOR-popcount loops: is the compute bound of bnnlib.bench.bounds the machine's?
 *
 * bnnlib.bench.bounds.popcount_bound measures the binary multiply-accumulates per cycle of a
 * numba loop (8 weight rows x 256 words against one activation row, L1-resident). That is
 * what LLVM makes of popcount(x ^ w); this program times the same work written by hand, so
 * that the bound is the best of both: the popcount instruction, three AVX2 table popcounts
 * (Mula's vpshufb nibble lookup with one vpsadbw per vector, the byte counts summed over 8
 * vectors before one vpsadbw, and a Harley-Seal carry-save adder over 16 vectors) and, where
 * the compiler targets AVX-512 VPOPCNTDQ, vpopcntq on 512-bit vectors. The bit-sliced kernel
 * that runs a lone image's hidden layers (bnnlib/kernels/bitsliced.c, copied beside this file
 * by the build) counts the other way, LANES neurons at once (512 with AVX-512, else 256): its
 * variant, named for its width, times it on one block (LANES neurons x 1024 inputs: 32 or 64
 * kB, L1- or L2-resident) and checks every neuron's count.
 *
 * Built by bnnlib.bench.bounds with the system C compiler at -O3 -march=native. Prints one
 * line per variant: "<name> <binary MACs per second of thread CPU time, best of 5>", or
 * "<name> WRONG" when its sum differs from a scalar reference.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define W 256 /* words per row: 2 kB */
#define R 8   /* weight rows */

static uint64_t a[W] __attribute__((aligned(64)));
static uint64_t b[R][W] __attribute__((aligned(64)));

static double thread_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The reference: popcount instruction, 8 accumulators. */
__attribute__((noinline)) static int64_t scalar_popcnt(int reps) {
    int64_t total = 0;
    for (int r = 0; r < reps; r++) {
        int64_t h[R] = {0};
        for (int i = 0; i < W; i++) {
            uint64_t x = a[i];
            for (int j = 0; j < R; j++) h[j] += __builtin_popcountll(x ^ b[j][i]);
        }
        for (int j = 0; j < R; j++) total += h[j];
    }
    return total;
}

#include "bitsliced.c" /* bnn_bitsliced_layer, its LANES and VWORDS, the adder CSA256 */

#ifdef __AVX2__
static inline __m256i byte_counts(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_and_si256(v, low);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

static inline int64_t sum4(__m256i v) {
    int64_t t[4];
    _mm256_storeu_si256((__m256i *)t, v);
    return t[0] + t[1] + t[2] + t[3];
}

/* Words i .. i+3 of the activation row XOR those of weight row j. */
static inline __m256i row_vec(int j, int i) {
    return _mm256_xor_si256(_mm256_load_si256((const __m256i *)&a[i]),
                            _mm256_load_si256((const __m256i *)&b[j][i]));
}

static inline __m256i popcount_sad(__m256i v) {
    return _mm256_sad_epu8(byte_counts(v), _mm256_setzero_si256());
}

/* Table popcount, one vpsadbw per vector (what LLVM emits for a loop of unknown length). */
__attribute__((noinline)) static int64_t avx2_lookup(int reps) {
    int64_t total = 0;
    const __m256i zero = _mm256_setzero_si256();
    for (int r = 0; r < reps; r++) {
        __m256i acc[R];
        for (int j = 0; j < R; j++) acc[j] = zero;
        for (int i = 0; i < W; i += 4)
            for (int j = 0; j < R; j++) acc[j] = _mm256_add_epi64(acc[j], popcount_sad(row_vec(j, i)));
        for (int j = 0; j < R; j++) total += sum4(acc[j]);
    }
    return total;
}

/* Table popcount, byte counts summed over 8 vectors (at most 64 a byte) per vpsadbw. */
__attribute__((noinline)) static int64_t avx2_lookup_deferred(int reps) {
    int64_t total = 0;
    const __m256i zero = _mm256_setzero_si256();
    for (int r = 0; r < reps; r++) {
        __m256i acc[R];
        for (int j = 0; j < R; j++) acc[j] = zero;
        for (int i0 = 0; i0 < W; i0 += 32) {
            __m256i bytes[R];
            for (int j = 0; j < R; j++) bytes[j] = zero;
            for (int i = i0; i < i0 + 32; i += 4)
                for (int j = 0; j < R; j++) bytes[j] = _mm256_add_epi8(bytes[j], byte_counts(row_vec(j, i)));
            for (int j = 0; j < R; j++) acc[j] = _mm256_add_epi64(acc[j], _mm256_sad_epu8(bytes[j], zero));
        }
        for (int j = 0; j < R; j++) total += sum4(acc[j]);
    }
    return total;
}

/* Harley-Seal: carry-save adders over blocks of 16 vectors, one table popcount per block. */
__attribute__((noinline)) static int64_t avx2_harley_seal(int reps) {
    int64_t total = 0;
    for (int r = 0; r < reps; r++) {
        for (int j = 0; j < R; j++) {
            __m256i sum = _mm256_setzero_si256(), ones = sum, twos = sum, fours = sum, eights = sum;
            __m256i sixteens, twosA, twosB, foursA, foursB, eightsA, eightsB;
            for (int i = 0; i < W; i += 64) {
                CSA256(twosA, ones, ones, row_vec(j, i + 0), row_vec(j, i + 4));
                CSA256(twosB, ones, ones, row_vec(j, i + 8), row_vec(j, i + 12));
                CSA256(foursA, twos, twos, twosA, twosB);
                CSA256(twosA, ones, ones, row_vec(j, i + 16), row_vec(j, i + 20));
                CSA256(twosB, ones, ones, row_vec(j, i + 24), row_vec(j, i + 28));
                CSA256(foursB, twos, twos, twosA, twosB);
                CSA256(eightsA, fours, fours, foursA, foursB);
                CSA256(twosA, ones, ones, row_vec(j, i + 32), row_vec(j, i + 36));
                CSA256(twosB, ones, ones, row_vec(j, i + 40), row_vec(j, i + 44));
                CSA256(foursA, twos, twos, twosA, twosB);
                CSA256(twosA, ones, ones, row_vec(j, i + 48), row_vec(j, i + 52));
                CSA256(twosB, ones, ones, row_vec(j, i + 56), row_vec(j, i + 60));
                CSA256(foursB, twos, twos, twosA, twosB);
                CSA256(eightsB, fours, fours, foursA, foursB);
                CSA256(sixteens, eights, eights, eightsA, eightsB);
                sum = _mm256_add_epi64(sum, popcount_sad(sixteens));
            }
            sum = _mm256_slli_epi64(sum, 4);
            sum = _mm256_add_epi64(sum, _mm256_slli_epi64(popcount_sad(eights), 3));
            sum = _mm256_add_epi64(sum, _mm256_slli_epi64(popcount_sad(fours), 2));
            sum = _mm256_add_epi64(sum, _mm256_slli_epi64(popcount_sad(twos), 1));
            sum = _mm256_add_epi64(sum, popcount_sad(ones));
            total += sum4(sum);
        }
    }
    return total;
}

#define BK 1024 /* inputs of the bit-sliced block */
static uint64_t bw[BK][VWORDS] __attribute__((aligned(64))); /* LANES neurons' bits per input */
static uint64_t bx[BK / 64];                                 /* the activations */
static uint64_t bc[2][13][VWORDS] __attribute__((aligned(64))); /* C = h and C = h + 1 */
static uint64_t bflip[VWORDS], bout[VWORDS];
static int32_t bmask[BK];

/* h of each of the LANES neurons, by the popcount instruction on the transposed bits. */
static void bitsliced_reference(int64_t h[LANES]) {
    for (int j = 0; j < LANES; j++) {
        h[j] = 0;
        for (int i = 0; i < BK; i++) h[j] += ((bw[i][j / 64] >> (j % 64)) & 1) ^ ((bx[i / 64] >> (i % 64)) & 1);
    }
}

/* Checked once: (h < C) is 0 everywhere with C = h and 1 everywhere with C = h + 1, so every
 * neuron's count is exact; then reps calls, returning a sum of the outputs. */
__attribute__((noinline)) static int64_t bitsliced(int reps) {
    int64_t total = 0;
    for (int r = 0; r < reps; r++) {
        bnn_bitsliced_layer(bx, BK, &bw[0][0], 1, 13, &bc[r & 1][0][0], bflip, bout, VWORDS, bmask);
        total += (int64_t)(bout[0] & 1);
    }
    return total;
}

static int bitsliced_setup(uint64_t *seed) {
    int64_t h[LANES];
    for (int i = 0; i < BK; i++)
        for (int q = 0; q < VWORDS; q++) bw[i][q] = splitmix(seed);
    for (int w = 0; w < BK / 64; w++) bx[w] = splitmix(seed);
    bitsliced_reference(h);
    for (int c = 0; c < 2; c++)
        for (int d = 0; d < 13; d++)
            for (int q = 0; q < VWORDS; q++) {
                uint64_t word = 0;
                for (int t = 0; t < 64; t++) word |= (uint64_t)(((h[64 * q + t] + c) >> d) & 1) << t;
                bc[c][d][q] = word;
            }
    for (int c = 0; c < 2; c++) {
        bnn_bitsliced_layer(bx, BK, &bw[0][0], 1, 13, &bc[c][0][0], bflip, bout, VWORDS, bmask);
        for (int q = 0; q < VWORDS; q++)
            if (bout[q] != (c ? ~0ull : 0ull)) return 0;
    }
    return 1;
}
#endif

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
/* vpopcntq on 512-bit vectors, 8 accumulators. */
__attribute__((noinline)) static int64_t avx512_vpopcntq(int reps) {
    int64_t total = 0;
    for (int r = 0; r < reps; r++) {
        __m512i acc[R];
        for (int j = 0; j < R; j++) acc[j] = _mm512_setzero_si512();
        for (int i = 0; i < W; i += 8) {
            __m512i x = _mm512_load_si512((const void *)&a[i]);
            for (int j = 0; j < R; j++) {
                __m512i v = _mm512_xor_si512(x, _mm512_load_si512((const void *)&b[j][i]));
                acc[j] = _mm512_add_epi64(acc[j], _mm512_popcnt_epi64(v));
            }
        }
        for (int j = 0; j < R; j++) total += _mm512_reduce_add_epi64(acc[j]);
    }
    return total;
}
#endif

typedef int64_t (*variant)(int);

/* f(1) checked against want, then the best of 5 timings of f(reps): MACs per second. */
static void run(const char *name, variant f, int64_t want, int reps, double macs_per_rep) {
    if (f(1) != want) {
        printf("%s WRONG\n", name);
        return;
    }
    double best = 1e30;
    for (int t = 0; t < 5; t++) {
        double t0 = thread_seconds();
        volatile int64_t sink = f(reps);
        (void)sink;
        double dt = thread_seconds() - t0;
        if (dt < best) best = dt;
    }
    printf("%s %.6e\n", name, macs_per_rep * (double)reps / best);
}

int main(void) {
    uint64_t seed = 1;
    for (int i = 0; i < W; i++) {
        a[i] = splitmix(&seed);
        for (int j = 0; j < R; j++) b[j][i] = splitmix(&seed);
    }
    const int reps = 20000; /* 262 M binary MACs a pass */
    int64_t want = scalar_popcnt(1);
    const double rows = 64.0 * W * R;
    run("scalar_popcnt", scalar_popcnt, want, reps, rows);
#ifdef __AVX2__
    run("avx2_lookup", avx2_lookup, want, reps, rows);
    run("avx2_lookup_deferred", avx2_lookup_deferred, want, reps, rows);
    run("avx2_harley_seal", avx2_harley_seal, want, reps, rows);
    const char *sliced = LANES == 512 ? "avx512_bitsliced" : "avx2_bitsliced";
    if (bitsliced_setup(&seed)) /* every count checked; its first call's bits are all 0 */
        run(sliced, bitsliced, 0, 2000, (double)LANES * BK); /* 262 M MACs a pass per 256 lanes */
    else
        printf("%s WRONG\n", sliced);
#endif
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
    run("avx512_vpopcntq", avx512_vpopcntq, want, reps, rows);
#endif
    return 0;
}
