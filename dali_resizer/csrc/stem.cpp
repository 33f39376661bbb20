// CPU kernel for the learnable resizer's input-resolution stem.
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

#include <array>
#include <cmath>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__linux__)
#define STEM_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
      add_row<C>(st, s, q);
    }
  });
  add_up<C>(per_thread, sums, sqs);
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

#ifdef STEM_AMX
// The same weight gradient for 16 channels of bfloat16 features on AMX's tile units (Intel's
// TDPBF16PS: a 16x32 by 32x16 bfloat16 product added to 16x16 floats in one instruction, ~20x the
// multiply-adds of AVX-512 FMAs here). gt is rounded to bfloat16 (as in oneDNN's bfloat16 backward)
// and written in pixel pairs (tile B: 16 pairs x 16 channels); each input row is kept as three
// zero-padded planes, one per input channel, so that the 7 taps kx of 32 pixels are one tile A of
// 7 rows loaded with a stride of one element (row kx starts kx pixels on). Per kernel row ky and
// input channel c a tile C (7 taps x 16 channels) sums the row's 32-pixel blocks; it is added to the
// float64 accumulators once per row, as the AVX-512 path does.

struct TileConfig {  // the LDTILECFG / STTILECFG memory layout
  uint8_t palette_id = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Whether this CPU has AMX-BF16 (and AVX512-BF16, for the conversions) and Linux lets the process
// use the tile registers (asked once).
bool amx_usable() {
  static const bool usable = [] {
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
        !__builtin_cpu_supports("avx512bf16"))
      return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // arch_prctl(ARCH_REQ_XCOMP_PERM, ...)
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

// A thread's tile configuration for as long as it lives; the thread's previous one (oneDNN's, say)
// is restored when it goes. (Inline assembly with memory operands: GCC 12's builtins for these two
// instructions are not seen to read and write their operand, and a configuration's stores were
// dropped as dead.)
class TileScope {
 public:
  explicit TileScope(const TileConfig& cfg) {
    asm volatile("sttilecfg %0" : "=m"(saved_));
    asm volatile("ldtilecfg %0" : : "m"(cfg));
  }
  ~TileScope() {
    if (saved_.palette_id != 0) {
      asm volatile("ldtilecfg %0" : : "m"(saved_));
    } else {
      asm volatile("tilerelease" ::: "memory");
    }
  }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;

 private:
  TileConfig saved_;
};

TileConfig tile_config(std::initializer_list<std::array<int, 3>> tiles) {  // {tile, rows, bytes per row}
  TileConfig cfg;
  cfg.palette_id = 1;
  for (const auto& [t, rows, colsb] : tiles) {
    cfg.rows[t] = static_cast<uint8_t>(rows);
    cfg.colsb[t] = static_cast<uint16_t>(colsb);
  }
  return cfg;
}

// One thread's tiles and buffers for the weight gradient.
class AmxConvGrad {
 public:
  static constexpr int kC = 16;
  explicit AmxConvGrad(int64_t W)
      : tiles_(tile_config({{0, kSize, 64}, {1, kSize, 64}, {2, kSize, 64},  // C: 7 taps x 16 floats
                            {3, kSize, 64}, {5, kSize, 64}, {6, kSize, 64},  // A: 7 taps x 32 pixels
                            {4, 16, 64}})),                                  // B: 16 pixel pairs x 16 x 2
        blocks_((W + 31) / 32),
        plane_len_(blocks_ * 32 + 32),
        planes_(kSize * kIn * plane_len_, 0),
        tags_(kSize, -1),
        gt_pairs_(blocks_ * 16 * 32, 0) {}

  // Adds output row y of image n's contribution to the weight gradient, from the row's gt (float, W x 16).
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16"))) void row(
      const at::BFloat16* x, int64_t H, int64_t W, int64_t n, int64_t y, const float* gt) {
    constexpr int P = kSize / 2;
    // gt in pixel pairs, (gt[2p][o], gt[2p + 1][o]) for o = 0..15 in one 64-byte row; zero past W
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int64_t p = 0; p < (W + 1) / 2; ++p) {
      const __m512 g0 = _mm512_loadu_ps(gt + 2 * p * kC);
      const __m512 g1 = 2 * p + 1 < W ? _mm512_loadu_ps(gt + (2 * p + 1) * kC) : _mm512_setzero_ps();
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(g1, g0);  // g0 in the low half, g1 in the high
      _mm512_storeu_si512(gt_pairs_.data() + p * 32, _mm512_permutexvar_epi16(interleave, both));
    }
    alignas(64) float sums[kIn][kSize][kC];
    for (int ky = 0; ky < kSize; ++ky) {
      const int64_t iy = y + ky - P;
      if (iy < 0 || iy >= H) continue;
      const uint16_t* planes = input_row(x, H, W, n, iy);
      const uint16_t* p0 = planes;
      const uint16_t* p1 = planes + plane_len_;
      const uint16_t* p2 = planes + 2 * plane_len_;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      for (int64_t b = 0; b < blocks_; ++b) {
        _tile_loadd(4, gt_pairs_.data() + b * 16 * 32, 64);
        _tile_loadd(3, p0 + b * 32, sizeof(uint16_t));  // row kx: the block's pixels shifted by kx
        _tile_loadd(5, p1 + b * 32, sizeof(uint16_t));
        _tile_loadd(6, p2 + b * 32, sizeof(uint16_t));
        _tile_dpbf16ps(0, 3, 4);
        _tile_dpbf16ps(1, 5, 4);
        _tile_dpbf16ps(2, 6, 4);
      }
      _tile_stored(0, sums[0], 64);
      _tile_stored(1, sums[1], 64);
      _tile_stored(2, sums[2], 64);
      double* acc = &w1_[ky][0][0][0];
      const float* sp = &sums[0][0][0];
      for (int i = 0; i < kIn * kSize * kC; ++i) acc[i] += sp[i];
    }
  }

