// Fused CPU kernel for the learnable resizer's input-resolution stem.
//
// The stem is conv7x7 -> LeakyReLU -> conv1x1 -> LeakyReLU -> BatchNorm -> resize. The 7x7
// convolution stays with oneDNN; this file does everything after it in one pass over the
// convolution's output t (channels_last, so one pixel is C contiguous values):
//
//   a = lrelu(t);  b = W a + bias;  d = lrelu(b)
//
// and, in the same pass, the per-channel sums BatchNorm's statistics need and either d itself or
// its 2x2 average (the bilinear, align_corners=False resize to exactly half the size). Backward
// recomputes a, b, d from t (16 multiply-adds a pixel, cheaper than reading them back) and returns
// the gradients of t, W and bias. The full-resolution maps a, b, d and BatchNorm's output are never
// stored: only t is, for backward.
//
// Sums are taken per row in float and added up across rows in double; BatchNorm's sums are taken
// around a per-channel shift (a value close to the mean) so that a large mean does not cancel the
// variance.

#include "kernels.h"

#include <cmath>
#include <vector>

namespace dali_resizer {
namespace {

// Per-channel constants, loaded once.
template <int C>
struct Weights {
  Vec<C> wt[C];  // wt[i][o] = W[o][i]: column i of W
  Vec<C> w[C];   // w[o][i] = W[o][i]: row o of W
  Vec<C> bias;
};

template <int C>
Weights<C> weights(const at::Tensor& w, const at::Tensor& bias) {
  Weights<C> ws;
  const float* wp = w.data_ptr<float>();
  for (int o = 0; o < C; ++o) {
    ws.w[o] = load<C>(wp + o * C);
    for (int i = 0; i < C; ++i) ws.wt[i][o] = wp[o * C + i];
  }
  ws.bias = load<C>(bias.data_ptr<float>());
  return ws;
}

// sum_i v[i] * m[i] with v in memory (each v[i] one broadcast load, no lane shuffles) and the C
// vectors m in registers, in four independent chains of multiply-adds (one chain of C would wait
// on each add's latency).
template <int C>
inline Vec<C> dot(const float* v, const Vec<C>* m) {
  static_assert(C % 4 == 0, "C must be a multiple of 4");
  Vec<C> s0 = v[0] * m[0], s1 = v[1] * m[1], s2 = v[2] * m[2], s3 = v[3] * m[3];
  for (int i = 4; i < C; i += 4) {
    s0 += v[i] * m[i];
    s1 += v[i + 1] * m[i + 1];
    s2 += v[i + 2] * m[i + 2];
    s3 += v[i + 3] * m[i + 3];
  }
  return (s0 + s1) + (s2 + s3);
}

// One row of pixels: a = lrelu(t) into the buffer `a` (float, W x C).
template <int C, typename T>
inline void row_activations(const T* in, int64_t W, float slope, float* a) {
  for (int64_t x = 0; x < W; ++x) store<C>(a + x * C, lrelu<C>(load<C>(in + x * C), slope));
}

template <int C>
struct Sums {  // per thread, float64
  double s[2][C] = {};
};

// Forward. pool: write the 2x2 average of d (H, W even); else write d.
template <int C, typename T>
void forward_impl(const at::Tensor& t, const at::Tensor& w, const at::Tensor& bias, float slope,
                  const at::Tensor& shift_, bool pool, at::Tensor& out, at::Tensor& sums, at::Tensor& sqs) {
  const int64_t N = t.size(0), H = t.size(1), W = t.size(2);
  const T* tp = t.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const Weights<C> ws = weights<C>(w, bias);
  const Vec<C> shift = load<C>(shift_.data_ptr<float>());
  const int64_t rows = pool ? N * (H / 2) : N * H;  // a task: one output row
  std::vector<Sums<C>> per_thread(at::get_num_threads());

  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    Sums<C>& st = per_thread[at::get_thread_num()];
    std::vector<float> a_buf(W * C), avg_buf(pool ? (W / 2) * C : 0);
    float* a = a_buf.data();
    float* avg = avg_buf.data();
    Vec<C> wt[C];  // local copies: the compiler keeps them in registers across the buffer stores
    for (int i = 0; i < C; ++i) wt[i] = ws.wt[i];
    const Vec<C> b0 = ws.bias;
    for (int64_t r = begin; r < end; ++r) {
      Vec<C> s{}, q{};
      const int64_t n_in = pool ? 2 : 1;
      for (int64_t k = 0; k < n_in; ++k) {
        const int64_t in_row = pool ? (r / (H / 2)) * H + 2 * (r % (H / 2)) + k : r;
        row_activations<C>(tp + in_row * W * C, W, slope, a);
        for (int64_t x = 0; x < W; ++x) {
          const Vec<C> d = lrelu<C>(dot<C>(a + x * C, wt) + b0, slope);
          const Vec<C> e = d - shift;
          s += e;
          q += e * e;
          if (!pool) {
            store<C>(op + (r * W + x) * C, d);
          } else {
            float* av = avg + (x / 2) * C;
            const Vec<C> prev = (k == 0 && x % 2 == 0) ? Vec<C>{} : load<C>(av);
            store<C>(av, prev + d);
          }
        }
      }
      if (pool) {
        T* o = op + r * (W / 2) * C;
        for (int64_t x = 0; x < W / 2; ++x) store<C>(o + x * C, load<C>(avg + x * C) * 0.25f);
      }
      for (int c = 0; c < C; ++c) {
        st.s[0][c] += s[c];
        st.s[1][c] += q[c];
      }
    }
  });
  double* sp = sums.data_ptr<double>();
  double* qp = sqs.data_ptr<double>();
  for (const Sums<C>& st : per_thread) {
    for (int c = 0; c < C; ++c) {
      sp[c] += st.s[0][c];
      qp[c] += st.s[1][c];
    }
  }
}

