// y[M, F] = (x[M, D] @ W[D, F]) * scale[F] with W int8, x and y float32: the product of
// models.quantize's int8 weights on a CPU, as an XLA FFI custom call (models/int8_kernel.py
// builds and registers it). W comes tiled, q[F / 64, D, 64] with q[b, d, j] = W[d, 64 b + j],
// so that each 64-column block is one contiguous stream (F is padded to a multiple of 64).
//
// Why it exists: XLA:CPU converts an int8 (or bfloat16) dot operand to float32 in memory
// before the product, so it reads more bytes than a float32 matrix. Here each weight byte
// is read once, widened in registers and multiplied into float32 accumulators.
//
// Work split: the 64-column blocks are shared among OpenMP threads; one block keeps 4 x 16
// float32 accumulators per row of x and walks d = 0..D-1, loading the block's 64 int8
// weights of row d (one cache line) for up to kRows rows of x at a time (later rows re-read
// the block from L2). The scale multiplies the result, not the matrix.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 64;  // columns per block: 4 AVX-512 float32 vectors
constexpr int64_t kRows = 4;    // rows of x per pass over a block (16 accumulators)

// Accumulates rows [m0, m0 + R) of x against block `tile` ([D, 64]) of columns f0..f0+63.
template <int R>
inline void BlockRows(const float* x, const int8_t* tile, const float* scale, float* y,
                      int64_t m0, int64_t D, int64_t F, int64_t f0) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const int8_t* row = tile + d * kBlock;
    __m512i bytes = _mm512_loadu_si512(reinterpret_cast<const void*>(row));
    __m512 w[4] = {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(bytes, 0))),
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(bytes, 1))),
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(bytes, 2))),
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(bytes, 3))),
    };
    for (int r = 0; r < R; ++r) {
      __m512 xv = _mm512_set1_ps(x[(m0 + r) * D + d]);
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_fmadd_ps(xv, w[j], acc[r][j]);
    }
  }
  for (int j = 0; j < 4; ++j) {
    __m512 s = _mm512_loadu_ps(scale + f0 + 16 * j);
    for (int r = 0; r < R; ++r)
      _mm512_storeu_ps(y + (m0 + r) * F + f0 + 16 * j, _mm512_mul_ps(acc[r][j], s));
  }
}

void Block(const float* x, const int8_t* tile, const float* scale, float* y, int64_t M,
           int64_t D, int64_t F, int64_t f0) {
  int64_t m = 0;
  for (; m + kRows <= M; m += kRows) BlockRows<kRows>(x, tile, scale, y, m, D, F, f0);
  switch (M - m) {
    case 3: BlockRows<3>(x, tile, scale, y, m, D, F, f0); break;
    case 2: BlockRows<2>(x, tile, scale, y, m, D, F, f0); break;
    case 1: BlockRows<1>(x, tile, scale, y, m, D, F, f0); break;
    default: break;
  }
}

ffi::Error Int8MatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> q,
                          ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto qd = q.dimensions();
  if (qd.size() != 3 || qd[2] != kBlock || xd.size() < 1 ||
      scale.element_count() != size_t(qd[0] * kBlock))
    return ffi::Error::InvalidArgument("int8_matmul: want x[..., D], q[F/64, D, 64], scale[F]");
  const int64_t blocks = qd[0], D = qd[1], F = blocks * kBlock;
  if (xd.back() != D) return ffi::Error::InvalidArgument("int8_matmul: x[..., D] vs q[., D, .]");
  const int64_t M = D ? static_cast<int64_t>(x.element_count()) / D : 0;
  const float* xp = x.typed_data();
  const int8_t* qp = q.typed_data();
  const float* sp = scale.typed_data();
  float* yp = y->typed_data();
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) Block(xp, qp + b * D * kBlock, sp, yp, M, D, F, b * kBlock);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RsdInt8Matmul, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
