// Local response normalisation across channels (Krizhevsky et al. 2012, Section 3.3), fused and tiled.
//
//   b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(C-1,i+n/2)} a_j^2)^beta
//
// alpha is NOT divided by n (the paper's formula, unlike torch.nn.LocalResponseNorm and Caffe).
// Optionally a = max(x, 0) is applied on the fly (the ReLU that precedes LRN in the paper), which saves
// one full pass over the activations in each direction.
//
// Two operators:
//   forward/backward           LRN (optionally after ReLU) on a (N, C, *) tensor;
//   pool_forward/pool_backward ReLU -> LRN -> max pooling in one pass (Figure 2's conv1 and conv2 blocks):
//                              the LRN output never leaves the cache, and the pooling keeps a one-byte
//                              argmax per output instead of torch's eight-byte index.
//
// Layout: contiguous (N, C, *). LRN work is split into (image, tile of spatial positions); each tile keeps
// its C x T working set in cache. Window sums are summed directly (n terms), never by running differences:
// a sliding sum loses precision when large values leave the window.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kTile = 256;

template <typename acc_t>
inline void pow_neg_beta(const acc_t* s, acc_t* out, int64_t n, acc_t beta) {
  if (beta == acc_t(0.75)) {
    // s^-0.75 = s^-0.5 * s^-0.25: two square roots vectorise, pow does not.
#pragma omp simd
    for (int64_t p = 0; p < n; ++p) {
      const acc_t r = acc_t(1) / std::sqrt(s[p]);
      out[p] = r * std::sqrt(r);
    }
  } else {
    for (int64_t p = 0; p < n; ++p) out[p] = std::pow(s[p], -beta);
  }
}

// dst = sum of rows src[j] for j in the channel window of c; rows of length T, row stride kTile.
template <typename acc_t>
inline void window_sum(const acc_t* src, acc_t* dst, int64_t c, int64_t C, int64_t half, int64_t T) {
  const int64_t lo = std::max<int64_t>(0, c - half);
  const int64_t hi = std::min<int64_t>(C - 1, c + half);
  const acc_t* first = src + lo * kTile;
#pragma omp simd
  for (int64_t p = 0; p < T; ++p) dst[p] = first[p];
  for (int64_t j = lo + 1; j <= hi; ++j) {
    const acc_t* row = src + j * kTile;
#pragma omp simd
    for (int64_t p = 0; p < T; ++p) dst[p] += row[p];
  }
}

template <typename scalar_t, typename acc_t>
inline acc_t load(const scalar_t* x, bool relu) {
  const acc_t v = static_cast<acc_t>(*x);
  return relu && !(v > acc_t(0)) ? acc_t(0) : v;
}

template <typename acc_t>
struct Params {
  int64_t half;
  acc_t alpha, beta, k;
  bool relu;
};

// Per-thread scratch for one tile: C rows of kTile.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> sq, pw, t, acc;
  explicit Scratch(int64_t C) : sq(C * kTile), pw(C * kTile), t(C * kTile), acc(kTile) {}
};

// Rows of a_j^2 for every channel of the tile, where a = x (or max(x, 0) with relu).
template <typename scalar_t, typename acc_t>
inline void fill_squares(const scalar_t* x, int64_t C, int64_t HW, int64_t p0, int64_t T, bool relu, acc_t* sq) {
  for (int64_t c = 0; c < C; ++c) {
    acc_t* row = sq + c * kTile;
    const scalar_t* xc = x + c * HW + p0;
    for (int64_t p = 0; p < T; ++p) {
      const acc_t a = load<scalar_t, acc_t>(xc + p, relu);
      row[p] = a * a;
    }
  }
}

// For channel c: s = k + alpha * (window sum of squares) into `scale`, and s^-beta into `pw`.
template <typename acc_t>
inline void denominator(const acc_t* sq, int64_t c, int64_t C, int64_t T, const Params<acc_t>& P, acc_t* scale,
                        acc_t* pw) {
  window_sum(sq, scale, c, C, P.half, T);
  for (int64_t p = 0; p < T; ++p) scale[p] = P.k + P.alpha * scale[p];
  pow_neg_beta(scale, pw, T, P.beta);
}