constexpr int kIn = 3;  // the first convolution, when its weight gradient is taken here: 3 -> C, 7x7, padding 3
constexpr int kSize = 7;

template <int C>
struct Grads {  // per thread, float64
  double w[C][C] = {};  // w[o][i]
  double bias[C] = {};
  double w1[C][kIn][kSize][kSize] = {};
  double b1[C] = {};
};

// The first convolution's weight gradient from one row of its output gradient gt (float, W x C):
// for each kernel row ky, the input row y + ky - 3 (zero-padded into xpad) times gt, its 21 (kx, c)
// accumulators in registers.
template <int C, typename T>
inline void conv_weight_grad_row(const T* x, int64_t H, int64_t W, int64_t n, int64_t y, const float* gt, float* xpad,
                                 Grads<C>& gr) {
  constexpr int P = kSize / 2;
  for (int ky = 0; ky < kSize; ++ky) {
    const int64_t iy = y + ky - P;
    if (iy < 0 || iy >= H) continue;
    const T* xr = x + ((n * H + iy) * W) * kIn;
    for (int j = 0; j < P * kIn; ++j) xpad[j] = xpad[(W + P) * kIn + j] = 0.f;
    for (int64_t j = 0; j < W * kIn; ++j) xpad[P * kIn + j] = static_cast<float>(xr[j]);
    Vec<C> acc[kSize * kIn] = {};
    for (int64_t px = 0; px < W; ++px) {
      const Vec<C> g = load<C>(gt + px * C);
      const float* xp = xpad + px * kIn;
      for (int j = 0; j < kSize * kIn; ++j) acc[j] += xp[j] * g;  // j = kx * kIn + c
    }
    for (int kx = 0; kx < kSize; ++kx)
      for (int c = 0; c < kIn; ++c)
        for (int o = 0; o < C; ++o) gr.w1[o][c][ky][kx] += acc[kx * kIn + c][o];
  }
}

