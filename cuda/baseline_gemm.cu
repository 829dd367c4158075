// The paper's "baseline" kernel (Courbariaux et al. 2016, Section 4): an unoptimized
// shared-memory tiled float matrix multiplication, the 16 x 16 tiling of the CUDA
// programming guide. C (M, N) = A (M, K) @ B (K, N), all row-major float32.
//
// Each 16 x 16 thread block computes a 16 x 16 tile of C. For every 16-wide slice of K it
// copies one tile of A and one of B into shared memory (one element per thread), waits,
// and accumulates the 16 products of its row of As and column of Bs. Out-of-range
// elements are loaded as 0, so any M, N, K works.
//
// Launch: block (16, 16), grid (ceil(N / 16), ceil(M / 16)).

#define BNN_TILE 16

extern "C" __global__ void baseline_gemm(const float* __restrict__ A, const float* __restrict__ B,
                                         float* __restrict__ C, int M, int N, int K)
{
    __shared__ float As[BNN_TILE][BNN_TILE];
    __shared__ float Bs[BNN_TILE][BNN_TILE];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * BNN_TILE + ty;
    const int col = blockIdx.x * BNN_TILE + tx;
    float acc = 0.0f;
    for (int t = 0; t < K; t += BNN_TILE) {
        As[ty][tx] = (row < M && t + tx < K) ? A[(size_t)row * K + t + tx] : 0.0f;
        Bs[ty][tx] = (t + ty < K && col < N) ? B[(size_t)(t + ty) * N + col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int e = 0; e < BNN_TILE; ++e)
            acc += As[ty][e] * Bs[e][tx];
        __syncthreads();
    }
    if (row < M && col < N)
        C[(size_t)row * N + col] = acc;
}
