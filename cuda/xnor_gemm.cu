// XNOR-popcount matrix products (Courbariaux et al. 2016, Section 4).
//
// For rows a, b of k values in {-1, +1} packed into bits (bit 1 = +1, LSB-first, the bits
// beyond k set to 0 in both operands):   a . b = k - 2 * popcount(a XOR b).
// Every kernel computes C (M, N) int32 = A_pm1 @ B_pm1^T from A packed (M, W) and B packed
// (N, W): both operands are packed along k, B is stored as its rows (the columns of the
// product), so the inner loops read both operands word by word.
//
//   xnor_gemm        the paper's kernel: the baseline kernel's 16 x 16 shared-memory
//                    tiling with 32-bit words, XOR and __popc instead of multiply-add.
//   xnor_gemm_fast   our popcount kernel: 64-bit words, a 64 x 64 output tile per block
//                    of 256 threads, each thread a 4 x 4 register tile (8 shared-memory
//                    loads feed 16 XOR + __popcll).
//   xnor_gemm_tc     our tensor-core kernel (sm_80 and newer): the 1-bit warp MMA
//                    mma.sync.m16n8k256 .b1 with .and.popc. Hopper keeps AND-popc but not
//                    XOR-popc in hardware, so the XOR count comes from
//                    popcount(a XOR b) = popcount(a) + popcount(b) - 2 popcount(a AND b):
//                    a . b = k - 2 (popc_a + popc_b) + 4 popcount(a AND b), with the row
//                    popcounts from popcount_rows64.
//   popcount_rows64  out[r] = popcount of row r of a (R, W) 64-bit matrix.

typedef unsigned long long bnn_u64;

// ---------------------------------------------------------------------------------------
// The paper's kernel. Launch: block (16, 16), grid (ceil(N / 16), ceil(M / 16)).
// A (M, W) and B (N, W) are 32-bit words, W = ceil(k / 32).
#define BNN_TILE 16

extern "C" __global__ void xnor_gemm(const unsigned* __restrict__ A, const unsigned* __restrict__ B,
                                     int* __restrict__ C, int M, int N, int W, int k)
{
    __shared__ unsigned As[BNN_TILE][BNN_TILE];
    // Bs[e][n]: word e of row n of the B tile, i.e. the baseline's Bs[e][tx]. The row is
    // read coalesced and stored transposed; the extra column keeps that store free of
    // shared-memory bank conflicts.
    __shared__ unsigned Bs[BNN_TILE][BNN_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * BNN_TILE + ty;
    const int col = blockIdx.x * BNN_TILE + tx;
    const int brow = blockIdx.x * BNN_TILE + ty;  // the B row this thread loads
    int acc = 0;
    for (int t = 0; t < W; t += BNN_TILE) {
        As[ty][tx] = (row < M && t + tx < W) ? A[(size_t)row * W + t + tx] : 0u;
        Bs[tx][ty] = (brow < N && t + tx < W) ? B[(size_t)brow * W + t + tx] : 0u;
        __syncthreads();
#pragma unroll
        for (int e = 0; e < BNN_TILE; ++e)
            acc += __popc(As[ty][e] ^ Bs[e][tx]);
        __syncthreads();
    }
    if (row < M && col < N)
        C[(size_t)row * N + col] = k - 2 * acc;
}

// ---------------------------------------------------------------------------------------
// Register-tiled popcount kernel. Launch: block (16, 16), grid (ceil(N / 64), ceil(M / 64)).
// A (M, W) and B (N, W) are 64-bit words, W = ceil(k / 64). Thread (tx, ty) owns rows
// ty + 16 r and columns tx + 16 c (r, c = 0..3) of the block's 64 x 64 tile.
#define FAST_BM 64
#define FAST_BN 64
#define FAST_BK 16  // 64-bit words of k per shared-memory stage

extern "C" __global__ void xnor_gemm_fast(const bnn_u64* __restrict__ A,
                                          const bnn_u64* __restrict__ B, int* __restrict__ C,
                                          int M, int N, int W, int k)
{
    // Word-major tiles: As[w][i] is word w of tile row i. In the inner loop a warp reads
    // 2 distinct As words (broadcast) and 16 consecutive Bs words. +1 spreads the stores.
    __shared__ bnn_u64 As[FAST_BK][FAST_BM + 1];
    __shared__ bnn_u64 Bs[FAST_BK][FAST_BN + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * 16 + tx;
    const int i0 = blockIdx.y * FAST_BM, j0 = blockIdx.x * FAST_BN;
    int acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c)
            acc[r][c] = 0;

    for (int t = 0; t < W; t += FAST_BK) {
        // 64 rows x 16 words per operand, 4 words per thread; 16 consecutive threads read
        // the 128 contiguous bytes of one row (coalesced).
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int idx = tid + l * 256;
            const int r = idx >> 4, w = idx & 15;
            const int gw = t + w;
            As[w][r] = (i0 + r < M && gw < W) ? A[(size_t)(i0 + r) * W + gw] : 0ull;
            Bs[w][r] = (j0 + r < N && gw < W) ? B[(size_t)(j0 + r) * W + gw] : 0ull;
        }
        __syncthreads();
#pragma unroll 4
        for (int w = 0; w < FAST_BK; ++w) {
            bnn_u64 a[4], b[4];
#pragma unroll
            for (int r = 0; r < 4; ++r)
                a[r] = As[w][ty + 16 * r];
#pragma unroll
            for (int c = 0; c < 4; ++c)
                b[c] = Bs[w][tx + 16 * c];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < 4; ++c)
                    acc[r][c] += __popcll(a[r] ^ b[c]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int i = i0 + ty + 16 * r;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int j = j0 + tx + 16 * c;
            if (i < M && j < N)
                C[(size_t)i * N + j] = k - 2 * acc[r][c];
        }
    }
}

