// Shared by the resizer's CPU kernels (stem.cpp, batchnorm.cpp): one pixel's C channels
// (channels_last) as one GCC/Clang vector, its float32 / bfloat16 loads and stores, LeakyReLU, and
// the entry points the Python module binds.

#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace dali_resizer {

// One pixel's C channels as one GCC/Clang vector (C = 16 floats: one AVX-512 register).
template <int C>
struct VecTypes {
  typedef float f32 __attribute__((vector_size(C * sizeof(float))));
  typedef uint32_t u32 __attribute__((vector_size(C * sizeof(uint32_t))));
  typedef uint16_t u16 __attribute__((vector_size(C * sizeof(uint16_t))));
};
template <int C>
using Vec = typename VecTypes<C>::f32;
template <int C>
using U32 = typename VecTypes<C>::u32;
template <int C>
using U16 = typename VecTypes<C>::u16;

template <int C>
inline Vec<C> load(const float* p) {
  Vec<C> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int C>
inline Vec<C> load(const at::BFloat16* p) {
  U16<C> h;
  std::memcpy(&h, p, sizeof(h));
  U32<C> u = __builtin_convertvector(h, U32<C>) << 16;
  Vec<C> v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

template <int C>
inline void store(float* p, Vec<C> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <int C>
inline void store(at::BFloat16* p, Vec<C> v) {  // round to nearest even, NaN kept a NaN
  U32<C> u;
  std::memcpy(&u, &v, sizeof(u));
  U32<C> rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  U32<C> nan = U32<C>{} + 0x7FC0u;
  U32<C> bits = (v != v) ? nan : rounded;
  U16<C> h = __builtin_convertvector(bits, U16<C>);
  std::memcpy(p, &h, sizeof(h));
}

template <int C>
inline Vec<C> lrelu(Vec<C> v, float slope) {
  return v > 0.f ? v : v * slope;
}

// Two per-channel sums, one per thread, in float64; a row's float sums are added to them.
template <int C>
struct Sums {
  double s[2][C] = {};
};

template <int C>
inline void add_row(Sums<C>& st, Vec<C> s, Vec<C> q) {
  for (int c = 0; c < C; ++c) {
    st.s[0][c] += s[c];
    st.s[1][c] += q[c];
  }
}

// Adds the threads' sums to two float64 (C,) tensors.
template <int C>
void add_up(const std::vector<Sums<C>>& per_thread, at::Tensor& first, at::Tensor& second) {
  double* a = first.data_ptr<double>();
  double* b = second.data_ptr<double>();
  for (const Sums<C>& st : per_thread) {
    for (int c = 0; c < C; ++c) {
      a[c] += st.s[0][c];
      b[c] += st.s[1][c];
    }
  }
}

#define KERNEL_DISPATCH_C(NAME, C_VALUE, ...)                                       \
  switch (C_VALUE) {                                                                \
    case 8: { constexpr int C = 8; __VA_ARGS__; break; }                            \
    case 16: { constexpr int C = 16; __VA_ARGS__; break; }                          \
    case 32: { constexpr int C = 32; __VA_ARGS__; break; }                          \
    default: TORCH_CHECK(false, NAME ": 8, 16 or 32 channels, got ", C_VALUE);      \
  }

// batchnorm.cpp
std::vector<at::Tensor> bn_stats(const at::Tensor& x, const at::Tensor& shift);
at::Tensor bn_forward(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& offset, double slope,
                      const c10::optional<at::Tensor>& residual);
std::vector<at::Tensor> bn_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& scale,
                                    const at::Tensor& offset, double slope, const at::Tensor& mean,
                                    const at::Tensor& invstd, bool batch_stats);

}  // namespace dali_resizer
