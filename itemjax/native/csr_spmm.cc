// Native CSR sparse x dense products for XLA on CPU, called from JAX through the XLA FFI.
//
//   forward:    Y[r, :] = sum_{j in indptr[r] .. indptr[r+1]-1} data[j] * X[indices[j], :]     (Y = M X)
//   transpose:  Y[c, :] = sum_{(r, j): indices[j] = c}          data[j] * X[r, :]              (Y = M^T X)
//
// M is an [m, n] CSR matrix (indptr int32 [m + 1], indices int32 [nnz], data [nnz]); X and Y are
// dense row-major. Element types (X / data / accumulator): f32 / f32 / f32, bf16 / f32 / f32 (the
// sum is kept in float32 and rounded to bfloat16 once per output element), f64 / f64 / f64.
//
// Threads: the output rows are split into contiguous ranges of about equal cost (nonzeros + rows),
// one std::thread each. Every output element is summed by one thread in increasing entry order
// (forward: j ascending; transpose: row r ascending), so results do not depend on the thread count.
// The number of threads is the call's "threads" attribute when > 0, else ITEMJAX_NATIVE_THREADS when
// set to a positive integer, else the CPUs this process may run on; in the automatic case small
// products use fewer threads (kMinWorkPerThread multiply-adds each at least).
//
// Robustness: an entry whose column index lies outside [0, n) is skipped, and row bounds are
// clamped to [0, nnz], so malformed input cannot read out of bounds.
//
// The handlers are plain C symbols (XLA_FFI_DEFINE_HANDLER_SYMBOL); itemjax/native/__init__.py loads
// this library with ctypes and registers each with jax.ffi.register_ffi_target.

#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "threads.h"  // AvailableCpus, EnvThreads, kMaxThreads

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Runtime dispatch between an AVX2+FMA build and the portable baseline of the hot loops (x86-64 Linux
// with glibc, whose ifunc resolver picks the clone once at load time). The library itself is built
// without -march, so it runs on any x86-64 CPU.
#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define ITEMJAX_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
#endif
#ifndef ITEMJAX_MULTIVERSION
#define ITEMJAX_MULTIVERSION
#endif

#if defined(__GNUC__)
#define ITEMJAX_INLINE inline __attribute__((always_inline))
#define ITEMJAX_PREFETCH(address) __builtin_prefetch(address, 0, 3)
#else
#define ITEMJAX_INLINE inline
#define ITEMJAX_PREFETCH(address) ((void)0)
#endif

namespace {

constexpr int64_t kMinWorkPerThread = int64_t{1} << 16;  // multiply-adds (automatic thread count)
constexpr int64_t kPrefetchDistance = 4;  // entries ahead whose X row is prefetched

// ---------------------------------------------------------------------------- element types

struct Bf16 {
  uint16_t bits;
};

ITEMJAX_INLINE float Load(float v) { return v; }
ITEMJAX_INLINE double Load(double v) { return v; }
ITEMJAX_INLINE float Load(Bf16 v) {
  const uint32_t word = static_cast<uint32_t>(v.bits) << 16;
  float out;
  std::memcpy(&out, &word, sizeof(out));
  return out;
}

template <typename T>
ITEMJAX_INLINE T Store(typename std::conditional<std::is_same<T, double>::value, double, float>::type v) {
  if constexpr (std::is_same<T, Bf16>::value) {
    uint32_t word;
    std::memcpy(&word, &v, sizeof(word));
    if ((word & 0x7fffffffu) > 0x7f800000u) return Bf16{static_cast<uint16_t>((word >> 16) | 0x40u)};  // quiet NaN
    word += 0x7fffu + ((word >> 16) & 1u);  // round to nearest, ties to even
    return Bf16{static_cast<uint16_t>(word >> 16)};
  } else {
    return static_cast<T>(v);
  }
}

// ---------------------------------------------------------------------------- row kernels

// Rows [r0, r1) of Y = M X. acc: scratch of d accumulators (unused when X is the accumulator type).
template <typename X, typename Acc>
ITEMJAX_INLINE void ForwardRows(int64_t r0, int64_t r1, const int32_t* indptr, const int32_t* indices,
                                const Acc* data, const X* x, X* y, int64_t nnz, int64_t n, int64_t d,
                                Acc* acc) {
  constexpr bool kDirect = std::is_same<X, Acc>::value;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t begin = std::clamp<int64_t>(indptr[r], 0, nnz);
    const int64_t end = std::clamp<int64_t>(indptr[r + 1], begin, nnz);
    Acc* __restrict out = kDirect ? reinterpret_cast<Acc*>(y + r * d) : acc;
    for (int64_t k = 0; k < d; ++k) out[k] = Acc(0);
    for (int64_t j = begin; j < end; ++j) {
      if (j + kPrefetchDistance < end) {
        const uint32_t ahead = static_cast<uint32_t>(indices[j + kPrefetchDistance]);
        if (ahead < static_cast<uint64_t>(n)) ITEMJAX_PREFETCH(x + static_cast<int64_t>(ahead) * d);
      }
      const uint32_t c = static_cast<uint32_t>(indices[j]);
      if (c >= static_cast<uint64_t>(n)) continue;
      const Acc v = data[j];
      const X* __restrict row = x + static_cast<int64_t>(c) * d;
      for (int64_t k = 0; k < d; ++k) out[k] += v * Load(row[k]);
    }
    if constexpr (!kDirect) {
      X* __restrict target = y + r * d;
      for (int64_t k = 0; k < d; ++k) target[k] = Store<X>(out[k]);
    }
  }
}

// Rows [r0, r1) of Y = M X for a compile-time width D (a multiple of 8), float32 sums: the row's D
// sums stay in D / 8 registers of 8 floats for the whole row (the generic loop above reads and writes
// its accumulators through memory at every entry), and every cache line of the X row kDistance entries
// ahead is prefetched (the generic loop fetches the first line only). Same order of additions as
// ForwardRows (entries ascending, one accumulator per output element), so the results are identical.
#if defined(__GNUC__)
#define ITEMJAX_FIXED_WIDTH 1
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors in inlined helpers only: no ABI is crossed
typedef float F8 __attribute__((vector_size(32)));
typedef uint16_t U16x8 __attribute__((vector_size(16)));
typedef uint32_t U32x8 __attribute__((vector_size(32)));

ITEMJAX_INLINE F8 Load8(const float* p) {
  F8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
ITEMJAX_INLINE F8 Load8(const Bf16* p) {
  U16x8 half;
  std::memcpy(&half, p, sizeof(half));
  const U32x8 word = __builtin_convertvector(half, U32x8) << 16;
  F8 v;
  std::memcpy(&v, &word, sizeof(v));
  return v;
}

constexpr int64_t kFixedPrefetchDistance = 8;  // entries ahead whose whole X row is prefetched

template <int D, typename X>
ITEMJAX_INLINE void ForwardRowsFixed(int64_t r0, int64_t r1, const int32_t* indptr, const int32_t* indices,
                                     const float* data, const X* x, X* y, int64_t nnz, int64_t n) {
  static_assert(D % 8 == 0, "D must be a multiple of 8");
  constexpr int kVectors = D / 8;
  constexpr int kLines = static_cast<int>((D * sizeof(X) + 63) / 64);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t begin = std::clamp<int64_t>(indptr[r], 0, nnz);
    const int64_t end = std::clamp<int64_t>(indptr[r + 1], begin, nnz);
    F8 acc[kVectors];
    for (int i = 0; i < kVectors; ++i) acc[i] = F8{};
    for (int64_t j = begin; j < end; ++j) {
      if (j + kFixedPrefetchDistance < end) {
        const uint32_t ahead = static_cast<uint32_t>(indices[j + kFixedPrefetchDistance]);
        if (ahead < static_cast<uint64_t>(n)) {
          const char* line = reinterpret_cast<const char*>(x + static_cast<int64_t>(ahead) * D);
          for (int l = 0; l < kLines; ++l) ITEMJAX_PREFETCH(line + 64 * l);
        }
      }
      const uint32_t c = static_cast<uint32_t>(indices[j]);
      if (c >= static_cast<uint64_t>(n)) continue;
      const float v = data[j];
      const X* row = x + static_cast<int64_t>(c) * D;
      for (int i = 0; i < kVectors; ++i) acc[i] += v * Load8(row + 8 * i);
    }
    X* target = y + r * D;
    if constexpr (std::is_same<X, float>::value) {
      std::memcpy(target, acc, sizeof(acc));
    } else {
      float sums[D];
      std::memcpy(sums, acc, sizeof(acc));
      for (int k = 0; k < D; ++k) target[k] = Store<X>(sums[k]);
    }
  }
}
#endif

// Output rows [c0, c1) of Y = M^T X (M has m rows): every entry of M is visited, those whose column
// falls in [c0, c1) are accumulated. acc: (c1 - c0) * d accumulators (unused when X is the accumulator
// type: Y's rows are summed in place).
template <typename X, typename Acc>
ITEMJAX_INLINE void TransposeRows(int64_t c0, int64_t c1, const int32_t* indptr, const int32_t* indices,
                                  const Acc* data, const X* x, X* y, int64_t nnz, int64_t m, int64_t d,
                                  Acc* acc) {
  constexpr bool kDirect = std::is_same<X, Acc>::value;
  Acc* __restrict out = kDirect ? reinterpret_cast<Acc*>(y + c0 * d) : acc;
  const int64_t span = c1 - c0;
  for (int64_t k = 0; k < span * d; ++k) out[k] = Acc(0);
  const uint64_t width = static_cast<uint64_t>(span);
  for (int64_t r = 0; r < m; ++r) {
    const int64_t begin = std::clamp<int64_t>(indptr[r], 0, nnz);
    const int64_t end = std::clamp<int64_t>(indptr[r + 1], begin, nnz);
    const X* __restrict row = x + r * d;
    for (int64_t j = begin; j < end; ++j) {
      const uint64_t local = static_cast<uint64_t>(static_cast<int64_t>(indices[j]) - c0);
      if (local >= width) continue;  // another thread's column, or out of range
      const Acc v = data[j];
      Acc* __restrict target = out + static_cast<int64_t>(local) * d;
      for (int64_t k = 0; k < d; ++k) target[k] += v * Load(row[k]);
    }
  }
  if constexpr (!kDirect) {
    X* __restrict target = y + c0 * d;
    for (int64_t k = 0; k < span * d; ++k) target[k] = Store<X>(out[k]);
  }
}

// Non-template entry points, one per element type, so that each is compiled once per target clone
// (the template bodies are inlined into them).
#define ITEMJAX_ROW_FUNCTIONS(SUFFIX, X, ACC)                                                                \
  ITEMJAX_MULTIVERSION void ForwardRows##SUFFIX(int64_t r0, int64_t r1, const int32_t* indptr,              \
                                                const int32_t* indices, const ACC* data, const X* x, X* y,  \
                                                int64_t nnz, int64_t n, int64_t d, ACC* acc) {              \
    ForwardRows<X, ACC>(r0, r1, indptr, indices, data, x, y, nnz, n, d, acc);                               \
  }                                                                                                          \
  ITEMJAX_MULTIVERSION void TransposeRows##SUFFIX(int64_t c0, int64_t c1, const int32_t* indptr,            \
                                                  const int32_t* indices, const ACC* data, const X* x,      \
                                                  X* y, int64_t nnz, int64_t m, int64_t d, ACC* acc) {      \
    TransposeRows<X, ACC>(c0, c1, indptr, indices, data, x, y, nnz, m, d, acc);                             \
  }