// LRN forward of positions [p0, p0 + T) of one image: x and y point at the image (C x HW).
template <typename scalar_t, typename out_t, typename acc_t>
void tile_forward(const scalar_t* x, out_t* y, int64_t C, int64_t HW, int64_t p0, int64_t T,
                  const Params<acc_t>& P, Scratch<acc_t>& s) {
  fill_squares(x, C, HW, p0, T, P.relu, s.sq.data());
  acc_t* pw = s.pw.data();
  for (int64_t c = 0; c < C; ++c) {
    denominator(s.sq.data(), c, C, T, P, s.acc.data(), pw);
    const scalar_t* xc = x + c * HW + p0;
    out_t* yc = y + c * HW + p0;
    for (int64_t p = 0; p < T; ++p) yc[p] = static_cast<out_t>(load<scalar_t, acc_t>(xc + p, P.relu) * pw[p]);
  }
}

// d b_i / d a_m = [i == m] s_i^-beta - 2 alpha beta a_i a_m s_i^(-beta-1) [m in window(i)], and the window
// relation is symmetric, so grad_a_m = g_m s_m^-beta - 2 alpha beta a_m sum_{i in window(m)} g_i a_i s_i^(-beta-1).
// g, x and gx point at one image (C x HW).
template <typename grad_t, typename scalar_t, typename acc_t>
void tile_backward(const grad_t* g, const scalar_t* x, scalar_t* gx, int64_t C, int64_t HW, int64_t p0,
                   int64_t T, const Params<acc_t>& P, Scratch<acc_t>& s) {
  const acc_t two_ab = acc_t(2) * P.alpha * P.beta;
  acc_t* acc = s.acc.data();
  fill_squares(x, C, HW, p0, T, P.relu, s.sq.data());
  for (int64_t c = 0; c < C; ++c) {
    acc_t* pwc = s.pw.data() + c * kTile;
    denominator(s.sq.data(), c, C, T, P, acc, pwc);
    acc_t* tc = s.t.data() + c * kTile;
    const scalar_t* xc = x + c * HW + p0;
    const grad_t* gc = g + c * HW + p0;
    for (int64_t p = 0; p < T; ++p) {
      tc[p] = static_cast<acc_t>(gc[p]) * load<scalar_t, acc_t>(xc + p, P.relu) * pwc[p] / acc[p];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    window_sum(s.t.data(), acc, c, C, P.half, T);
    const acc_t* pwc = s.pw.data() + c * kTile;
    const scalar_t* xc = x + c * HW + p0;
    const grad_t* gc = g + c * HW + p0;
    scalar_t* gxc = gx + c * HW + p0;
    for (int64_t p = 0; p < T; ++p) {
      const acc_t xv = static_cast<acc_t>(xc[p]);
      const bool off = P.relu && !(xv > acc_t(0));
      const acc_t grad = static_cast<acc_t>(gc[p]) * pwc[p] - two_ab * xv * acc[p];
      gxc[p] = static_cast<scalar_t>(off ? acc_t(0) : grad);
    }
  }
}

struct Shape {
  int64_t N, C, HW;
};

Shape shape_of(const at::Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  return {N, C, N * C == 0 ? 0 : x.numel() / (N * C)};
}

void check(const at::Tensor& x, int64_t size) {
  TORCH_CHECK(x.device().is_cpu(), "alexnet LRN kernel: expected a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() >= 2, "alexnet LRN kernel: expected (N, C, ...) input, got shape ", x.sizes());
  TORCH_CHECK(size >= 1 && size % 2 == 1, "alexnet LRN kernel: size must be odd and positive, got ", size);
}

#define ALEXNET_DISPATCH(TYPE, NAME, ...)                                                      \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, NAME, [&] {                               \
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;         \
    __VA_ARGS__();                                                                              \
  })

at::Tensor lrn_forward(const at::Tensor& input, int64_t size, double alpha, double beta, double k, bool relu) {
  check(input, size);
  auto x = input.contiguous();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto [N, C, HW] = shape_of(x);
  const int64_t tiles = (HW + kTile - 1) / kTile;
  ALEXNET_DISPATCH(x.scalar_type(), "alexnet_lrn_forward", [&] {
    const Params<acc_t> P{size / 2, acc_t(alpha), acc_t(beta), acc_t(k), relu};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> s(C);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t n = job / tiles, p0 = (job % tiles) * kTile;
        tile_forward(xp + n * C * HW, yp + n * C * HW, C, HW, p0, std::min(kTile, HW - p0), P, s);
      }
    });
  });
  return y;
}

