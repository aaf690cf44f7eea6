// Local response normalisation across channels (Krizhevsky et al. 2012, Section 3.3), fused and tiled.
//
//   b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(C-1,i+n/2)} a_j^2)^beta
//
// alpha is NOT divided by n (the paper's formula, unlike torch.nn.LocalResponseNorm and Caffe).
// Optionally a = max(x, 0) is applied on the fly (the ReLU that precedes LRN in the paper), which saves
// one full pass over the activations in each direction.
//
// Layout: contiguous (N, C, *). Work is split over (image, tile of spatial positions); each tile keeps
// its C x T working set in cache, so every activation is read once and written once per direction.
// Window sums are summed directly (n terms), never by running differences: a sliding sum loses
// precision when large values leave the window.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
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

// dst[c] = sum of src[j] for j in the channel window of c; rows of length T, row stride kTile.
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

template <typename scalar_t, typename acc_t>
void forward_kernel(const scalar_t* x, scalar_t* y, int64_t N, int64_t C, int64_t HW, int64_t half,
                    acc_t alpha, acc_t beta, acc_t k, bool relu) {
  const int64_t tiles = (HW + kTile - 1) / kTile;
  at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sq(C * kTile), acc(kTile), pw(kTile);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / tiles, p0 = (job % tiles) * kTile, T = std::min(kTile, HW - p0);
      const scalar_t* xs = x + n * C * HW + p0;
      scalar_t* ys = y + n * C * HW + p0;
      for (int64_t c = 0; c < C; ++c) {
        acc_t* row = sq.data() + c * kTile;
        for (int64_t p = 0; p < T; ++p) {
          const acc_t a = load<scalar_t, acc_t>(xs + c * HW + p, relu);
          row[p] = a * a;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        window_sum(sq.data(), acc.data(), c, C, half, T);
        for (int64_t p = 0; p < T; ++p) acc[p] = k + alpha * acc[p];
        pow_neg_beta(acc.data(), pw.data(), T, beta);
        for (int64_t p = 0; p < T; ++p) {
          ys[c * HW + p] = static_cast<scalar_t>(load<scalar_t, acc_t>(xs + c * HW + p, relu) * pw[p]);
        }
      }
    }
  });
}

// d b_i / d a_m = [i == m] s_i^-beta - 2 alpha beta a_i a_m s_i^(-beta-1) [m in window(i)], and the window
// relation is symmetric, so grad_a_m = g_m s_m^-beta - 2 alpha beta a_m sum_{i in window(m)} g_i a_i s_i^(-beta-1).
template <typename scalar_t, typename acc_t>
void backward_kernel(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t N, int64_t C, int64_t HW,
                     int64_t half, acc_t alpha, acc_t beta, acc_t k, bool relu) {
  const int64_t tiles = (HW + kTile - 1) / kTile;
  const acc_t two_ab = acc_t(2) * alpha * beta;
  at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sq(C * kTile), pw(C * kTile), t(C * kTile), acc(kTile);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / tiles, p0 = (job % tiles) * kTile, T = std::min(kTile, HW - p0);
      const int64_t off = n * C * HW + p0;
      for (int64_t c = 0; c < C; ++c) {
        acc_t* row = sq.data() + c * kTile;
        for (int64_t p = 0; p < T; ++p) {
          const acc_t a = load<scalar_t, acc_t>(x + off + c * HW + p, relu);
          row[p] = a * a;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        window_sum(sq.data(), acc.data(), c, C, half, T);
        for (int64_t p = 0; p < T; ++p) acc[p] = k + alpha * acc[p];
        acc_t* pwc = pw.data() + c * kTile;
        pow_neg_beta(acc.data(), pwc, T, beta);
        acc_t* tc = t.data() + c * kTile;
        for (int64_t p = 0; p < T; ++p) {
          const acc_t a = load<scalar_t, acc_t>(x + off + c * HW + p, relu);
          tc[p] = static_cast<acc_t>(g[off + c * HW + p]) * a * pwc[p] / acc[p];
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        window_sum(t.data(), acc.data(), c, C, half, T);
        const acc_t* pwc = pw.data() + c * kTile;
        for (int64_t p = 0; p < T; ++p) {
          const int64_t i = off + c * HW + p;
          const acc_t xv = static_cast<acc_t>(x[i]);
          const acc_t a = relu && !(xv > acc_t(0)) ? acc_t(0) : xv;
          acc_t grad = static_cast<acc_t>(g[i]) * pwc[p] - two_ab * a * acc[p];
          if (relu && !(xv > acc_t(0))) grad = acc_t(0);
          gx[i] = static_cast<scalar_t>(grad);
        }
      }
    }
  });
}

void check(const at::Tensor& x, int64_t size) {
  TORCH_CHECK(x.device().is_cpu(), "alexnet LRN kernel: expected a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() >= 2, "alexnet LRN kernel: expected (N, C, ...) input, got shape ", x.sizes());
  TORCH_CHECK(size >= 1 && size % 2 == 1, "alexnet LRN kernel: size must be odd and positive, got ", size);
}

at::Tensor lrn_forward(const at::Tensor& input, int64_t size, double alpha, double beta, double k, bool relu) {
  check(input, size);
  auto x = input.contiguous();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t N = x.size(0), C = x.size(1), HW = N * C == 0 ? 0 : x.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "alexnet_lrn_forward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward_kernel<scalar_t, acc_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), N, C, HW,
                                    size / 2, acc_t(alpha), acc_t(beta), acc_t(k), relu);
  });
  return y;
}

at::Tensor lrn_backward(const at::Tensor& grad, const at::Tensor& input, int64_t size, double alpha,
                        double beta, double k, bool relu) {
  check(input, size);
  auto x = input.contiguous();
  auto g = grad.contiguous().to(x.scalar_type());
  auto gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t N = x.size(0), C = x.size(1), HW = N * C == 0 ? 0 : x.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "alexnet_lrn_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    backward_kernel<scalar_t, acc_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                     gx.mutable_data_ptr<scalar_t>(), N, C, HW, size / 2, acc_t(alpha),
                                     acc_t(beta), acc_t(k), relu);
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY(alexnet_lrn, m) {
  m.def("forward(Tensor input, int size, float alpha, float beta, float k, bool relu) -> Tensor");
  m.def("backward(Tensor grad, Tensor input, int size, float alpha, float beta, float k, bool relu) -> Tensor");
}

TORCH_LIBRARY_IMPL(alexnet_lrn, CPU, m) {
  m.impl("forward", &lrn_forward);
  m.impl("backward", &lrn_backward);
}