ITEMJAX_ROW_FUNCTIONS(F32, float, float)
ITEMJAX_ROW_FUNCTIONS(Bf16, Bf16, float)
ITEMJAX_ROW_FUNCTIONS(F64, double, double)

#undef ITEMJAX_ROW_FUNCTIONS

#if defined(ITEMJAX_FIXED_WIDTH)
// Fixed-width forward entry points: FixedF32_<D>, FixedBf16_<D> for D in kFixedWidths.
#define ITEMJAX_FIXED_FUNCTION(SUFFIX, X, D)                                                                 \
  ITEMJAX_MULTIVERSION void Fixed##SUFFIX##_##D(int64_t r0, int64_t r1, const int32_t* indptr,             \
                                                const int32_t* indices, const float* data, const X* x, X* y, \
                                                int64_t nnz, int64_t n) {                                   \
    ForwardRowsFixed<D, X>(r0, r1, indptr, indices, data, x, y, nnz, n);                                    \
  }
ITEMJAX_FIXED_FUNCTION(F32, float, 16)
ITEMJAX_FIXED_FUNCTION(F32, float, 32)
ITEMJAX_FIXED_FUNCTION(F32, float, 64)
ITEMJAX_FIXED_FUNCTION(F32, float, 128)
ITEMJAX_FIXED_FUNCTION(Bf16, Bf16, 16)
ITEMJAX_FIXED_FUNCTION(Bf16, Bf16, 32)
ITEMJAX_FIXED_FUNCTION(Bf16, Bf16, 64)
ITEMJAX_FIXED_FUNCTION(Bf16, Bf16, 128)
#undef ITEMJAX_FIXED_FUNCTION

using FixedKernel32 = void (*)(int64_t, int64_t, const int32_t*, const int32_t*, const float*, const float*, float*,
                               int64_t, int64_t);
using FixedKernel16 = void (*)(int64_t, int64_t, const int32_t*, const int32_t*, const float*, const Bf16*, Bf16*,
                               int64_t, int64_t);

// The fixed-width forward kernel for width d, or nullptr (then the generic ForwardRows runs).
template <typename X>
auto FixedForward(int64_t d) {
  if constexpr (std::is_same<X, float>::value) {
    switch (d) {
      case 16: return FixedKernel32{FixedF32_16};
      case 32: return FixedKernel32{FixedF32_32};
      case 64: return FixedKernel32{FixedF32_64};
      case 128: return FixedKernel32{FixedF32_128};
      default: return FixedKernel32{nullptr};
    }
  } else if constexpr (std::is_same<X, Bf16>::value) {
    switch (d) {
      case 16: return FixedKernel16{FixedBf16_16};
      case 32: return FixedKernel16{FixedBf16_32};
      case 64: return FixedKernel16{FixedBf16_64};
      case 128: return FixedKernel16{FixedBf16_128};
      default: return FixedKernel16{nullptr};
    }
  } else {
    return static_cast<void (*)()>(nullptr);
  }
}
#endif

template <typename X>
struct Kernels;
template <>
struct Kernels<float> {
  static constexpr auto forward = ForwardRowsF32;
  static constexpr auto transpose = TransposeRowsF32;
};
template <>
struct Kernels<Bf16> {
  static constexpr auto forward = ForwardRowsBf16;
  static constexpr auto transpose = TransposeRowsBf16;
};
template <>
struct Kernels<double> {
  static constexpr auto forward = ForwardRowsF64;
  static constexpr auto transpose = TransposeRowsF64;
};

