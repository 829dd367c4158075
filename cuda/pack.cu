// Bit packing on the GPU (Courbariaux et al. 2016, Section 4: 32 binary values per word).
//
// Bit e % B of word e / B holds Sign(x_e), i.e. 1 where x_e >= 0 (+1) and 0 where x_e < 0
// (-1): LSB-first, the layout of bnnlib.kernels.pack. Bits beyond k are 0, so products of
// two packed operands stay exact. On ±1 input this equals bnnlib.kernels.pack.
//
//   pack_rows32 / pack_rows64   x (R, k) float -> (R, ceil(k / B)) words, B = 32 / 64.
//       One warp per word: lane l reads x[e0 + l] (coalesced) and __ballot_sync puts lane
//       l's bit at bit l, which is LSB-first order. Launch: block (32, 8), grid
//       (ceil(W / 8), min(R, 65535)); rows beyond the grid are done in a loop.
//   pack_cols32 / pack_cols64   x (K, N) float -> (N, ceil(K / B)) words: the columns of a
//       (K, N) matrix packed along K (the paper's B operand), written as rows. One thread
//       per (column, word); consecutive threads read consecutive columns (coalesced).
//       Launch: block 256, grid (ceil(N / 256), min(W, 65535)).
//   threshold_pack64   acc (M, N) int32 -> (M, ceil(N / 64)) 64-bit words of the next
//       layer's input. Batch norm + Sign folds into an integer threshold per neuron j
//       (paper pitfall list: T = mu - beta sigma / gamma): bit = acc >= thr[j] where
//       dir[j] > 0 (gamma > 0), bit = acc <= thr[j] where dir[j] < 0 (gamma < 0, the
//       comparison flips). Launch as pack_rows64 with W = ceil(N / 64).

typedef unsigned long long bnn_u64;

#define BNN_FULL_MASK 0xffffffffu

// All 32 lanes of a warp reach every __ballot_sync: the loops below are warp-uniform and
// out-of-range lanes vote 0 instead of returning early.

extern "C" __global__ void pack_rows32(const float* __restrict__ x, unsigned* __restrict__ out,
                                       int R, int k, int W)
{
    const int lane = threadIdx.x;
    const int w = blockIdx.x * blockDim.y + threadIdx.y;
    for (int r = blockIdx.y; r < R; r += gridDim.y) {
        const int e = w * 32 + lane;
        const bool bit = (w < W && e < k) ? (x[(size_t)r * k + e] >= 0.0f) : false;
        const unsigned word = __ballot_sync(BNN_FULL_MASK, bit);
        if (lane == 0 && w < W)
            out[(size_t)r * W + w] = word;
    }
}

extern "C" __global__ void pack_rows64(const float* __restrict__ x, bnn_u64* __restrict__ out,
                                       int R, int k, int W)
{
    const int lane = threadIdx.x;
    const int w = blockIdx.x * blockDim.y + threadIdx.y;
    for (int r = blockIdx.y; r < R; r += gridDim.y) {
        const int e = w * 64 + lane;
        const bool lo = (w < W && e < k) ? (x[(size_t)r * k + e] >= 0.0f) : false;
        const bool hi = (w < W && e + 32 < k) ? (x[(size_t)r * k + e + 32] >= 0.0f) : false;
        const unsigned wlo = __ballot_sync(BNN_FULL_MASK, lo);
        const unsigned whi = __ballot_sync(BNN_FULL_MASK, hi);
        if (lane == 0 && w < W)
            out[(size_t)r * W + w] = (bnn_u64)wlo | ((bnn_u64)whi << 32);
    }
}

extern "C" __global__ void pack_cols32(const float* __restrict__ x, unsigned* __restrict__ out,
                                       int K, int N, int W)
{
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    for (int w = blockIdx.y; w < W; w += gridDim.y) {
        unsigned word = 0u;
        for (int b = 0; b < 32; ++b) {
            const int e = w * 32 + b;
            if (e < K && x[(size_t)e * N + n] >= 0.0f)
                word |= 1u << b;
        }
        out[(size_t)n * W + w] = word;
    }
}

extern "C" __global__ void pack_cols64(const float* __restrict__ x, bnn_u64* __restrict__ out,
                                       int K, int N, int W)
{
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    for (int w = blockIdx.y; w < W; w += gridDim.y) {
        bnn_u64 word = 0ull;
        for (int b = 0; b < 64; ++b) {
            const int e = w * 64 + b;
            if (e < K && x[(size_t)e * N + n] >= 0.0f)
                word |= 1ull << b;
        }
        out[(size_t)n * W + w] = word;
    }
}

__device__ __forceinline__ bool bnn_fire(int acc, int thr, int dir)
{
    // Sign(0) = +1: equality gives bit 1 in both directions.
    return dir >= 0 ? acc >= thr : acc <= thr;
}

extern "C" __global__ void threshold_pack64(const int* __restrict__ acc,
                                            const int* __restrict__ thr,
                                            const int* __restrict__ dir,
                                            bnn_u64* __restrict__ out, int M, int N, int W)
{
    const int lane = threadIdx.x;
    const int w = blockIdx.x * blockDim.y + threadIdx.y;
    for (int r = blockIdx.y; r < M; r += gridDim.y) {
        const int j = w * 64 + lane;
        const bool lo = (w < W && j < N) && bnn_fire(acc[(size_t)r * N + j], thr[j], dir[j]);
        const bool hi = (w < W && j + 32 < N)
                        && bnn_fire(acc[(size_t)r * N + j + 32], thr[j + 32], dir[j + 32]);
        const unsigned wlo = __ballot_sync(BNN_FULL_MASK, lo);
        const unsigned whi = __ballot_sync(BNN_FULL_MASK, hi);
        if (lane == 0 && w < W)
            out[(size_t)r * W + w] = (bnn_u64)wlo | ((bnn_u64)whi << 32);
    }
}