// Backward. g: the gradient reaching d through the resize (pool: of the 2x2 average, output size;
// else of d, input size). BatchNorm adds slope_d * d + offset_d to d's gradient (its statistics'
// part, affine in d per channel). Per row, in three passes over buffers that stay in cache:
// a and the gradient of b; the gradient of t; the gradient of W (its C accumulators in registers).
template <int C, typename T, typename G>
void backward_impl(const at::Tensor& t, const at::Tensor& w, const at::Tensor& bias, float slope,
                   const at::Tensor& g_, const at::Tensor& slope_d_, const at::Tensor& offset_d_, bool pool,
                   const at::Tensor& x_, at::Tensor& grad_t, at::Tensor& grad_w, at::Tensor& grad_bias,
                   at::Tensor& grad_w1, at::Tensor& grad_b1) {
  const int64_t N = t.size(0), H = t.size(1), W = t.size(2);
  const T* tp = t.data_ptr<T>();
  T* gtp = grad_t.defined() ? grad_t.data_ptr<T>() : nullptr;
  const T* xp = x_.defined() ? x_.data_ptr<T>() : nullptr;
  const G* gp = g_.data_ptr<G>();
  const Weights<C> ws = weights<C>(w, bias);
  const Vec<C> slope_d = load<C>(slope_d_.data_ptr<float>());
  const Vec<C> offset_d = load<C>(offset_d_.data_ptr<float>());
  const float k = pool ? 0.25f : 1.f;
  std::vector<Grads<C>> per_thread(at::get_num_threads());

  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    Grads<C>& gr = per_thread[at::get_thread_num()];
    std::vector<float> a_buf(W * C), gb_buf(W * C), gt_buf(xp ? W * C : 0), xpad_buf(xp ? (W + kSize) * kIn : 0);
    float* a = a_buf.data();
    float* gbs = gb_buf.data();
    float* gts = gt_buf.data();
    Vec<C> m[C];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, y = r % H;
      const T* in = tp + r * W * C;
      const G* grow = pool ? gp + (n * (H / 2) + y / 2) * (W / 2) * C : gp + r * W * C;
      row_activations<C>(in, W, slope, a);
      // a -> b, d; the gradient reaching b
      for (int i = 0; i < C; ++i) m[i] = ws.wt[i];
      Vec<C> gbias{};
      for (int64_t x = 0; x < W; ++x) {
        const Vec<C> b = dot<C>(a + x * C, m) + ws.bias;
        const Vec<C> d = lrelu<C>(b, slope);
        const Vec<C> gd = k * load<C>(grow + (pool ? x / 2 : x) * C) + slope_d * d + offset_d;
        const Vec<C> gb = b > 0.f ? gd : gd * slope;
        gbias += gb;
        store<C>(gbs + x * C, gb);
      }
      // the gradient of t: W^T gb through the first LeakyReLU
      for (int o = 0; o < C; ++o) m[o] = ws.w[o];
      Vec<C> gb1{};
      for (int64_t x = 0; x < W; ++x) {
        const Vec<C> ga = dot<C>(gbs + x * C, m);
        const Vec<C> gt = load<C>(in + x * C) > 0.f ? ga : ga * slope;
        if (gtp) store<C>(gtp + (r * W + x) * C, gt);
        if (xp) {
          store<C>(gts + x * C, gt);
          gb1 += gt;
        }
      }
      if (xp) {
        conv_weight_grad_row<C>(xp, H, W, n, y, gts, xpad_buf.data(), gr);
        for (int o = 0; o < C; ++o) gr.b1[o] += gb1[o];
      }
      // the gradient of W: sum over the row of gb a^T, m[i][o] = d/dW[o][i]
      for (int i = 0; i < C; ++i) m[i] = Vec<C>{};
      for (int64_t x = 0; x < W; ++x) {
        const Vec<C> gb = load<C>(gbs + x * C);
        const float* ax = a + x * C;
        for (int i = 0; i < C; ++i) m[i] += ax[i] * gb;
      }
      for (int o = 0; o < C; ++o) {
        gr.bias[o] += gbias[o];
        for (int i = 0; i < C; ++i) gr.w[o][i] += m[i][o];
      }
    }
  });
  Grads<C>& total = per_thread[0];
  for (size_t k = 1; k < per_thread.size(); ++k) {
    const Grads<C>& gr = per_thread[k];
    for (int o = 0; o < C; ++o) {
      total.bias[o] += gr.bias[o];
      total.b1[o] += gr.b1[o];
      for (int i = 0; i < C; ++i) total.w[o][i] += gr.w[o][i];
      for (int j = 0; j < kIn * kSize * kSize; ++j) (&total.w1[o][0][0][0])[j] += (&gr.w1[o][0][0][0])[j];
    }
  }
  float* gwp = grad_w.data_ptr<float>();
  float* gbp = grad_bias.data_ptr<float>();
  for (int o = 0; o < C; ++o) {
    gbp[o] = static_cast<float>(total.bias[o]);
    for (int i = 0; i < C; ++i) gwp[o * C + i] = static_cast<float>(total.w[o][i]);
  }
  if (xp) {
    float* gw1p = grad_w1.data_ptr<float>();
    float* gb1p = grad_b1.data_ptr<float>();
    for (int o = 0; o < C; ++o) {
      gb1p[o] = static_cast<float>(total.b1[o]);
      for (int j = 0; j < kIn * kSize * kSize; ++j) gw1p[o * kIn * kSize * kSize + j] = static_cast<float>((&total.w1[o][0][0][0])[j]);
    }
  }
}