// ---------------------------------------------------------------------------- GAT attention
//
// One head of additive attention over a CSR graph whose pattern is symmetric (c in N(r) <=> r in N(c)),
// float32, width d = 8 * V (V vectors of 8 floats held in registers). For the entry (r, c) of row r:
//
//   pre_rc = dst[r] + src[c],  l_rc = LeakyReLU(pre_rc),  lambda_rc = dl/dpre (1 if pre_rc >= 0, else slope)
//   m_r = max_c l_rc (0 on a row without entries),  w_rc = exp(l_rc - m_r),  den_r = sum_c w_rc (1 if none)
//   alpha_rc = w_rc / den_r,  y_r = sum_c alpha_rc x_c                                  (forward, one pass)
//
// Backward, from y_bar, with q_r = y_bar_r . y_r and the softmax's l_bar_rc = alpha_rc (y_bar_r . x_c - q_r),
// each per-entry dot product taken out of the sum (so a row costs one horizontal sum, not one per entry):
//
//   dst_bar_r = y_bar_r . (sum_{c in N(r)} lambda alpha_rc x_c) - q_r sum_c lambda alpha_rc
//                                                     (pass A over rows r: gathers x_c)
//   x_bar_c   = sum_{r in N(c)} alpha_rc y_bar_r      (pass B over rows c: gathers y_bar_r; the pattern's
//   src_bar_c = x_c . (sum_{r in N(c)} lambda alpha_rc y_bar_r) - sum_r lambda alpha_rc q_r
//                                                      symmetry turns the column sums into row sums)
//
// Every pass over a row first computes its entries' scalars into a scratch buffer (the logits, then the
// weights, eight entries at a time with a vectorised exp), then gathers the neighbour rows in a loop
// shaped like the product's. Each output element is summed by one thread in entry order.
#if defined(ITEMJAX_FIXED_WIDTH)
typedef int32_t I32x8 __attribute__((vector_size(32)));

ITEMJAX_INLINE float HorizontalSum(const F8& v) {
  float lanes[8];
  std::memcpy(lanes, &v, sizeof(lanes));
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

ITEMJAX_INLINE float Leaky(float pre, float slope) { return pre >= 0.0f ? pre : slope * pre; }

ITEMJAX_INLINE F8 Splat(float v) { return F8{v, v, v, v, v, v, v, v}; }

// e^x for x <= 0, lane-wise: Cephes' expf (range reduction by ln 2 in two parts, a degree-6 polynomial,
// the power of two built in the exponent bits), within 2 ulp of expf; 0 below -87 (e^-87 ~ 1.6e-38, where
// the power of two would leave the normal range) and for -inf.
ITEMJAX_INLINE F8 ExpNonPositive(F8 x) {
  const F8 low = Splat(-87.0f);
  const auto underflow = x < low;
  x = underflow ? low : x;
  const F8 n = __builtin_convertvector(__builtin_convertvector(x * 1.44269504088896341f - 0.5f, I32x8), F8);
  // (x log2 e - 0.5 truncates toward zero to -round(|x| log2 e) for x <= 0, up to ties)
  F8 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const I32x8 bits = (__builtin_convertvector(n, I32x8) + 127) << 23;
  F8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? F8{} : p * scale;
}

ITEMJAX_INLINE void PrefetchRow(const float* row, int lines) {
  const char* line = reinterpret_cast<const char*>(row);
  for (int l = 0; l < lines; ++l) ITEMJAX_PREFETCH(line + 64 * l);
}

// Scratch of a thread: `count` buffers of at least `size` floats each, padded to whole vectors of 8.
struct Scratch {
  std::vector<float> data;
  int64_t stride = 0;
  float* Buffers(int64_t size, int count) {
    const int64_t padded = (size + 7) / 8 * 8;
    if (padded > stride) {
      stride = padded;
      data.assign(static_cast<size_t>(stride * count), 0.0f);
    }
    return data.data();
  }
};

// pre[k] = dst_r + src[c_k] for the entries k of a row (-inf for an out-of-range column, whose weight is
// then 0), padded with -inf to whole vectors; returns max_k LeakyReLU(pre[k]) over the valid entries (0 if
// none).
ITEMJAX_INLINE float RowLogits(int64_t begin, int64_t end, const int32_t* indices, const float* src, float dr,
                               float slope, int64_t n, float* pre) {
  // Branch-free: the gather first (an out-of-range column reads src[0] and is then masked), then the max
  // eight entries at a time over the padded row. The same values as entry-by-entry code: max is exact.
  const int64_t len = end - begin;
  const int64_t padded = (len + 7) / 8 * 8;
  int64_t valid = 0;
  for (int64_t k = 0; k < len; ++k) {
    const uint32_t c = static_cast<uint32_t>(indices[begin + k]);
    const bool in_range = c < static_cast<uint64_t>(n);
    const float p = dr + src[in_range ? c : 0];
    pre[k] = in_range ? p : -INFINITY;
    valid += in_range;
  }
  for (int64_t k = len; k < padded; ++k) pre[k] = -INFINITY;
  F8 mx = Splat(-INFINITY);
  for (int64_t k = 0; k < padded; k += 8) {
    const F8 p = Load8(pre + k);
    F8 l = p >= 0.0f ? p : p * slope;
    l = p == -INFINITY ? Splat(-INFINITY) : l;  // (slope 0 would make 0 * -inf a NaN)
    mx = l > mx ? l : mx;
  }
  if (valid == 0) return 0.0f;
  float lanes[8];
  std::memcpy(lanes, &mx, sizeof(lanes));
  return std::max({lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5], lanes[6], lanes[7]});
}

// The attention weights of a row from its logits' pre-activations: w[k] = exp(LeakyReLU(pre[k]) - mx)
// (0 for pre = -inf) when w is not null, and lw[k] = lambda_k w[k] when lw is not null; returns sum_k w[k].
ITEMJAX_INLINE float RowWeights(int64_t len, const float* pre, float mx, float slope, float* w, float* lw) {
  F8 sum = F8{};
  for (int64_t k = 0; k < len; k += 8) {
    const F8 p = Load8(pre + k);
    const auto positive = p >= 0.0f;
    const F8 l = positive ? p : p * slope;
    F8 e = ExpNonPositive(l - mx);
    e = p == -INFINITY ? F8{} : e;
    if (w != nullptr) std::memcpy(w + k, &e, sizeof(e));
    sum += e;
    if (lw != nullptr) {
      const F8 le = positive ? e : e * slope;
      std::memcpy(lw + k, &le, sizeof(le));
    }
  }
  return HorizontalSum(sum);
}

