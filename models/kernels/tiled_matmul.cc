// y[M, F] = x[M, D] @ W[D, F] for x and y float32 and W stored tiled: w[b, d, j] =
// W[d, 64 b + j], [F / 64, D, 64] (F padded to a multiple of 64), so that each 64-column
// block is one contiguous stream. W is float32 (RsdF32Matmul), or int8 with one float32
// scale per column (RsdInt8Matmul: W = q * scale[F], models.quantize). An XLA FFI custom
// call for the CPU; models/tiled_matmul.py builds and registers it.
//
// Why it exists: XLA:CPU converts an int8 (or bfloat16) dot operand to float32 in memory
// before the product, so an int8 matrix costs more there than a float32 one; and its
// product of 2-32 rows packs the matrix and streams it ~1.4x slower than its one-row
// product. Here each weight is read once per call, whatever the number of rows up to 6,
// widened in registers when int8, and multiplied into float32 accumulators.
//
// Work split: the 64-column blocks are shared among OpenMP threads; one block walks d =
// 0..D-1 once for up to 6 rows of x, keeping their float32 accumulators in registers; more
// rows re-read the block from L2. A scale multiplies the result, not the matrix.

#include <immintrin.h>
#include <omp.h>

#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 64;  // columns per block: 4 AVX-512 float32 vectors

// Vectors j0 .. j0 + V - 1 (16 columns each) of one tile row, as float32.
template <int V>
inline void Load(const int8_t* row, int j0, __m512 w[V]) {
  for (int j = 0; j < V; ++j) {
    __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * (j0 + j)));
    w[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
  }
}

template <int V>
inline void Load(const float* row, int j0, __m512 w[V]) {
  for (int j = 0; j < V; ++j) w[j] = _mm512_loadu_ps(row + 16 * (j0 + j));
}

// Rows [m0, m0 + R) of x against vectors j0 .. j0 + V - 1 of block `tile` ([D, 64], columns
// f0 ..); R * V accumulators stay in registers. `scale` may be null (float32 weights).
template <int R, int V, typename W>
inline void Pass(const float* x, const W* tile, const float* scale, float* y, int64_t m0,
                 int64_t D, int64_t F, int64_t f0, int j0) {
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < V; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m512 w[V];
    Load<V>(tile + d * kBlock, j0, w);
    for (int r = 0; r < R; ++r) {
      __m512 xv = _mm512_set1_ps(x[(m0 + r) * D + d]);
      for (int j = 0; j < V; ++j) acc[r][j] = _mm512_fmadd_ps(xv, w[j], acc[r][j]);
    }
  }
  for (int j = 0; j < V; ++j) {
    const int64_t f = f0 + 16 * (j0 + j);
    __m512 s = scale ? _mm512_loadu_ps(scale + f) : _mm512_set1_ps(1.0f);
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + (m0 + r) * F + f, _mm512_mul_ps(acc[r][j], s));
  }
}

// Groups of up to kRows rows, one pass over the whole block each (6 x 4 accumulators and 4
// weight vectors fill 28 of the 32 registers); later groups re-read the block from L2.
constexpr int64_t kRows = 6;

template <typename W>
void Block(const float* x, const W* tile, const float* scale, float* y, int64_t M,
           int64_t D, int64_t F, int64_t f0) {
  int64_t m = 0;
  for (; M - m >= kRows; m += kRows) Pass<kRows, 4>(x, tile, scale, y, m, D, F, f0, 0);
  switch (M - m) {
    case 5: Pass<5, 4>(x, tile, scale, y, m, D, F, f0, 0); break;
    case 4: Pass<4, 4>(x, tile, scale, y, m, D, F, f0, 0); break;
    case 3: Pass<3, 4>(x, tile, scale, y, m, D, F, f0, 0); break;
    case 2: Pass<2, 4>(x, tile, scale, y, m, D, F, f0, 0); break;
    case 1: Pass<1, 4>(x, tile, scale, y, m, D, F, f0, 0); break;
    default: break;
  }
}

template <typename W>
ffi::Error Matmul(const ffi::Buffer<ffi::F32>& x, ffi::Span<const int64_t> wd, const W* w,
                  const float* scale, size_t scale_size, float* y) {
  auto xd = x.dimensions();
  if (wd.size() != 3 || wd[2] != kBlock || xd.size() < 1 ||
      (scale && scale_size != size_t(wd[0] * kBlock)))
    return ffi::Error::InvalidArgument("tiled_matmul: want x[..., D], w[F/64, D, 64], scale[F]");
  const int64_t blocks = wd[0], D = wd[1], F = blocks * kBlock;
  if (xd.back() != D) return ffi::Error::InvalidArgument("tiled_matmul: x[..., D] vs w[., D, .]");
  const int64_t M = D ? static_cast<int64_t>(x.element_count()) / D : 0;
  const float* xp = x.typed_data();
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) Block(xp, w + b * D * kBlock, scale, y, M, D, F, b * kBlock);
  return ffi::Error::Success();
}

ffi::Error Int8Impl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> q, ffi::Buffer<ffi::F32> scale,
                    ffi::ResultBuffer<ffi::F32> y) {
  return Matmul(x, q.dimensions(), q.typed_data(), scale.typed_data(), scale.element_count(),
                y->typed_data());
}

ffi::Error F32Impl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y) {
  return Matmul(x, w.dimensions(), w.typed_data(), nullptr, 0, y->typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RsdInt8Matmul, Int8Impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RsdF32Matmul, F32Impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