void check_inputs(const at::Tensor& t, const at::Tensor& w, const at::Tensor& bias, bool pool) {
  TORCH_CHECK(t.device().is_cpu(), "stem kernel: CPU tensors only, got ", t.device());
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(), "stem kernel: t must be a contiguous (N, H, W, C) tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16,
              "stem kernel: float32 or bfloat16 features, got ", t.scalar_type());
  const int64_t C = t.size(3);
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.dim() == 2 && w.size(0) == C && w.size(1) == C,
              "stem kernel: W must be a contiguous float32 (C, C) matrix");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.numel() == C, "stem kernel: bias must be float32 (C,)");
  TORCH_CHECK(!pool || (t.size(1) % 2 == 0 && t.size(2) % 2 == 0), "stem kernel: 2x2 average needs even H and W");
}

}  // namespace

// Returns (out, sums, squares): out is d (N, H, W, C) or its 2x2 average (N, H/2, W/2, C) in t's dtype;
// sums and squares are float64 (C,) sums over every pixel of d - shift and (d - shift)^2.
std::vector<at::Tensor> stem_forward(const at::Tensor& t, const at::Tensor& w, const at::Tensor& bias, double slope,
                                     const at::Tensor& shift, bool pool) {
  check_inputs(t, w, bias, pool);
  const int64_t N = t.size(0), H = t.size(1), W = t.size(2), C = t.size(3);
  TORCH_CHECK(shift.scalar_type() == at::kFloat && shift.numel() == C, "stem kernel: shift must be float32 (C,)");
  at::Tensor out = pool ? at::empty({N, H / 2, W / 2, C}, t.options()) : at::empty_like(t);
  at::Tensor sums = at::zeros({C}, t.options().dtype(at::kDouble));
  at::Tensor sqs = at::zeros({C}, t.options().dtype(at::kDouble));
  at::Tensor sh = shift.contiguous();
  KERNEL_DISPATCH_C("stem kernel", C, {
    if (t.scalar_type() == at::kFloat)
      forward_impl<C, float>(t, w, bias, static_cast<float>(slope), sh, pool, out, sums, sqs);
    else
      forward_impl<C, at::BFloat16>(t, w, bias, static_cast<float>(slope), sh, pool, out, sums, sqs);
  });
  return {out, sums, sqs};
}

