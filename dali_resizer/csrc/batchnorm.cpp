// BatchNorm for the resizer's output-resolution layers on the CPU, channels_last, with the
// LeakyReLU after it and the residual added to it done in the same pass:
//
//   y = lrelu(x * scale + offset) + residual,   scale = gamma * invstd,  offset = beta - mean * scale
//
// (slope 1: no activation; residual optional). PyTorch runs BatchNorm, LeakyReLU and the addition as
// three passes over memory, and its channels_last bfloat16 BatchNorm is slow; here forward is one
// pass for the statistics (bn_stats) and one for y, and backward one pass for the two sums and one
// for the input gradient, each reading x and recomputing x * scale + offset instead of storing it.
// Sums are taken per row in float and added up across rows in double, around a per-channel shift
// (bn_stats) or the mean (bn_backward).

#include "kernels.h"

namespace dali_resizer {
namespace {

template <int C, typename T>
void stats_impl(const at::Tensor& x, const at::Tensor& shift_, at::Tensor& sums, at::Tensor& sqs) {
  const int64_t rows = x.size(0) * x.size(1), W = x.size(2);
  const T* xp = x.data_ptr<T>();
  const Vec<C> shift = load<C>(shift_.data_ptr<float>());
  std::vector<Sums<C>> per_thread(at::get_num_threads());
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    Sums<C>& st = per_thread[at::get_thread_num()];
    for (int64_t r = begin; r < end; ++r) {
      const T* in = xp + r * W * C;
      Vec<C> s0{}, s1{}, q0{}, q1{};  // two chains: even and odd pixels
      int64_t i = 0;
      for (; i + 1 < W; i += 2) {
        const Vec<C> e0 = load<C>(in + i * C) - shift, e1 = load<C>(in + (i + 1) * C) - shift;
        s0 += e0;
        q0 += e0 * e0;
        s1 += e1;
        q1 += e1 * e1;
      }
      if (i < W) {
        const Vec<C> e = load<C>(in + i * C) - shift;
        s0 += e;
        q0 += e * e;
      }
      add_row<C>(st, s0 + s1, q0 + q1);
    }
  });
  add_up<C>(per_thread, sums, sqs);
}

template <int C>
inline Vec<C> affine_act(Vec<C> x, Vec<C> scale, Vec<C> offset, float slope, bool act) {
  const Vec<C> z = x * scale + offset;
  return act ? lrelu<C>(z, slope) : z;
}

template <int C, typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& scale_, const at::Tensor& offset_, float slope,
                  const at::Tensor& residual, at::Tensor& y) {
  const int64_t n = x.numel() / C;
  const T* xp = x.data_ptr<T>();
  const T* rp = residual.defined() ? residual.data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  const Vec<C> scale = load<C>(scale_.data_ptr<float>()), offset = load<C>(offset_.data_ptr<float>());
  const bool act = slope != 1.f;
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Vec<C> v = affine_act<C>(load<C>(xp + i * C), scale, offset, slope, act);
      if (rp) v += load<C>(rp + i * C);
      store<C>(yp + i * C, v);
    }
  });
}

template <int C, typename T, typename G>
void backward_impl(const at::Tensor& g, const at::Tensor& x, const at::Tensor& scale_, const at::Tensor& offset_,
                   float slope, const at::Tensor& mean_, const at::Tensor& invstd_, bool batch_stats,
                   at::Tensor& grad_x, at::Tensor& sum_g, at::Tensor& sum_gx) {
  const int64_t rows = x.size(0) * x.size(1), W = x.size(2);
  const int64_t count = rows * W;
  const T* xp = x.data_ptr<T>();
  const G* gp = g.data_ptr<G>();
  T* gxp = grad_x.data_ptr<T>();
  const Vec<C> scale = load<C>(scale_.data_ptr<float>()), offset = load<C>(offset_.data_ptr<float>());
  const Vec<C> mean = load<C>(mean_.data_ptr<float>());
  const bool act = slope != 1.f;
  // the gradient reaching z = x * scale + offset through the LeakyReLU
  auto grad_z = [&](Vec<C> xv, Vec<C> gv) {
    return act ? ((xv * scale + offset) > 0.f ? gv : gv * slope) : gv;
  };
  // pass 1: sum of gz and of gz * (x - mean)
  std::vector<Sums<C>> per_thread(at::get_num_threads());
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    Sums<C>& st = per_thread[at::get_thread_num()];
    for (int64_t r = begin; r < end; ++r) {
      Vec<C> s0{}, s1{}, q0{}, q1{};
      int64_t i = r * W;
      const int64_t stop = i + W;
      for (; i + 1 < stop; i += 2) {
        const Vec<C> x0 = load<C>(xp + i * C), x1 = load<C>(xp + (i + 1) * C);
        const Vec<C> g0 = grad_z(x0, load<C>(gp + i * C)), g1 = grad_z(x1, load<C>(gp + (i + 1) * C));
        s0 += g0;
        q0 += g0 * (x0 - mean);
        s1 += g1;
        q1 += g1 * (x1 - mean);
      }
      if (i < stop) {
        const Vec<C> x0 = load<C>(xp + i * C);
        const Vec<C> g0 = grad_z(x0, load<C>(gp + i * C));
        s0 += g0;
        q0 += g0 * (x0 - mean);
      }
      add_row<C>(st, s0 + s1, q0 + q1);
    }
  });
  add_up<C>(per_thread, sum_g, sum_gx);
  // pass 2: gx = scale * (gz - sum_g / count - (x - mean) * invstd^2 * sum_gx / count) with batch
  // statistics, scale * gz with fixed ones
  Vec<C> k_x{}, k_0{};
  if (batch_stats) {
    const float* invstd = invstd_.data_ptr<float>();
    const double* sg = sum_g.data_ptr<double>();
    const double* sgx = sum_gx.data_ptr<double>();
    for (int c = 0; c < C; ++c) {
      const double s = static_cast<double>(scale[c]), is = static_cast<double>(invstd[c]);
      k_x[c] = static_cast<float>(-s * is * is * sgx[c] / count);
      k_0[c] = static_cast<float>(-s * sg[c] / count);
    }
  }
  at::parallel_for(0, rows * W, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Vec<C> xv = load<C>(xp + i * C);
      Vec<C> v = grad_z(xv, load<C>(gp + i * C)) * scale;
      if (batch_stats) v += (xv - mean) * k_x + k_0;
      store<C>(gxp + i * C, v);
    }
  });
}