at::Tensor lrn_backward(const at::Tensor& grad, const at::Tensor& input, int64_t size, double alpha,
                        double beta, double k, bool relu) {
  check(input, size);
  auto x = input.contiguous();
  auto g = grad.contiguous().to(x.scalar_type());
  auto gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto [N, C, HW] = shape_of(x);
  const int64_t tiles = (HW + kTile - 1) / kTile;
  ALEXNET_DISPATCH(x.scalar_type(), "alexnet_lrn_backward", [&] {
    const Params<acc_t> P{size / 2, acc_t(alpha), acc_t(beta), acc_t(k), relu};
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> s(C);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t n = job / tiles, p0 = (job % tiles) * kTile, off = n * C * HW;
        tile_backward(gp + off, xp + off, gxp + off, C, HW, p0, std::min(kTile, HW - p0), P, s);
      }
    });
  });
  return gx;
}

// ---- ReLU -> LRN -> max pool, fused. One image at a time per thread; the LRN output lives in scratch.

void check_pool(const at::Tensor& x, int64_t size, int64_t pool_k, int64_t pool_s) {
  check(x, size);
  TORCH_CHECK(x.dim() == 4, "alexnet LRN+pool kernel: expected (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(pool_k >= 1 && pool_k * pool_k <= 255 && pool_s >= 1, "alexnet LRN+pool kernel: bad pooling ",
              pool_k, "/", pool_s);
  TORCH_CHECK(x.size(2) >= pool_k && x.size(3) >= pool_k, "alexnet LRN+pool kernel: input ", x.sizes(),
              " is smaller than the pooling window ", pool_k);
}

// Max pooling of one plane, separably: a row pass (max over pool_k columns, stride pool_s) and a column pass
// (max over pool_k of those rows). Branch-free selects vectorise. The first maximum in row-major window order
// wins, and a NaN wins over numbers and over earlier NaNs, as in torch. argmax is the offset u * pool_k + v inside the window.
// KC, SC > 0 fix the window at compile time (the paper's 3/2 and 2/2), so the loops unroll and vectorise.
template <int KC, int SC, typename acc_t, typename scalar_t>
void max_pool_plane(const acc_t* b, scalar_t* y, uint8_t* arg, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                    int64_t k_rt, int64_t s_rt, acc_t* hmax, acc_t* harg) {
  const int64_t K = KC > 0 ? KC : k_rt, S = SC > 0 ? SC : s_rt;
  for (int64_t r = 0; r < H; ++r) {
    const acc_t* __restrict row = b + r * W;
    acc_t* __restrict hm = hmax + r * Wo;
    acc_t* __restrict ha = harg + r * Wo;
#pragma omp simd
    for (int64_t j = 0; j < Wo; ++j) {
      acc_t best = row[j * S], where = 0;
      for (int64_t v = 1; v < K; ++v) {
        const acc_t val = row[j * S + v];
        const bool take = (val > best) | (val != val);
        best = take ? val : best;
        where = take ? static_cast<acc_t>(v) : where;
      }
      hm[j] = best;
      ha[j] = where;
    }
  }
  for (int64_t i = 0; i < Ho; ++i) {
    const acc_t* __restrict h0 = hmax + i * S * Wo;
    const acc_t* __restrict a0 = harg + i * S * Wo;
    scalar_t* __restrict yi = y + i * Wo;
    uint8_t* __restrict ai = arg + i * Wo;
#pragma omp simd
    for (int64_t j = 0; j < Wo; ++j) {
      acc_t best = h0[j];
      acc_t where = a0[j];
      for (int64_t u = 1; u < K; ++u) {
        const acc_t val = h0[u * Wo + j];
        const bool take = (val > best) | (val != val);
        best = take ? val : best;
        where = take ? static_cast<acc_t>(u * K) + a0[u * Wo + j] : where;
      }
      yi[j] = static_cast<scalar_t>(best);
      ai[j] = static_cast<uint8_t>(where);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> lrn_pool_forward(const at::Tensor& input, int64_t size, double alpha,
                                                    double beta, double k, bool relu, int64_t pool_k,
                                                    int64_t pool_s) {
  check_pool(input, size, pool_k, pool_s);
  auto x = input.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t Ho = (H - pool_k) / pool_s + 1, Wo = (W - pool_k) / pool_s + 1;
  auto y = at::empty({N, C, Ho, Wo}, x.options());
  auto idx = at::empty({N, C, Ho, Wo}, x.options().dtype(at::kByte));
  const int64_t tiles = (HW + kTile - 1) / kTile;
  ALEXNET_DISPATCH(x.scalar_type(), "alexnet_lrn_pool_forward", [&] {
    const Params<acc_t> P{size / 2, acc_t(alpha), acc_t(beta), acc_t(k), relu};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    uint8_t* ip = idx.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> s(C);
      std::vector<acc_t> b(C * HW), hmax(H * Wo), harg(H * Wo);
      const auto pool = pool_k == 3 && pool_s == 2   ? &max_pool_plane<3, 2, acc_t, scalar_t>
                        : pool_k == 2 && pool_s == 2 ? &max_pool_plane<2, 2, acc_t, scalar_t>
                                                     : &max_pool_plane<0, 0, acc_t, scalar_t>;
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t t = 0; t < tiles; ++t) {
          tile_forward(xp + n * C * HW, b.data(), C, HW, t * kTile, std::min(kTile, HW - t * kTile), P, s);
        }
        for (int64_t c = 0; c < C; ++c) {
          pool(b.data() + c * HW, yp + (n * C + c) * Ho * Wo, ip + (n * C + c) * Ho * Wo, H, W, Ho,
                         Wo, pool_k, pool_s, hmax.data(), harg.data());
        }
      }
    });
  });
  return {y, idx};
}