template <int V>
ITEMJAX_INLINE void GatForwardRows(int64_t r0, int64_t r1, const int32_t* indptr, const int32_t* indices,
                                   const float* x, const float* src, const float* dst, float slope, int64_t nnz,
                                   int64_t n, float* y, float* row_max, float* denominator, float eps,
                                   float* scale, float* out) {
  constexpr int D = 8 * V;
  constexpr int kLines = (D * 4 + 63) / 64;
  Scratch scratch;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t begin = std::clamp<int64_t>(indptr[r], 0, nnz);
    const int64_t end = std::clamp<int64_t>(indptr[r + 1], begin, nnz);
    const int64_t len = end - begin;
    float* pre = scratch.Buffers(len, 2);
    float* w = pre + scratch.stride;
    const float mx = RowLogits(begin, end, indices, src, dst[r], slope, n, pre);
    float den = RowWeights(len, pre, mx, slope, w, nullptr);
    F8 acc[V];
    for (int i = 0; i < V; ++i) acc[i] = F8{};
    for (int64_t k = 0; k < len; ++k) {
      if (k + kFixedPrefetchDistance < len) {
        const uint32_t ahead = static_cast<uint32_t>(indices[begin + k + kFixedPrefetchDistance]);
        if (ahead < static_cast<uint64_t>(n)) PrefetchRow(x + static_cast<int64_t>(ahead) * D, kLines);
      }
      const uint32_t c = static_cast<uint32_t>(indices[begin + k]);
      if (c >= static_cast<uint64_t>(n)) continue;
      const float* row = x + static_cast<int64_t>(c) * D;
      for (int i = 0; i < V; ++i) acc[i] += w[k] * Load8(row + 8 * i);
    }
    if (!(den > 0.0f)) den = 1.0f;  // no entries: y_r = 0
    for (int i = 0; i < V; ++i) acc[i] /= den;
    std::memcpy(y + r * D, acc, sizeof(acc));
    if (scale != nullptr) {  // the layer's row normalisation: out_r = y_r / s_r, s_r = max(||y_r||, eps)
      F8 squares = F8{};
      for (int i = 0; i < V; ++i) squares += acc[i] * acc[i];
      const float norm = std::sqrt(HorizontalSum(squares));
      const float s = norm > eps ? norm : eps;
      for (int i = 0; i < V; ++i) acc[i] /= s;
      std::memcpy(out + r * D, acc, sizeof(acc));
      scale[r] = s;
    }
    row_max[r] = mx;
    denominator[r] = den;
  }
}

// Pass A: dst_bar over rows [r0, r1), and each row's (dst_r, m_r, 1 / den_r, q_r) into info[4 r ..] for pass B.
template <int V>
ITEMJAX_INLINE void GatBackwardRowsA(int64_t r0, int64_t r1, const int32_t* indptr, const int32_t* indices,
                                     const float* x, const float* src, const float* dst, const float* y,
                                     const float* row_max, const float* denominator, const float* y_bar,
                                     float slope, int64_t nnz, int64_t n, float* info, float* dst_bar,
                                     const float* out_bar, const float* scale, float eps, float* y_bar_total) {
  constexpr int D = 8 * V;
  constexpr int kLines = (D * 4 + 63) / 64;
  Scratch scratch;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t begin = std::clamp<int64_t>(indptr[r], 0, nnz);
    const int64_t end = std::clamp<int64_t>(indptr[r + 1], begin, nnz);
    const int64_t len = end - begin;
    F8 g[V];
    F8 dot_y = F8{};
    if (out_bar == nullptr) {
      for (int i = 0; i < V; ++i) {
        g[i] = Load8(y_bar + r * D + 8 * i);
        dot_y += g[i] * Load8(y + r * D + 8 * i);
      }
    } else {  // y_r is also read as out_r = y_r / s_r: its gradient joins y_bar_r, kept for pass B
      F8 o[V], b[V];
      F8 dot_o = F8{};
      const float s = scale[r];
      for (int i = 0; i < V; ++i) {
        o[i] = Load8(y + r * D + 8 * i) / s;
        b[i] = Load8(out_bar + r * D + 8 * i);
        dot_o += b[i] * o[i];
      }
      const float project = s > eps ? HorizontalSum(dot_o) : 0.0f;  // s = ||y_r||: (b - o (o . b)) / s; else b / eps
      for (int i = 0; i < V; ++i) {
        g[i] = Load8(y_bar + r * D + 8 * i) + (b[i] - o[i] * project) / s;
        dot_y += g[i] * Load8(y + r * D + 8 * i);
      }
      std::memcpy(y_bar_total + r * D, g, sizeof(g));
    }
    const float qr = HorizontalSum(dot_y);
    const float dr = dst[r], mx = row_max[r], inv = 1.0f / denominator[r];
    info[4 * r] = dr;
    info[4 * r + 1] = mx;
    info[4 * r + 2] = inv;
    info[4 * r + 3] = qr;
    float* pre = scratch.Buffers(len, 2);
    float* lw = pre + scratch.stride;
    RowLogits(begin, end, indices, src, dr, slope, n, pre);  // the row's max is the forward's, m_r
    RowWeights(len, pre, mx, slope, nullptr, lw);  // lw_k = lambda_rc w_rc (w and the row's sum are not needed)
    F8 acc[V];
    for (int i = 0; i < V; ++i) acc[i] = F8{};
    float coefficient_sum = 0.0f;
    for (int64_t k = 0; k < len; ++k) {
      if (k + kFixedPrefetchDistance < len) {
        const uint32_t ahead = static_cast<uint32_t>(indices[begin + k + kFixedPrefetchDistance]);
        if (ahead < static_cast<uint64_t>(n)) PrefetchRow(x + static_cast<int64_t>(ahead) * D, kLines);
      }
      const uint32_t c = static_cast<uint32_t>(indices[begin + k]);
      if (c >= static_cast<uint64_t>(n)) continue;
      const float coefficient = lw[k] * inv;  // lambda_rc alpha_rc
      coefficient_sum += coefficient;
      const float* row = x + static_cast<int64_t>(c) * D;
      for (int i = 0; i < V; ++i) acc[i] += coefficient * Load8(row + 8 * i);
    }
    F8 dot = F8{};
    for (int i = 0; i < V; ++i) dot += g[i] * acc[i];
    dst_bar[r] = HorizontalSum(dot) - qr * coefficient_sum;
  }
}

// Pass B: x_bar and src_bar over rows [c0, c1) (as columns: their entries r are the edges c -> r).
template <int V>
ITEMJAX_INLINE void GatBackwardRowsB(int64_t c0, int64_t c1, const int32_t* indptr, const int32_t* indices,
                                     const float* x, const float* src, const float* info, const float* y_bar,
                                     float slope, int64_t nnz, int64_t n, float* x_bar, float* src_bar,
                                     const float* a_src, const float* a_dst, const float* dst_bar) {
  constexpr int D = 8 * V;
  constexpr int kLines = (D * 4 + 63) / 64;
  Scratch scratch;
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t begin = std::clamp<int64_t>(indptr[c], 0, nnz);
    const int64_t end = std::clamp<int64_t>(indptr[c + 1], begin, nnz);
    const int64_t len = end - begin;
    const int64_t padded = (len + 7) / 8 * 8;
    float* pre = scratch.Buffers(len, 4);  // pre, then alpha
    float* mx = pre + scratch.stride;      // m_r, then lambda alpha
    float* inv = mx + scratch.stride;
    float* q = inv + scratch.stride;
    const float sc = src[c];
    for (int64_t k = 0; k < len; ++k) {
      const uint32_t r = static_cast<uint32_t>(indices[begin + k]);
      if (r >= static_cast<uint64_t>(n)) {
        pre[k] = -INFINITY;
        mx[k] = inv[k] = q[k] = 0.0f;
        continue;
      }
      const float* node = info + 4 * static_cast<int64_t>(r);
      pre[k] = node[0] + sc;
      mx[k] = node[1];
      inv[k] = node[2];
      q[k] = node[3];
    }
    for (int64_t k = len; k < padded; ++k) {
      pre[k] = -INFINITY;
      mx[k] = inv[k] = q[k] = 0.0f;
    }
    F8 q_sum = F8{};
    for (int64_t k = 0; k < padded; k += 8) {
      const F8 p = Load8(pre + k);
      const auto positive = p >= 0.0f;
      const F8 l = positive ? p : p * slope;
      F8 alpha = ExpNonPositive(l - Load8(mx + k)) * Load8(inv + k);
      alpha = p == -INFINITY ? F8{} : alpha;
      const F8 lambda_alpha = positive ? alpha : alpha * slope;
      q_sum += lambda_alpha * Load8(q + k);
      std::memcpy(pre + k, &alpha, sizeof(alpha));
      std::memcpy(mx + k, &lambda_alpha, sizeof(lambda_alpha));
    }
    F8 acc[V], lacc[V];
    for (int i = 0; i < V; ++i) acc[i] = lacc[i] = F8{};
    for (int64_t k = 0; k < len; ++k) {
      if (k + kFixedPrefetchDistance < len) {
        const uint32_t ahead = static_cast<uint32_t>(indices[begin + k + kFixedPrefetchDistance]);
        if (ahead < static_cast<uint64_t>(n)) PrefetchRow(y_bar + static_cast<int64_t>(ahead) * D, kLines);
      }
      const uint32_t r = static_cast<uint32_t>(indices[begin + k]);
      if (r >= static_cast<uint64_t>(n)) continue;
      const float* row = y_bar + static_cast<int64_t>(r) * D;
      const float alpha = pre[k], lambda_alpha = mx[k];
      for (int i = 0; i < V; ++i) {
        const F8 gr = Load8(row + 8 * i);
        acc[i] += alpha * gr;
        lacc[i] += lambda_alpha * gr;
      }
    }
    F8 dot = F8{};
    for (int i = 0; i < V; ++i) dot += Load8(x + c * D + 8 * i) * lacc[i];
    const float sb = HorizontalSum(dot) - HorizontalSum(q_sum);
    if (a_src != nullptr) {  // the scores src_c = a_src . x_c, dst_c = a_dst . x_c depend on x_c too
      const float db = dst_bar[c];
      for (int i = 0; i < V; ++i) acc[i] += sb * Load8(a_src + 8 * i) + db * Load8(a_dst + 8 * i);
    }
    std::memcpy(x_bar + c * D, acc, sizeof(acc));
    src_bar[c] = sb;
  }
}