void check_features(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "batchnorm kernel: CPU tensors only, got ", x.device());
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "batchnorm kernel: ", name, " must be a contiguous (N, H, W, C) tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "batchnorm kernel: float32 or bfloat16 ", name, ", got ", x.scalar_type());
}

void check_channel_vector(const at::Tensor& v, int64_t C, const char* name) {
  TORCH_CHECK(v.scalar_type() == at::kFloat && v.is_contiguous() && v.numel() == C, "batchnorm kernel: ", name,
              " must be a contiguous float32 (", C, ",) tensor");
}

}  // namespace

// (sums, squares): float64 (C,) sums over every pixel of x - shift and (x - shift)^2.
std::vector<at::Tensor> bn_stats(const at::Tensor& x, const at::Tensor& shift) {
  check_features(x, "x");
  const int64_t C = x.size(3);
  check_channel_vector(shift, C, "shift");
  at::Tensor sums = at::zeros({C}, x.options().dtype(at::kDouble));
  at::Tensor sqs = at::zeros({C}, x.options().dtype(at::kDouble));
  KERNEL_DISPATCH_C("batchnorm kernel", C, {
    if (x.scalar_type() == at::kFloat)
      stats_impl<C, float>(x, shift, sums, sqs);
    else
      stats_impl<C, at::BFloat16>(x, shift, sums, sqs);
  });
  return {sums, sqs};
}

// y = lrelu(x * scale + offset) + residual in x's dtype (slope 1: no LeakyReLU; residual: x's shape
// and dtype, or none).
at::Tensor bn_forward(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& offset, double slope,
                      const c10::optional<at::Tensor>& residual) {
  check_features(x, "x");
  const int64_t C = x.size(3);
  check_channel_vector(scale, C, "scale");
  check_channel_vector(offset, C, "offset");
  at::Tensor res = residual.has_value() ? *residual : at::Tensor();
  if (res.defined()) {
    check_features(res, "residual");
    TORCH_CHECK(res.sizes() == x.sizes() && res.scalar_type() == x.scalar_type(),
                "batchnorm kernel: residual of shape ", res.sizes(), " and dtype ", res.scalar_type(),
                " does not match x's ", x.sizes(), " ", x.scalar_type());
  }
  at::Tensor y = at::empty_like(x);
  KERNEL_DISPATCH_C("batchnorm kernel", C, {
    if (x.scalar_type() == at::kFloat)
      forward_impl<C, float>(x, scale, offset, static_cast<float>(slope), res, y);
    else
      forward_impl<C, at::BFloat16>(x, scale, offset, static_cast<float>(slope), res, y);
  });
  return y;
}

// (grad_x, sum_g, sum_gx) for bn_forward's output gradient g: grad_x in x's dtype; sum_g (BatchNorm's
// bias gradient) and sum_gx (its weight gradient times 1 / invstd) float64, the sums over every pixel
// of gz and gz * (x - mean), gz the gradient reaching x * scale + offset. batch_stats: x's own
// statistics were used (mean, invstd), so their gradient is part of grad_x.
std::vector<at::Tensor> bn_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& scale,
                                    const at::Tensor& offset, double slope, const at::Tensor& mean,
                                    const at::Tensor& invstd, bool batch_stats) {
  check_features(x, "x");
  check_features(g, "gradient");
  const int64_t C = x.size(3);
  TORCH_CHECK(g.sizes() == x.sizes(), "batchnorm kernel: gradient of shape ", g.sizes(), " does not match x's ",
              x.sizes());
  TORCH_CHECK(g.scalar_type() == at::kFloat || g.scalar_type() == x.scalar_type(),
              "batchnorm kernel: gradient must be float32 or x's dtype");
  check_channel_vector(scale, C, "scale");
  check_channel_vector(offset, C, "offset");
  check_channel_vector(mean, C, "mean");
  check_channel_vector(invstd, C, "invstd");
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor sum_g = at::zeros({C}, x.options().dtype(at::kDouble));
  at::Tensor sum_gx = at::zeros({C}, x.options().dtype(at::kDouble));
  const float s = static_cast<float>(slope);
  KERNEL_DISPATCH_C("batchnorm kernel", C, {
    if (x.scalar_type() == at::kFloat)
      backward_impl<C, float, float>(g, x, scale, offset, s, mean, invstd, batch_stats, grad_x, sum_g, sum_gx);
    else if (g.scalar_type() == at::kFloat)
      backward_impl<C, at::BFloat16, float>(g, x, scale, offset, s, mean, invstd, batch_stats, grad_x, sum_g, sum_gx);
    else
      backward_impl<C, at::BFloat16, at::BFloat16>(g, x, scale, offset, s, mean, invstd, batch_stats, grad_x, sum_g,
                                                   sum_gx);
  });
  return {grad_x, sum_g, sum_gx};
}

}  // namespace dali_resizer