at::Tensor lrn_pool_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& argmax,
                             int64_t size, double alpha, double beta, double k, bool relu, int64_t pool_k,
                             int64_t pool_s) {
  check_pool(input, size, pool_k, pool_s);
  auto x = input.contiguous();
  auto idx = argmax.contiguous();
  auto g = grad.contiguous().to(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t Ho = g.size(2), Wo = g.size(3);
  auto gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t tiles = (HW + kTile - 1) / kTile;
  ALEXNET_DISPATCH(x.scalar_type(), "alexnet_lrn_pool_backward", [&] {
    const Params<acc_t> P{size / 2, acc_t(alpha), acc_t(beta), acc_t(k), relu};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const uint8_t* ip = idx.const_data_ptr<uint8_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> s(C);
      std::vector<acc_t> gb(C * HW);
      for (int64_t n = begin; n < end; ++n) {
        std::fill(gb.begin(), gb.end(), acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          acc_t* gbc = gb.data() + c * HW;
          const scalar_t* gc = gp + (n * C + c) * Ho * Wo;
          const uint8_t* ic = ip + (n * C + c) * Ho * Wo;
          for (int64_t i = 0; i < Ho; ++i) {
            for (int64_t j = 0; j < Wo; ++j) {
              const int64_t a = ic[i * Wo + j];
              gbc[(i * pool_s + a / pool_k) * W + j * pool_s + a % pool_k] += static_cast<acc_t>(gc[i * Wo + j]);
            }
          }
        }
        for (int64_t t = 0; t < tiles; ++t) {
          tile_backward(gb.data(), xp + n * C * HW, gxp + n * C * HW, C, HW, t * kTile,
                        std::min(kTile, HW - t * kTile), P, s);
        }
      }
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY(alexnet_lrn, m) {
  m.def("forward(Tensor input, int size, float alpha, float beta, float k, bool relu) -> Tensor");
  m.def("backward(Tensor grad, Tensor input, int size, float alpha, float beta, float k, bool relu) -> Tensor");
  m.def("pool_forward(Tensor input, int size, float alpha, float beta, float k, bool relu, int pool_k, "
        "int pool_s) -> (Tensor, Tensor)");
  m.def("pool_backward(Tensor grad, Tensor input, Tensor argmax, int size, float alpha, float beta, float k, "
        "bool relu, int pool_k, int pool_s) -> Tensor");
}

TORCH_LIBRARY_IMPL(alexnet_lrn, CPU, m) {
  m.impl("forward", &lrn_forward);
  m.impl("backward", &lrn_backward);
  m.impl("pool_forward", &lrn_pool_forward);
  m.impl("pool_backward", &lrn_pool_backward);
}