// The attention scores of rows [r0, r1): src[r] = a_src . x_r, dst[r] = a_dst . x_r.
template <int V>
ITEMJAX_INLINE void GatScoresRows(int64_t r0, int64_t r1, const float* x, const float* a_src, const float* a_dst,
                                  float* src, float* dst) {
  constexpr int D = 8 * V;
  F8 as[V], ad[V];
  for (int i = 0; i < V; ++i) {
    as[i] = Load8(a_src + 8 * i);
    ad[i] = Load8(a_dst + 8 * i);
  }
  for (int64_t r = r0; r < r1; ++r) {
    F8 s = F8{}, t = F8{};
    for (int i = 0; i < V; ++i) {
      const F8 xr = Load8(x + r * D + 8 * i);
      s += as[i] * xr;
      t += ad[i] * xr;
    }
    src[r] = HorizontalSum(s);
    dst[r] = HorizontalSum(t);
  }
}

#define ITEMJAX_GAT_FUNCTIONS(V)                                                                             \
  ITEMJAX_MULTIVERSION void GatForward##V(int64_t r0, int64_t r1, const int32_t* ip, const int32_t* ix,      \
                                          const float* x, const float* src, const float* dst, float slope,   \
                                          int64_t nnz, int64_t n, float* y, float* mx, float* den, float eps,\
                                          float* scale, float* out) {                                        \
    GatForwardRows<V>(r0, r1, ip, ix, x, src, dst, slope, nnz, n, y, mx, den, eps, scale, out);             \
  }                                                                                                          \
  ITEMJAX_MULTIVERSION void GatBackwardA##V(int64_t r0, int64_t r1, const int32_t* ip, const int32_t* ix,    \
                                            const float* x, const float* src, const float* dst,              \
                                            const float* y, const float* mx, const float* den,               \
                                            const float* y_bar, float slope, int64_t nnz, int64_t n,         \
                                            float* info, float* dst_bar, const float* out_bar,               \
                                            const float* scale, float eps, float* y_bar_total) {             \
    GatBackwardRowsA<V>(r0, r1, ip, ix, x, src, dst, y, mx, den, y_bar, slope, nnz, n, info, dst_bar,        \
                        out_bar, scale, eps, y_bar_total);                                                   \
  }                                                                                                          \
  ITEMJAX_MULTIVERSION void GatBackwardB##V(int64_t c0, int64_t c1, const int32_t* ip, const int32_t* ix,    \
                                            const float* x, const float* src, const float* info,             \
                                            const float* y_bar, float slope, int64_t nnz, int64_t n,         \
                                            float* x_bar, float* src_bar, const float* a_src,                \
                                            const float* a_dst, const float* dst_bar) {                      \
    GatBackwardRowsB<V>(c0, c1, ip, ix, x, src, info, y_bar, slope, nnz, n, x_bar, src_bar, a_src, a_dst,    \
                        dst_bar);                                                                            \
  }                                                                                                          \
  ITEMJAX_MULTIVERSION void GatScores##V(int64_t r0, int64_t r1, const float* x, const float* a_src,         \
                                         const float* a_dst, float* src, float* dst) {                       \
    GatScoresRows<V>(r0, r1, x, a_src, a_dst, src, dst);                                                     \
  }
ITEMJAX_GAT_FUNCTIONS(2)
ITEMJAX_GAT_FUNCTIONS(4)
ITEMJAX_GAT_FUNCTIONS(8)
ITEMJAX_GAT_FUNCTIONS(16)
#undef ITEMJAX_GAT_FUNCTIONS

struct GatKernels {
  decltype(&GatForward2) forward;
  decltype(&GatBackwardA2) backward_a;
  decltype(&GatBackwardB2) backward_b;
  decltype(&GatScores2) scores;
};

// The kernels for width d (16, 32, 64 or 128), or all nullptr.
GatKernels GatKernelsFor(int64_t d) {
  switch (d) {
    case 16: return {GatForward2, GatBackwardA2, GatBackwardB2, GatScores2};
    case 32: return {GatForward4, GatBackwardA4, GatBackwardB4, GatScores4};
    case 64: return {GatForward8, GatBackwardA8, GatBackwardB8, GatScores8};
    case 128: return {GatForward16, GatBackwardA16, GatBackwardB16, GatScores16};
    default: return {nullptr, nullptr, nullptr, nullptr};
  }
}
#endif

// ---------------------------------------------------------------------------- threads

using itemjax_native::AvailableCpus;
using itemjax_native::EnvThreads;
using itemjax_native::kMaxThreads;

// Threads for `rows` output rows and `work` multiply-adds: `requested` when > 0, else automatic.
int64_t ThreadCount(int64_t requested, int64_t rows, int64_t work) {
  int64_t count = requested;
  if (count <= 0) {
    count = EnvThreads();
    if (count <= 0) count = AvailableCpus();
    count = std::min(count, std::max<int64_t>(1, work / kMinWorkPerThread));
  }
  return std::max<int64_t>(1, std::min({count, rows, kMaxThreads}));
}

// Runs task(t) for t in [0, count): t = 0 on the calling thread, the others on new threads (inline
// when a thread cannot be started). Returns after every task finished.
template <typename Task>
void RunTasks(int64_t count, const Task& task) {
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(std::max<int64_t>(0, count - 1)));
  int64_t next = 1;
  try {
    for (; next < count; ++next) threads.emplace_back([&task, next] { task(next); });
  } catch (const std::exception&) {
    for (; next < count; ++next) task(next);  // e.g. a thread limit: run the rest here
  }
  task(0);
  for (std::thread& thread : threads) thread.join();
}