// Returns (grad_t, grad_w, grad_bias, grad_w1, grad_b1). x: the first convolution's input (N, H, W, 3)
// in t's dtype, or an undefined tensor; when given, the kernel also returns that convolution's
// weight and bias gradients (float32; it must be 3 -> C, 7x7, padding 3, stride 1) and writes
// grad_t (t's dtype) only if want_grad_t; without x, grad_t is always written and grad_w1, grad_b1
// are undefined.
std::vector<at::Tensor> stem_backward(const at::Tensor& t, const at::Tensor& w, const at::Tensor& bias, double slope,
                                      const at::Tensor& g, const at::Tensor& slope_d, const at::Tensor& offset_d,
                                      bool pool, const c10::optional<at::Tensor>& x, bool want_grad_t) {
  check_inputs(t, w, bias, pool);
  const int64_t N = t.size(0), H = t.size(1), W = t.size(2), C = t.size(3);
  TORCH_CHECK(g.is_contiguous() && g.dim() == 4 && g.size(0) == N && g.size(3) == C &&
                  g.size(1) == (pool ? H / 2 : H) && g.size(2) == (pool ? W / 2 : W),
              "stem kernel: gradient of shape ", g.sizes(), " does not match the features ", t.sizes());
  TORCH_CHECK(g.scalar_type() == at::kFloat || g.scalar_type() == t.scalar_type(),
              "stem kernel: gradient must be float32 or the features' dtype");
  TORCH_CHECK(slope_d.scalar_type() == at::kFloat && slope_d.numel() == C && offset_d.scalar_type() == at::kFloat &&
                  offset_d.numel() == C,
              "stem kernel: slope_d and offset_d must be float32 (C,)");
  at::Tensor xin = x.has_value() ? *x : at::Tensor();
  if (xin.defined()) {
    TORCH_CHECK(xin.is_contiguous() && xin.dim() == 4 && xin.size(0) == N && xin.size(1) == H && xin.size(2) == W &&
                    xin.size(3) == kIn && xin.scalar_type() == t.scalar_type(),
                "stem kernel: x must be a contiguous (N, H, W, 3) tensor in the features' dtype, got ", xin.sizes());
  }
  at::Tensor grad_t = (!xin.defined() || want_grad_t) ? at::empty_like(t) : at::Tensor();
  at::Tensor grad_w = at::empty({C, C}, t.options().dtype(at::kFloat));
  at::Tensor grad_bias = at::empty({C}, t.options().dtype(at::kFloat));
  at::Tensor grad_w1 = xin.defined() ? at::empty({C, kIn, kSize, kSize}, t.options().dtype(at::kFloat)) : at::Tensor();
  at::Tensor grad_b1 = xin.defined() ? at::empty({C}, t.options().dtype(at::kFloat)) : at::Tensor();
  at::Tensor sd = slope_d.contiguous(), od = offset_d.contiguous();
  const float s = static_cast<float>(slope);
  KERNEL_DISPATCH_C("stem kernel", C, {
    if (t.scalar_type() == at::kFloat)
      backward_impl<C, float, float>(t, w, bias, s, g, sd, od, pool, xin, grad_t, grad_w, grad_bias, grad_w1, grad_b1);
    else if (g.scalar_type() == at::kFloat)
      backward_impl<C, at::BFloat16, float>(t, w, bias, s, g, sd, od, pool, xin, grad_t, grad_w, grad_bias, grad_w1,
                                            grad_b1);
    else
      backward_impl<C, at::BFloat16, at::BFloat16>(t, w, bias, s, g, sd, od, pool, xin, grad_t, grad_w, grad_bias,
                                                   grad_w1, grad_b1);
  });
  return {grad_t, grad_w, grad_bias, grad_w1, grad_b1};
}

}  // namespace dali_resizer

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace dali_resizer;
  m.def("stem_forward", &stem_forward, "lrelu -> 1x1 conv -> lrelu, BatchNorm sums, optional 2x2 average");
  m.def("stem_backward", &stem_backward, "gradients of stem_forward with BatchNorm's statistics term",
        py::arg("t"), py::arg("w"), py::arg("bias"), py::arg("slope"), py::arg("g"), py::arg("slope_d"),
        py::arg("offset_d"), py::arg("pool"), py::arg("x") = py::none(), py::arg("want_grad_t") = true);
  m.def("bn_stats", &bn_stats, "BatchNorm's sums around a shift, channels_last", py::arg("x"), py::arg("shift"));
  m.def("bn_forward", &bn_forward, "lrelu(x * scale + offset) + residual, channels_last", py::arg("x"),
        py::arg("scale"), py::arg("offset"), py::arg("slope"), py::arg("residual") = py::none());
  m.def("bn_backward", &bn_backward, "gradients of bn_forward, with or without BatchNorm's statistics term",
        py::arg("g"), py::arg("x"), py::arg("scale"), py::arg("offset"), py::arg("slope"), py::arg("mean"),
        py::arg("invstd"), py::arg("batch_stats"));
}