  // Adds this thread's sums to gr.w1 (the first convolution's weight gradient, [o][c][ky][kx]).
  void add_to(Grads<kC>& gr) const {
    for (int ky = 0; ky < kSize; ++ky)
      for (int c = 0; c < kIn; ++c)
        for (int kx = 0; kx < kSize; ++kx)
          for (int o = 0; o < kC; ++o) gr.w1[o][c][ky][kx] += w1_[ky][c][kx][o];
  }

 private:
  // Input row iy of image n as kIn planes of plane_len_ bfloat16 (P zeros, the row, zeros), from a
  // ring of kSize rows: each input row is converted once for the kSize output rows that use it.
  const uint16_t* input_row(const at::BFloat16* x, int64_t H, int64_t W, int64_t n, int64_t iy) {
    constexpr int P = kSize / 2;
    const int64_t slot = iy % kSize, tag = n * H + iy;
    uint16_t* planes = planes_.data() + slot * kIn * plane_len_;
    if (tags_[slot] != tag) {
      tags_[slot] = tag;
      const at::BFloat16* row = x + (n * H + iy) * W * kIn;
      for (int64_t px = 0; px < W; ++px)
        for (int c = 0; c < kIn; ++c) planes[c * plane_len_ + P + px] = row[px * kIn + c].x;
    }
    return planes;
  }

  TileScope tiles_;
  int64_t blocks_, plane_len_;
  std::vector<uint16_t> planes_;
  std::vector<int64_t> tags_;
  std::vector<uint16_t> gt_pairs_;
  double w1_[kSize][kIn][kSize][kC] = {};  // [ky][c][kx][o]: the tiles' order, summed per row in float64
};
#endif

// Backward. g: the gradient reaching d through the resize (pool: of the 2x2 average, output size;
// else of d, input size). BatchNorm adds slope_d * d + offset_d to d's gradient (its statistics'
// part, affine in d per channel). Per row, in three passes over buffers that stay in cache:
// a and the gradient of b; the gradient of t; the gradient of W (its C accumulators in registers).
template <int C, typename T, typename G>
void backward_impl(const at::Tensor& t, const at::Tensor& w, const at::Tensor& bias, float slope,
                   const at::Tensor& g_, const at::Tensor& slope_d_, const at::Tensor& offset_d_, bool pool,
                   const at::Tensor& x_, bool allow_amx, at::Tensor& grad_t, at::Tensor& grad_w,
                   at::Tensor& grad_bias, at::Tensor& grad_w1, at::Tensor& grad_b1) {
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
#ifdef STEM_AMX
    constexpr bool amx_shape = C == AmxConvGrad::kC && std::is_same_v<T, at::BFloat16>;
    std::unique_ptr<AmxConvGrad> amx(amx_shape && xp && allow_amx && amx_usable() ? new AmxConvGrad(W) : nullptr);
#endif
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
#ifdef STEM_AMX
        if constexpr (amx_shape) {
          if (amx) {
            amx->row(xp, H, W, n, y, gts);
          } else {
            conv_weight_grad_row<C>(xp, H, W, n, y, gts, xpad_buf.data(), gr);
          }
        } else {
          conv_weight_grad_row<C>(xp, H, W, n, y, gts, xpad_buf.data(), gr);
        }
#else
        conv_weight_grad_row<C>(xp, H, W, n, y, gts, xpad_buf.data(), gr);
#endif
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
#ifdef STEM_AMX
    if constexpr (amx_shape) {
      if (amx) amx->add_to(gr);
    }
#endif
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
// are undefined. allow_amx: take that weight gradient on AMX tiles where it applies (bfloat16, 16
// channels, a CPU and kernel that allow it); else with AVX-512 (or whatever the build targets) FMAs.
std::vector<at::Tensor> stem_backward(const at::Tensor& t, const at::Tensor& w, const at::Tensor& bias, double slope,
                                      const at::Tensor& g, const at::Tensor& slope_d, const at::Tensor& offset_d,
                                      bool pool, const c10::optional<at::Tensor>& x, bool want_grad_t,
                                      bool allow_amx) {
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
      backward_impl<C, float, float>(t, w, bias, s, g, sd, od, pool, xin, allow_amx, grad_t, grad_w, grad_bias, grad_w1,
                                     grad_b1);
    else if (g.scalar_type() == at::kFloat)
      backward_impl<C, at::BFloat16, float>(t, w, bias, s, g, sd, od, pool, xin, allow_amx, grad_t, grad_w, grad_bias, grad_w1,
                                            grad_b1);
    else
      backward_impl<C, at::BFloat16, at::BFloat16>(t, w, bias, s, g, sd, od, pool, xin, allow_amx, grad_t, grad_w, grad_bias,
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
        py::arg("offset_d"), py::arg("pool"), py::arg("x") = py::none(), py::arg("want_grad_t") = true, py::arg("allow_amx") = true);
  m.def("bn_stats", &bn_stats, "BatchNorm's sums around a shift, channels_last", py::arg("x"), py::arg("shift"));
  m.def("bn_forward", &bn_forward, "lrelu(x * scale + offset) + residual, channels_last", py::arg("x"),
        py::arg("scale"), py::arg("offset"), py::arg("slope"), py::arg("residual") = py::none());
  m.def("bn_backward", &bn_backward, "gradients of bn_forward, with or without BatchNorm's statistics term",
        py::arg("g"), py::arg("x"), py::arg("scale"), py::arg("offset"), py::arg("slope"), py::arg("mean"),
        py::arg("invstd"), py::arg("batch_stats"));
}