// Boundaries [0 = b_0 <= b_1 <= ... <= b_count = rows] of `count` ranges of rows with about equal
// cost(r) summed, given the prefix sums cost_prefix(r) = cost of rows [0, r) (non-decreasing).
template <typename Prefix>
std::vector<int64_t> Split(int64_t rows, int64_t count, const Prefix& cost_prefix) {
  std::vector<int64_t> bounds(static_cast<size_t>(count + 1), rows);
  bounds[0] = 0;
  const double total = static_cast<double>(cost_prefix(rows));
  for (int64_t t = 1; t < count; ++t) {
    const double target = total * static_cast<double>(t) / static_cast<double>(count);
    int64_t lo = bounds[t - 1], hi = rows;  // first r in [lo, rows] with cost_prefix(r) >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (static_cast<double>(cost_prefix(mid)) < target) lo = mid + 1; else hi = mid;
    }
    bounds[t] = lo;
  }
  return bounds;
}

// ---------------------------------------------------------------------------- handlers

ffi::Error CheckShapes(const char* name, ffi::AnyBuffer::Dimensions indptr, int64_t nnz, int64_t data_size,
                       ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions y, bool transpose) {
  auto fail = [name](const std::string& what) {
    return ffi::Error::InvalidArgument(std::string(name) + ": " + what);
  };
  if (indptr.size() != 1) return fail("indptr must be 1-D");
  if (x.size() != 2 || y.size() != 2) return fail("x and the output must be 2-D");
  if (x[1] != y[1]) return fail("x and the output must have the same number of columns");
  if (data_size != nnz) return fail("indices and data must have the same length");
  const int64_t m = indptr[0] - 1;  // rows of M
  if (m < 0) return fail("indptr must have at least one element");
  if ((transpose ? x[0] : y[0]) != m) {
    return fail(transpose ? "x must have one row per row of the matrix (len(indptr) - 1)"
                          : "the output must have one row per row of the matrix (len(indptr) - 1)");
  }
  return ffi::Error::Success();
}

template <typename X, typename Acc, ffi::DataType XType, ffi::DataType AccType>
ffi::Error Spmm(ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices, ffi::Buffer<AccType> data,
                ffi::Buffer<XType> x, ffi::ResultBuffer<XType> y, int64_t threads, bool transpose) {
  const char* name = transpose ? "itemjax csr_spmm_t" : "itemjax csr_spmm";
  if (ffi::Error error = CheckShapes(name, indptr.dimensions(), static_cast<int64_t>(indices.element_count()),
                                             static_cast<int64_t>(data.element_count()), x.dimensions(),
                                             y->dimensions(), transpose);
      error.failure()) {
    return error;
  }
  const int64_t m = indptr.dimensions()[0] - 1;
  const int64_t nnz = static_cast<int64_t>(indices.element_count());
  const int64_t d = x.dimensions()[1];
  const int64_t out_rows = y->dimensions()[0];
  const int32_t* ip = indptr.typed_data();
  const int32_t* ix = indices.typed_data();
  const Acc* values = reinterpret_cast<const Acc*>(data.typed_data());
  const X* xs = reinterpret_cast<const X*>(x.typed_data());
  X* ys = reinterpret_cast<X*>(y->typed_data());
  if (out_rows == 0 || d == 0) return ffi::Error::Success();

  constexpr bool kDirect = std::is_same<X, Acc>::value;
  try {
    if (!transpose) {
      const int64_t count = ThreadCount(threads, m, nnz * d);
      auto prefix = [ip, nnz](int64_t r) {
        return std::clamp<int64_t>(ip[r], 0, nnz) + r;  // nonzeros + rows before row r
      };
      const std::vector<int64_t> bounds = count > 1 ? Split(m, count, prefix) : std::vector<int64_t>{0, m};
#if defined(ITEMJAX_FIXED_WIDTH)
      if constexpr (!std::is_same<X, double>::value) {
        if (const auto fixed = FixedForward<X>(d); fixed != nullptr) {
          RunTasks(count, [&](int64_t t) { fixed(bounds[t], bounds[t + 1], ip, ix, values, xs, ys, nnz, x.dimensions()[0]); });
          return ffi::Error::Success();
        }
      }
#endif
      RunTasks(count, [&](int64_t t) {
        std::vector<Acc> acc(kDirect ? 0 : static_cast<size_t>(d));
        Kernels<X>::forward(bounds[t], bounds[t + 1], ip, ix, values, xs, ys, nnz, x.dimensions()[0], d,
                            acc.data());
      });
    } else {
      const int64_t n = out_rows;
      const int64_t count = ThreadCount(threads, n, nnz * d);
      std::vector<int64_t> bounds{0, n};
      if (count > 1) {  // balance by column counts (+1 per output row)
        std::vector<int64_t> column_prefix(static_cast<size_t>(n + 1), 0);
        const int64_t first = std::clamp<int64_t>(ip[0], 0, nnz);
        const int64_t last = std::clamp<int64_t>(ip[m], first, nnz);
        for (int64_t j = first; j < last; ++j) {
          const uint32_t c = static_cast<uint32_t>(ix[j]);
          if (c < static_cast<uint64_t>(n)) ++column_prefix[c + 1];
        }
        for (int64_t c = 0; c < n; ++c) column_prefix[c + 1] += column_prefix[c];
        bounds = Split(n, count, [&column_prefix](int64_t c) { return column_prefix[c] + c; });
      }
      RunTasks(count, [&](int64_t t) {
        const int64_t c0 = bounds[t], c1 = bounds[t + 1];
        std::vector<Acc> acc(kDirect ? 0 : static_cast<size_t>((c1 - c0) * d));
        Kernels<X>::transpose(c0, c1, ip, ix, values, xs, ys, nnz, m, d, acc.data());
      });
    }
  } catch (const std::exception& error) {  // e.g. std::bad_alloc of the scratch
    return ffi::Error::Internal(std::string(name) + ": " + error.what());
  }
  return ffi::Error::Success();
}

// GAT handlers (widths 16, 32, 64, 128; the Python side calls them for those only). Rows are split by
// entries + rows, as the forward product's.
ffi::Error CheckGat(const char* name, ffi::AnyBuffer::Dimensions indptr, int64_t nnz,
                    ffi::AnyBuffer::Dimensions x, int64_t src_size, int64_t dst_size, int64_t d) {
  auto fail = [name](const std::string& what) {
    return ffi::Error::InvalidArgument(std::string(name) + ": " + what);
  };
  if (indptr.size() != 1 || x.size() != 2) return fail("indptr must be 1-D and x 2-D");
  const int64_t n = indptr[0] - 1;
  if (n < 0 || x[0] != n) return fail("x must have one row per row of the (square) matrix");
  if (src_size != n || dst_size != n) return fail("src and dst must have one score per row");
#if defined(ITEMJAX_FIXED_WIDTH)
  if (GatKernelsFor(d).forward == nullptr) return fail("the width of x must be 16, 32, 64 or 128");
#else
  (void)d;
  return fail("this build has no GAT kernels (it needs GCC or Clang)");
#endif
  (void)nnz;
  return ffi::Error::Success();
}

std::vector<int64_t> RowBounds(int64_t count, int64_t rows, const int32_t* ip, int64_t nnz) {
  if (count <= 1) return {0, rows};
  return Split(rows, count, [ip, nnz](int64_t r) { return std::clamp<int64_t>(ip[r], 0, nnz) + r; });
}

