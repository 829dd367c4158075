// Runs the kernels of cuda/*.cu on the CPU, for testing without a GPU (C++20, g++ >= 11).
//
// Every CUDA thread of a block is a std::thread; blocks run one after the other, so a
// __shared__ array can be a function-static array that the block's threads share.
// __syncthreads is a block barrier; __ballot_sync and the 1-bit MMA exchange values
// through per-warp slots between two warp barriers, so every lane of a warp must reach
// them (the kernels are written that way). The MMA is emulated from the fragment layout
// of the PTX ISA for mma.m16n8k256 .b1 (see xnor_gemm.cu): this checks our kernels'
// indexing, not NVIDIA's hardware. Used by tests/test_cuda_compile.py; not part of the
// GPU build (nvcc never defines BNN_HOST_EMULATION).
#pragma once
#include <barrier>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#define BNN_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __trap() std::abort()

struct bnn_dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct bnn_warp {
    std::barrier<> bar;
    unsigned vote[32];
    unsigned a[32][4];
    unsigned b[32][2];
    explicit bnn_warp(int n) : bar(n) {}
};

struct bnn_block {
    std::barrier<> bar;
    std::vector<std::unique_ptr<bnn_warp>> warps;
    explicit bnn_block(int n) : bar(n)
    {
        for (int w = 0; w * 32 < n; ++w)
            warps.push_back(std::make_unique<bnn_warp>(n - w * 32 < 32 ? n - w * 32 : 32));
    }
};

static thread_local bnn_dim3 threadIdx, blockIdx;
static thread_local int bnn_tid;  // linear thread index in the block
static thread_local bnn_block* bnn_cur;
static bnn_dim3 blockDim, gridDim;

inline void __syncthreads() { bnn_cur->bar.arrive_and_wait(); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }

inline unsigned __ballot_sync(unsigned, bool pred)
{
    bnn_warp& w = *bnn_cur->warps[bnn_tid / 32];
    const int lane = bnn_tid % 32;
    w.vote[lane] = pred ? 1u : 0u;
    w.bar.arrive_and_wait();
    unsigned r = 0;
    for (int l = 0; l < 32; ++l)
        r |= w.vote[l] << l;
    w.bar.arrive_and_wait();
    return r;
}

// D += popcount(A AND B) for one m16n8k256 tile, from the lanes' fragments:
// A row r, 32-bit chunk c (0..7): lane 4 (r % 8) + c % 4, register (r >= 8) + 2 (c >= 4);
// B column n, chunk c: lane 4 n + c % 4, register (c >= 4);
// C: c[e] is row g + 8 (e >= 2), column 2 q + e % 2, with g = lane / 4, q = lane % 4.
inline void bnn_emulate_mma_m16n8k256_and_popc(int c[4], const unsigned a[4], const unsigned b[2])
{
    bnn_warp& w = *bnn_cur->warps[bnn_tid / 32];
    const int lane = bnn_tid % 32;
    for (int i = 0; i < 4; ++i)
        w.a[lane][i] = a[i];
    for (int i = 0; i < 2; ++i)
        w.b[lane][i] = b[i];
    w.bar.arrive_and_wait();
    const int g = lane / 4, q = lane % 4;
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2), col = 2 * q + e % 2;
        int s = 0;
        for (int ch = 0; ch < 8; ++ch) {
            const unsigned aw = w.a[4 * (row % 8) + ch % 4][(row >= 8) + 2 * (ch >= 4)];
            const unsigned bw = w.b[4 * col + ch % 4][ch >= 4];
            s += __builtin_popcount(aw & bw);
        }
        c[e] += s;
    }
    w.bar.arrive_and_wait();
}

// Launch kernel<<<grid, block>>>(args...) on the CPU.
template <class... P, class... A>
void bnn_launch(bnn_dim3 grid, bnn_dim3 block, void (*kernel)(P...), A... args)
{
    gridDim = grid;
    blockDim = block;
    const int n = static_cast<int>(block.x * block.y * block.z);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                bnn_block st(n);
                std::vector<std::thread> threads;
                threads.reserve(n);
                for (int t = 0; t < n; ++t)
                    threads.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = {bx, by, bz};
                        bnn_tid = t;
                        bnn_cur = &st;
                        kernel(static_cast<P>(args)...);
                    });
                for (auto& th : threads)
                    th.join();
            }
}