// ---------------------------------------------------------------------------------------
// Row popcounts for the tensor-core kernel. Launch: 1-D, one thread per row.
extern "C" __global__ void popcount_rows64(const bnn_u64* __restrict__ A, int* __restrict__ out,
                                           int R, int W)
{
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= R)
        return;
    int s = 0;
    for (int w = 0; w < W; ++w)
        s += __popcll(A[(size_t)r * W + w]);
    out[r] = s;
}

// ---------------------------------------------------------------------------------------
// Tensor-core kernel. Launch: block 128 threads (4 warps), grid (ceil(N / 64), ceil(M / 64)).
// A (M, W), B (N, W) 64-bit words; popc_a (M,), popc_b (N,) from popcount_rows64.
//
// One m16n8k256 MMA: a warp multiplies a 16 x 256-bit tile of A by a 256-bit x 8 tile
// of B. Fragments (PTX ISA, "mma.m16n8k256" for .b1), with g = lane / 4, q = lane % 4:
//   A: a0 = row g, bits [32 q, 32 q + 32);  a1 = row g + 8, same bits;
//      a2 = row g, bits [128 + 32 q, ...);  a3 = row g + 8, same bits
//   B: b0 = column g, bits [32 q, 32 q + 32);  b1 = column g, bits [128 + 32 q, ...)
//   C: c0, c1 = row g, columns 2 q, 2 q + 1;  c2, c3 = row g + 8, columns 2 q, 2 q + 1
// In 32-bit words of a 256-bit chunk: a0, a1, b0 hold word q; a2, a3, b1 hold word 4 + q.
// A 64-bit word is two little-endian 32-bit words (bits 0-31 first), matching the
// LSB-first packing. The 4 warps form a 2 x 2 grid of 32 x 32 warp tiles (2 x 4 MMAs).
#define TC_BM 64
#define TC_BN 64
#define TC_BKW 8  // 64-bit words per stage: 512 bits, two k256 steps
#define TC_LD 20  // 32-bit row stride in shared memory: 16 words + 4 so fragment loads
                  // of 8 rows x 4 words hit 32 distinct banks

__device__ __forceinline__ void bnn_mma_b1_and_popc(int c[4], const unsigned a[4],
                                                    const unsigned b[2])
{
#if defined(BNN_HOST_EMULATION)
    bnn_emulate_mma_m16n8k256_and_popc(c, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    // No 1-bit MMA before sm_80: bnnlib.kernels.cuda launches xnor_gemm_fast there instead.
    __trap();
#endif
}

extern "C" __global__ void xnor_gemm_tc(const bnn_u64* __restrict__ A, const bnn_u64* __restrict__ B,
                                        const int* __restrict__ popc_a,
                                        const int* __restrict__ popc_b, int* __restrict__ C,
                                        int M, int N, int W, int k)
{
    __shared__ __align__(16) unsigned As[TC_BM * TC_LD];
    __shared__ __align__(16) unsigned Bs[TC_BN * TC_LD];
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, q = lane & 3;
    const int wm = warp >> 1, wn = warp & 1;
    const int i0 = blockIdx.y * TC_BM, j0 = blockIdx.x * TC_BN;
    int acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                acc[mi][ni][e] = 0;

    for (int t = 0; t < W; t += TC_BKW) {
        // 64 rows x 8 words per operand, 4 per thread; 8 consecutive threads read the 64
        // contiguous bytes of one row. Stored as 64-bit words at row stride TC_LD / 2.
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int idx = tid + l * 128;
            const int r = idx >> 3, w = idx & 7;
            const int gw = t + w;
            const bnn_u64 va = (i0 + r < M && gw < W) ? A[(size_t)(i0 + r) * W + gw] : 0ull;
            const bnn_u64 vb = (j0 + r < N && gw < W) ? B[(size_t)(j0 + r) * W + gw] : 0ull;
            reinterpret_cast<bnn_u64*>(As)[r * (TC_LD / 2) + w] = va;
            reinterpret_cast<bnn_u64*>(Bs)[r * (TC_LD / 2) + w] = vb;
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            const int kb = ks * 8;  // first 32-bit word of this 256-bit chunk
            unsigned af[2][4], bf[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r = wm * 32 + mi * 16 + g;
                af[mi][0] = As[r * TC_LD + kb + q];
                af[mi][1] = As[(r + 8) * TC_LD + kb + q];
                af[mi][2] = As[r * TC_LD + kb + 4 + q];
                af[mi][3] = As[(r + 8) * TC_LD + kb + 4 + q];
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int n = wn * 32 + ni * 8 + g;
                bf[ni][0] = Bs[n * TC_LD + kb + q];
                bf[ni][1] = Bs[n * TC_LD + kb + 4 + q];
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
                    bnn_mma_b1_and_popc(acc[mi][ni], af[mi], bf[ni]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = i0 + wm * 32 + mi * 16 + g + 8 * (e >> 1);
                const int j = j0 + wn * 32 + ni * 8 + 2 * q + (e & 1);
                if (i < M && j < N)
                    C[(size_t)i * N + j] = k - 2 * (popc_a[i] + popc_b[j]) + 4 * acc[mi][ni][e];
            }
}