ffi::Error GatForwardF32(ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices, ffi::Buffer<ffi::F32> x,
                         ffi::Buffer<ffi::F32> src, ffi::Buffer<ffi::F32> dst, ffi::ResultBuffer<ffi::F32> y,
                         ffi::ResultBuffer<ffi::F32> row_max, ffi::ResultBuffer<ffi::F32> denominator, float slope,
                         int64_t threads) {
  const char* name = "itemjax gat_forward";
  const int64_t nnz = static_cast<int64_t>(indices.element_count());
  const int64_t d = x.dimensions().size() == 2 ? x.dimensions()[1] : 0;
  if (ffi::Error error = CheckGat(name, indptr.dimensions(), nnz, x.dimensions(),
                                  static_cast<int64_t>(src.element_count()),
                                  static_cast<int64_t>(dst.element_count()), d);
      error.failure()) {
    return error;
  }
#if defined(ITEMJAX_FIXED_WIDTH)
  const int64_t n = x.dimensions()[0];
  if (n == 0) return ffi::Error::Success();
  const int32_t* ip = indptr.typed_data();
  const GatKernels kernels = GatKernelsFor(d);
  try {
    const int64_t count = ThreadCount(threads, n, nnz * d);
    const std::vector<int64_t> bounds = RowBounds(count, n, ip, nnz);
    RunTasks(count, [&](int64_t t) {
      kernels.forward(bounds[t], bounds[t + 1], ip, indices.typed_data(), x.typed_data(), src.typed_data(),
                      dst.typed_data(), slope, nnz, n, y->typed_data(), row_max->typed_data(),
                      denominator->typed_data(), 0.0f, nullptr, nullptr);
    });
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string(name) + ": " + error.what());
  }
#endif
  return ffi::Error::Success();
}

ffi::Error GatBackwardF32(ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> src, ffi::Buffer<ffi::F32> dst, ffi::Buffer<ffi::F32> y,
                          ffi::Buffer<ffi::F32> row_max, ffi::Buffer<ffi::F32> denominator,
                          ffi::Buffer<ffi::F32> y_bar, ffi::ResultBuffer<ffi::F32> x_bar,
                          ffi::ResultBuffer<ffi::F32> src_bar, ffi::ResultBuffer<ffi::F32> dst_bar, float slope,
                          int64_t threads) {
  const char* name = "itemjax gat_backward";
  const int64_t nnz = static_cast<int64_t>(indices.element_count());
  const int64_t d = x.dimensions().size() == 2 ? x.dimensions()[1] : 0;
  if (ffi::Error error = CheckGat(name, indptr.dimensions(), nnz, x.dimensions(),
                                  static_cast<int64_t>(src.element_count()),
                                  static_cast<int64_t>(dst.element_count()), d);
      error.failure()) {
    return error;
  }
#if defined(ITEMJAX_FIXED_WIDTH)
  const int64_t n = x.dimensions()[0];
  if (n == 0) return ffi::Error::Success();
  const int32_t* ip = indptr.typed_data();
  const GatKernels kernels = GatKernelsFor(d);
  try {
    std::vector<float> info(static_cast<size_t>(4 * n));  // (dst_r, m_r, 1 / den_r, q_r) per row
    const int64_t count = ThreadCount(threads, n, nnz * d);
    const std::vector<int64_t> bounds = RowBounds(count, n, ip, nnz);
    RunTasks(count, [&](int64_t t) {
      kernels.backward_a(bounds[t], bounds[t + 1], ip, indices.typed_data(), x.typed_data(), src.typed_data(),
                         dst.typed_data(), y.typed_data(), row_max.typed_data(), denominator.typed_data(),
                         y_bar.typed_data(), slope, nnz, n, info.data(), dst_bar->typed_data(), nullptr, nullptr,
                         0.0f, nullptr);
    });
    RunTasks(count, [&](int64_t t) {  // after every row's info is known
      kernels.backward_b(bounds[t], bounds[t + 1], ip, indices.typed_data(), x.typed_data(), src.typed_data(),
                         info.data(), y_bar.typed_data(), slope, nnz, n, x_bar->typed_data(),
                         src_bar->typed_data(), nullptr, nullptr, nullptr);
    });
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string(name) + ": " + error.what());
  }
#endif
  return ffi::Error::Success();
}

// One GAT layer of one head, fused (GatLayerForwardF32 / GatLayerBackwardF32): the scores src = x a_src,
// dst = x a_dst, the attention above (y, the next layer's input), and the row normalisation out_r = y_r / s_r
// with s_r = max(||y_r||, eps) (the layer's output). The backward takes the gradients of both y and out and
// returns those of x (through the attention and the scores) and of the scores; a_src's and a_dst's
// (x^T src_bar, x^T dst_bar) are left to the caller, so that every result is summed in an order that does
// not depend on the thread count.
ffi::Error CheckGatLayer(const char* name, ffi::AnyBuffer::Dimensions indptr, ffi::AnyBuffer::Dimensions x,
                         int64_t a_src_size, int64_t a_dst_size, float eps) {
  const int64_t d = x.size() == 2 ? x[1] : 0;
  const int64_t n = indptr.size() == 1 ? indptr[0] - 1 : -1;
  if (ffi::Error error = CheckGat(name, indptr, 0, x, n, n, d); error.failure()) return error;
  if (a_src_size != d || a_dst_size != d) {
    return ffi::Error::InvalidArgument(std::string(name) + ": a_src and a_dst must have one weight per column of x");
  }
  if (!(eps > 0.0f)) return ffi::Error::InvalidArgument(std::string(name) + ": eps must be > 0");
  return ffi::Error::Success();
}

// Both GAT layer handlers: the shape checks, then run(n, nnz, d, kernels, count, bounds) over `count` threads'
// row ranges (only where the GAT kernels are built), an exception from it (e.g. std::bad_alloc) turned into an error.
template <typename Run>
ffi::Error GatLayerCall(const char* name, ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices,
                        ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> a_src, ffi::Buffer<ffi::F32> a_dst, float eps,
                        int64_t threads, const Run& run) {
  if (ffi::Error error = CheckGatLayer(name, indptr.dimensions(), x.dimensions(),
                                       static_cast<int64_t>(a_src.element_count()),
                                       static_cast<int64_t>(a_dst.element_count()), eps);
      error.failure()) {
    return error;
  }
#if defined(ITEMJAX_FIXED_WIDTH)
  const int64_t n = x.dimensions()[0], d = x.dimensions()[1];
  if (n == 0) return ffi::Error::Success();
  const int64_t nnz = static_cast<int64_t>(indices.element_count());
  try {
    const int64_t count = ThreadCount(threads, n, nnz * d);
    run(n, nnz, d, GatKernelsFor(d), count, RowBounds(count, n, indptr.typed_data(), nnz));
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string(name) + ": " + error.what());
  }
#else
  (void)indices, (void)threads, (void)run;
#endif
  return ffi::Error::Success();
}

ffi::Error GatLayerForwardF32(ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> a_src, ffi::Buffer<ffi::F32> a_dst,
                              ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> out,
                              ffi::ResultBuffer<ffi::F32> src, ffi::ResultBuffer<ffi::F32> dst,
                              ffi::ResultBuffer<ffi::F32> row_max, ffi::ResultBuffer<ffi::F32> denominator,
                              ffi::ResultBuffer<ffi::F32> scale, float slope, float eps, int64_t threads) {
  auto run = [&](int64_t n, int64_t nnz, int64_t, const auto& kernels, int64_t count, const auto& bounds) {
    RunTasks(count, [&](int64_t t) {
      kernels.scores(bounds[t], bounds[t + 1], x.typed_data(), a_src.typed_data(), a_dst.typed_data(),
                     src->typed_data(), dst->typed_data());
    });
    RunTasks(count, [&](int64_t t) {  // after every score is known
      kernels.forward(bounds[t], bounds[t + 1], indptr.typed_data(), indices.typed_data(), x.typed_data(),
                      src->typed_data(), dst->typed_data(), slope, nnz, n, y->typed_data(), row_max->typed_data(),
                      denominator->typed_data(), eps, scale->typed_data(), out->typed_data());
    });
  };
  return GatLayerCall("itemjax gat_layer_forward", indptr, indices, x, a_src, a_dst, eps, threads, run);
}

ffi::Error GatLayerBackwardF32(ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> a_src, ffi::Buffer<ffi::F32> a_dst, ffi::Buffer<ffi::F32> src,
                               ffi::Buffer<ffi::F32> dst, ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> row_max,
                               ffi::Buffer<ffi::F32> denominator, ffi::Buffer<ffi::F32> scale,
                               ffi::Buffer<ffi::F32> y_bar, ffi::Buffer<ffi::F32> out_bar,
                               ffi::ResultBuffer<ffi::F32> x_bar, ffi::ResultBuffer<ffi::F32> src_bar,
                               ffi::ResultBuffer<ffi::F32> dst_bar, float slope, float eps, int64_t threads) {
  auto run = [&](int64_t n, int64_t nnz, int64_t d, const auto& kernels, int64_t count, const auto& bounds) {
    std::vector<float> info(static_cast<size_t>(4 * n));  // (dst_r, m_r, 1 / den_r, q_r) per row
    std::unique_ptr<float[]> y_bar_total(new float[static_cast<size_t>(n * d)]);  // y's, through out as well
    const int32_t* ip = indptr.typed_data();
    RunTasks(count, [&](int64_t t) {
      kernels.backward_a(bounds[t], bounds[t + 1], ip, indices.typed_data(), x.typed_data(), src.typed_data(),
                         dst.typed_data(), y.typed_data(), row_max.typed_data(), denominator.typed_data(),
                         y_bar.typed_data(), slope, nnz, n, info.data(), dst_bar->typed_data(),
                         out_bar.typed_data(), scale.typed_data(), eps, y_bar_total.get());
    });
    RunTasks(count, [&](int64_t t) {  // after every row's info, y_bar_total and dst_bar are known
      kernels.backward_b(bounds[t], bounds[t + 1], ip, indices.typed_data(), x.typed_data(), src.typed_data(),
                         info.data(), y_bar_total.get(), slope, nnz, n, x_bar->typed_data(),
                         src_bar->typed_data(), a_src.typed_data(), a_dst.typed_data(), dst_bar->typed_data());
    });
  };
  return GatLayerCall("itemjax gat_layer_backward", indptr, indices, x, a_src, a_dst, eps, threads, run);
}

template <typename X, typename Acc, ffi::DataType XType, ffi::DataType AccType>
ffi::Error Forward(ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices, ffi::Buffer<AccType> data,
                   ffi::Buffer<XType> x, ffi::ResultBuffer<XType> y, int64_t threads) {
  return Spmm<X, Acc, XType, AccType>(indptr, indices, data, x, y, threads, false);
}

template <typename X, typename Acc, ffi::DataType XType, ffi::DataType AccType>
ffi::Error Transpose(ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices, ffi::Buffer<AccType> data,
                     ffi::Buffer<XType> x, ffi::ResultBuffer<XType> y, int64_t threads) {
  return Spmm<X, Acc, XType, AccType>(indptr, indices, data, x, y, threads, true);
}

}  // namespace

#define ITEMJAX_BIND(XTYPE, ACCTYPE)          \
  ffi::Ffi::Bind()                            \
      .Arg<ffi::Buffer<ffi::S32>>()           \
      .Arg<ffi::Buffer<ffi::S32>>()           \
      .Arg<ffi::Buffer<ffi::ACCTYPE>>()       \
      .Arg<ffi::Buffer<ffi::XTYPE>>()         \
      .Ret<ffi::Buffer<ffi::XTYPE>>()         \
      .Attr<int64_t>("threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxCsrSpmmF32, (Forward<float, float, ffi::F32, ffi::F32>), ITEMJAX_BIND(F32, F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxCsrSpmmBf16, (Forward<Bf16, float, ffi::BF16, ffi::F32>), ITEMJAX_BIND(BF16, F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxCsrSpmmF64, (Forward<double, double, ffi::F64, ffi::F64>), ITEMJAX_BIND(F64, F64));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxCsrSpmmTF32, (Transpose<float, float, ffi::F32, ffi::F32>), ITEMJAX_BIND(F32, F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxCsrSpmmTBf16, (Transpose<Bf16, float, ffi::BF16, ffi::F32>), ITEMJAX_BIND(BF16, F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxCsrSpmmTF64, (Transpose<double, double, ffi::F64, ffi::F64>), ITEMJAX_BIND(F64, F64));

// GAT: (indptr, indices, x, src, dst[, y, row_max, den, y_bar]) -> three float32 results; slope, threads.
#define ITEMJAX_F32 ffi::Buffer<ffi::F32>
#define ITEMJAX_GAT_INPUTS                                                        \
  ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::S32>>().Arg<ffi::Buffer<ffi::S32>>() \
      .Arg<ITEMJAX_F32>().Arg<ITEMJAX_F32>().Arg<ITEMJAX_F32>()
#define ITEMJAX_GAT_RESULTS \
  .Ret<ITEMJAX_F32>().Ret<ITEMJAX_F32>().Ret<ITEMJAX_F32>().Attr<float>("slope").Attr<int64_t>("threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxGatForwardF32, GatForwardF32, ITEMJAX_GAT_INPUTS ITEMJAX_GAT_RESULTS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxGatBackwardF32, GatBackwardF32,
                              ITEMJAX_GAT_INPUTS.Arg<ITEMJAX_F32>().Arg<ITEMJAX_F32>().Arg<ITEMJAX_F32>()
                                  .Arg<ITEMJAX_F32>() ITEMJAX_GAT_RESULTS);

// GAT layer: (indptr, indices, x, a_src, a_dst) -> (y, out, src, dst, row_max, den, scale); backward: those inputs
// plus (src, dst, y, row_max, den, scale, y_bar, out_bar) -> (x_bar, src_bar, dst_bar); slope, eps, threads.
#define ITEMJAX_GAT_LAYER_ATTRS .Attr<float>("slope").Attr<float>("eps").Attr<int64_t>("threads")
XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxGatLayerForwardF32, GatLayerForwardF32,
                              ITEMJAX_GAT_INPUTS.Ret<ITEMJAX_F32>().Ret<ITEMJAX_F32>().Ret<ITEMJAX_F32>()
                                  .Ret<ITEMJAX_F32>().Ret<ITEMJAX_F32>().Ret<ITEMJAX_F32>().Ret<ITEMJAX_F32>()
                                  ITEMJAX_GAT_LAYER_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ItemjaxGatLayerBackwardF32, GatLayerBackwardF32,
                              ITEMJAX_GAT_INPUTS.Arg<ITEMJAX_F32>().Arg<ITEMJAX_F32>().Arg<ITEMJAX_F32>()
                                  .Arg<ITEMJAX_F32>().Arg<ITEMJAX_F32>().Arg<ITEMJAX_F32>().Arg<ITEMJAX_F32>()
                                  .Arg<ITEMJAX_F32>()
                                  .Ret<ITEMJAX_F32>().Ret<ITEMJAX_F32>().Ret<ITEMJAX_F32>() ITEMJAX_GAT_LAYER_ATTRS);

// ABI version of this library's handlers (their arguments and attributes), checked by the loader so
// that a stale build from an older checkout is rebuilt rather than called with the wrong signature.
extern "C" int ItemjaxNativeAbiVersion() { return 3; }
