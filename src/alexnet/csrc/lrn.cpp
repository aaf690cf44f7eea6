// Local response normalisation across channels (Krizhevsky et al. 2012, Section 3.3), fused and tiled.
//
//   b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(C-1,i+n/2)} a_j^2)^beta
//
// alpha is the multiplier of the window's sum as given: the caller has divided it by n where its reading
// of the constants says so (LRNParams.multiplier in lrn.py).
// Optionally a = max(x, 0) is applied on the fly (the ReLU that precedes LRN in the paper), which saves
// one full pass over the activations in each direction.
//
// Two operators:
//   forward/backward           LRN (optionally after ReLU) on a (N, C, *) tensor;
//   pool_forward/pool_backward ReLU -> LRN -> max pooling in one pass (Figure 2's conv1 and conv2 blocks):
//                              the LRN output of one image stays in a per-thread buffer, laid out
//                              position-major so that the pooling compares whole channel vectors, and the
//                              pooling keeps a one-byte argmax per output instead of torch's eight-byte index.
//
// Layout: contiguous (N, C, *). LRN work is split into (image, tile of spatial positions); each tile keeps
// its C x T working set in cache. Window sums are summed directly (n terms), never by running differences:
// a sliding sum loses precision when large values leave the window. The pair pool_forward_nhwc /
// pool_backward_nhwc does the same on channels-last maps, every tower in one call (further down), with a
// hand-vectorised AVX-512 path where the build has it.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <tuple>
#include <vector>

// Hand-vectorised paths for machines with AVX-512 (F, BW, VL): the build uses -march=native, so these are
// compiled exactly where they run; elsewhere the portable loops below do the same arithmetic.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define ALEXNET_AVX512 1
#include <immintrin.h>
#else
#define ALEXNET_AVX512 0
#endif

namespace {

constexpr int64_t kTile = 256;
// Row stride of the per-tile scratch: a multiple of 1 KB would put every row of a channel column in the same
// few L1 sets, and reading down a column (the transpose for pooling) then misses in L1 on every load.
constexpr int64_t kRow = kTile + 16;

#if ALEXNET_AVX512
// s^-0.75 and s^-0.5 for 16 floats from two 14-bit hardware estimates of 1/sqrt, each refined by one Newton
// step: r = s^-1/2, q = r^-1/2 = s^1/4, s^-3/4 = r * r * q, within a few ulps of the exact quotients and
// square roots, at a fraction of their cost (those two square roots and a division were the forward's
// largest cost). 0, infinity and NaN take the estimate itself, which is exact there (inf, 0, NaN).
inline void pow_neg_three_quarters(__m512 s, __m512& pw, __m512& r_out) {
  const __m512 half = _mm512_set1_ps(0.5f), three_halves = _mm512_set1_ps(1.5f);
  const __m512 r0 = _mm512_rsqrt14_ps(s);
  const __m512 r = _mm512_mul_ps(r0, _mm512_fnmadd_ps(_mm512_mul_ps(half, s), _mm512_mul_ps(r0, r0), three_halves));
  const __m512 q0 = _mm512_rsqrt14_ps(r);
  const __m512 q = _mm512_mul_ps(q0, _mm512_fnmadd_ps(_mm512_mul_ps(half, r), _mm512_mul_ps(q0, q0), three_halves));
  const __mmask16 normal = _mm512_cmp_ps_mask(s, _mm512_set1_ps(std::numeric_limits<float>::min()), _CMP_GE_OQ) &
                           _mm512_cmp_ps_mask(s, _mm512_set1_ps(std::numeric_limits<float>::max()), _CMP_LE_OQ);
  pw = _mm512_mask_blend_ps(normal, r0, _mm512_mul_ps(_mm512_mul_ps(r, r), q));
  r_out = _mm512_mask_blend_ps(normal, r0, r);
}

inline __mmask16 lanes_left(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

// 16 values as floats (masked lanes read nothing and are 0), and back with c10's rounding (to nearest even,
// NaN -> 0x7FC0), so the vector paths store exactly what static_cast<c10::BFloat16> stores.
inline __m512 load16(const float* x, __mmask16 m) { return _mm512_maskz_loadu_ps(m, x); }
inline __m512 load16(const c10::BFloat16* x, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void store16(float* y, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(y, m, v); }
inline void store16(c10::BFloat16* y, __mmask16 m, __m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1)),
                                        _mm512_set1_epi32(0x7FFF));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(y, m, _mm512_cvtepi32_epi16(r));
}
// max(v, 0) as `load` computes it: v <= 0 gives 0, a NaN stays NaN
inline __m512 relu16(__m512 v) {
  return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LE_OQ), _mm512_setzero_ps());
}
#endif

// out = s^-beta; with ratio, also ratio = s^(-beta-1). Every element takes the same instruction sequence
// wherever it lies in a vector (the tail is a masked vector), so both layouts' kernels give the same numbers.
template <typename acc_t>
inline void pow_neg_beta(const acc_t* s, acc_t* out, int64_t n, acc_t beta, acc_t* ratio = nullptr) {
#if ALEXNET_AVX512
  if constexpr (std::is_same_v<acc_t, float>) {
    if (beta == 0.75f) {
      for (int64_t p = 0; p < n; p += 16) {
        const __mmask16 m = lanes_left(n - p);
        __m512 pw, r;
        pow_neg_three_quarters(_mm512_maskz_loadu_ps(m, s + p), pw, r);
        if (ratio != nullptr) _mm512_mask_storeu_ps(ratio + p, m, _mm512_mul_ps(pw, _mm512_mul_ps(r, r)));
        _mm512_mask_storeu_ps(out + p, m, pw);
      }
      return;
    }
  }
#endif
  if (beta == acc_t(0.75)) {
    // s^-0.75 = s^-0.5 * s^-0.25: two square roots vectorise, pow does not.
#pragma omp simd
    for (int64_t p = 0; p < n; ++p) {
      const acc_t r = acc_t(1) / std::sqrt(s[p]);
      const acc_t pw = r * std::sqrt(r);
      if (ratio != nullptr) ratio[p] = pw * r * r;
      out[p] = pw;
    }
  } else {
    for (int64_t p = 0; p < n; ++p) {
      const acc_t pw = std::pow(s[p], -beta);
      if (ratio != nullptr) ratio[p] = pw / s[p];
      out[p] = pw;
    }
  }
}

// dst = sum of rows src[j] for j in the channel window of c; rows of length T, row stride kRow. Always summed
// in channel order; the paper's full window of 5 rows (every channel but the two at each edge) in one pass,
// so that dst is not written and read back once per row.
template <typename acc_t>
inline void window_sum(const acc_t* src, acc_t* dst, int64_t c, int64_t C, int64_t half, int64_t T) {
  const int64_t lo = std::max<int64_t>(0, c - half);
  const int64_t hi = std::min<int64_t>(C - 1, c + half);
  const acc_t* first = src + lo * kRow;
  if (hi - lo == 4) {
    const acc_t *__restrict r0 = first, *__restrict r1 = first + kRow, *__restrict r2 = first + 2 * kRow,
                *__restrict r3 = first + 3 * kRow, *__restrict r4 = first + 4 * kRow;
#pragma omp simd
    for (int64_t p = 0; p < T; ++p) dst[p] = r0[p] + r1[p] + r2[p] + r3[p] + r4[p];
    return;
  }
#pragma omp simd
  for (int64_t p = 0; p < T; ++p) dst[p] = first[p];
  for (int64_t j = lo + 1; j <= hi; ++j) {
    const acc_t* row = src + j * kRow;
#pragma omp simd
    for (int64_t p = 0; p < T; ++p) dst[p] += row[p];
  }
}

template <typename scalar_t, typename acc_t>
inline acc_t load(const scalar_t* x, bool relu) {
  const acc_t v = static_cast<acc_t>(*x);
  return relu && v <= acc_t(0) ? acc_t(0) : v;  // a NaN stays NaN, as through torch.relu
}

template <typename acc_t>
struct Params {
  int64_t half;
  acc_t alpha, beta, k;
  bool relu;
};

// Per-thread scratch for one tile: C rows of kTile positions, kRow apart.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> sq, pw, t, acc;
  explicit Scratch(int64_t C) : sq(C * kRow), pw(C * kRow), t(C * kRow), acc(kTile) {}
};

// Rows of a_j^2 for every channel of the tile, where a = x (or max(x, 0) with relu).
template <typename scalar_t, typename acc_t>
inline void fill_squares(const scalar_t* x, int64_t C, int64_t HW, int64_t p0, int64_t T, bool relu, acc_t* sq) {
  for (int64_t c = 0; c < C; ++c) {
    acc_t* row = sq + c * kRow;
    const scalar_t* xc = x + c * HW + p0;
    for (int64_t p = 0; p < T; ++p) {
      const acc_t a = load<scalar_t, acc_t>(xc + p, relu);
      row[p] = a * a;
    }
  }
}

// For channel c: s = k + alpha * (window sum of squares) into `scale`.
template <typename acc_t>
inline void window_scale(const acc_t* sq, int64_t c, int64_t C, int64_t T, const Params<acc_t>& P, acc_t* scale) {
  window_sum(sq, scale, c, C, P.half, T);
  const acc_t k = P.k, alpha = P.alpha;  // locals: `scale` could alias the parameters, which stops vectorising
  // one rounding (fused multiply-add) in every layout and every path, whatever the compiler would contract
#pragma omp simd
  for (int64_t p = 0; p < T; ++p) scale[p] = std::fma(alpha, scale[p], k);
}

// For channel c: s into `scale` (window_scale) and s^-beta into `pw`.
template <typename acc_t>
inline void denominator(const acc_t* sq, int64_t c, int64_t C, int64_t T, const Params<acc_t>& P, acc_t* scale,
                        acc_t* pw) {
  window_scale(sq, c, C, T, P, scale);
  pow_neg_beta(scale, pw, T, P.beta);
}

// LRN forward of positions [p0, p0 + T) of one image: x points at the image (C x HW); channel c's T outputs
// go to y + c * y_stride (y already offset to position p0 of channel 0).
template <typename scalar_t, typename out_t, typename acc_t>
void tile_forward(const scalar_t* x, out_t* y, int64_t y_stride, int64_t C, int64_t HW, int64_t p0, int64_t T,
                  const Params<acc_t>& P, Scratch<acc_t>& s) {
  fill_squares(x, C, HW, p0, T, P.relu, s.sq.data());
  acc_t* pw = s.pw.data();
  for (int64_t c = 0; c < C; ++c) {
    denominator(s.sq.data(), c, C, T, P, s.acc.data(), pw);
    const scalar_t* xc = x + c * HW + p0;
    out_t* yc = y + c * y_stride;
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
    acc_t* pwc = s.pw.data() + c * kRow;
    acc_t* tc = s.t.data() + c * kRow;
    window_scale(s.sq.data(), c, C, T, P, acc);
    pow_neg_beta(acc, pwc, T, P.beta, tc);  // tc = s^(-beta-1) for now
    const scalar_t* xc = x + c * HW + p0;
    const grad_t* gc = g + c * HW + p0;
    for (int64_t p = 0; p < T; ++p) {
      tc[p] = static_cast<acc_t>(gc[p]) * load<scalar_t, acc_t>(xc + p, P.relu) * tc[p];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    window_sum(s.t.data(), acc, c, C, P.half, T);
    const acc_t* pwc = s.pw.data() + c * kRow;
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
        tile_forward(xp + n * C * HW, yp + n * C * HW + p0, HW, C, HW, p0, std::min(kTile, HW - p0), P, s);
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

// The sizes of a pooled LRN (the input checked, and the towers dividing its channels).
struct PoolShape {
  int64_t N, C, H, W, HW, Ho, Wo;
};

PoolShape pool_shape(const at::Tensor& x, int64_t size, int64_t pool_k, int64_t pool_s, int64_t groups) {
  check_pool(x, size, pool_k, pool_s);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(groups >= 1 && C % groups == 0, "alexnet LRN+pool kernel: groups=", groups, " does not divide the ",
              C, " channels");
  return {N, C, H, W, H * W, (H - pool_k) / pool_s + 1, (W - pool_k) / pool_s + 1};
}

// The argmax codes index a table of pool_k^2 offsets: only pool_forward's own output may come back in.
void check_pooled_gradient(const at::Tensor& grad, const at::Tensor& argmax, const PoolShape& s) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == s.N && grad.size(1) == s.C && grad.size(2) == s.Ho &&
                  grad.size(3) == s.Wo,
              "alexnet LRN+pool backward: gradient of shape ", grad.sizes(), " for a pooled output of ",
              at::IntArrayRef({s.N, s.C, s.Ho, s.Wo}));
  TORCH_CHECK(argmax.scalar_type() == at::kByte && argmax.sizes() == grad.sizes(),
              "alexnet LRN+pool backward: argmax must be pool_forward's uint8 output of shape ", grad.sizes());
}

// Max pooling of one image whose maps are laid out position-major (b[(h * W + w) * Cp + c], Cp = C rounded
// up to kLanes): every window element is a vector of channels, compared kLanes channels at a time in
// registers, whatever the window and stride. Output row by output row, the results are transposed into y's
// and arg's (C, Ho, Wo) planes. The first maximum in row-major window order wins, and a NaN wins over numbers
// and over earlier NaNs, as in torch. arg is the offset u * pool_k + v inside the window. KC, SC > 0 fix the
// window at compile time (the paper's 3/2 and 2/2), so the window loops unroll.
constexpr int64_t kLanes = 16;

inline int64_t padded_channels(int64_t C) { return (C + kLanes - 1) / kLanes * kLanes; }

// The maximum over a K x K window of position-major rows (Cp apart, W positions a row) for kLanes channels at
// `corner`, and its offset u * K + v in the window. The first maximum in row-major window order wins, and a
// NaN wins over numbers and over earlier NaNs, as in torch. KC > 0 fixes K at compile time (the loops unroll).
template <int KC, typename acc_t>
inline void window_max(const acc_t* corner, int64_t W, int64_t Cp, int64_t k_rt, acc_t* bst, acc_t* wh) {
  const int64_t K = KC > 0 ? KC : k_rt;
#pragma omp simd
  for (int64_t l = 0; l < kLanes; ++l) {
    bst[l] = corner[l];
    wh[l] = 0;
  }
  for (int64_t u = 0; u < K; ++u) {
    for (int64_t v = u == 0 ? 1 : 0; v < K; ++v) {
      const acc_t* __restrict row = corner + (u * W + v) * Cp;
      const acc_t code = static_cast<acc_t>(u * K + v);
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        const acc_t val = row[l];
        const bool take = (val > bst[l]) | (val != val);
        bst[l] = take ? val : bst[l];
        wh[l] = take ? code : wh[l];
      }
    }
  }
}

template <int KC, int SC, typename acc_t, typename scalar_t>
void max_pool_image(const acc_t* b, scalar_t* y, uint8_t* arg, int64_t C, int64_t W, int64_t Ho, int64_t Wo,
                    int64_t k_rt, int64_t s_rt, acc_t* best, acc_t* where) {
  const int64_t K = KC > 0 ? KC : k_rt, S = SC > 0 ? SC : s_rt, HWo = Ho * Wo, Cp = padded_channels(C);
  for (int64_t i = 0; i < Ho; ++i) {
    for (int64_t j = 0; j < Wo; ++j) {
      for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
        const acc_t* corner = b + (i * S * W + j * S) * Cp + c0;
        acc_t bst[kLanes], wh[kLanes];
        window_max<KC, acc_t>(corner, W, Cp, K, bst, wh);
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          best[j * Cp + c0 + l] = bst[l];
          where[j * Cp + c0 + l] = wh[l];
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      scalar_t* __restrict yc = y + c * HWo + i * Wo;
      uint8_t* __restrict ac = arg + c * HWo + i * Wo;
      for (int64_t j = 0; j < Wo; ++j) {
        yc[j] = static_cast<scalar_t>(best[j * Cp + c]);
        ac[j] = static_cast<uint8_t>(where[j * Cp + c]);
      }
    }
  }
}

// A (C, T) tile with row stride kRow -> T rows of C channels, Cp apart.
template <typename acc_t>
void to_position_major(const acc_t* tile, acc_t* dst, int64_t C, int64_t Cp, int64_t T) {
  for (int64_t q = 0; q < T; ++q) {
    acc_t* __restrict row = dst + q * Cp;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) row[c] = tile[c * kRow + q];
  }
}

std::tuple<at::Tensor, at::Tensor> lrn_pool_forward(const at::Tensor& input, int64_t size, double alpha,
                                                    double beta, double k, bool relu, int64_t pool_k,
                                                    int64_t pool_s) {
  const PoolShape shape = pool_shape(input, size, pool_k, pool_s, 1);
  const int64_t N = shape.N, C = shape.C, W = shape.W, HW = shape.HW, Ho = shape.Ho, Wo = shape.Wo;
  auto x = input.contiguous();
  auto y = at::empty({N, C, Ho, Wo}, x.options());
  auto idx = at::empty({N, C, Ho, Wo}, x.options().dtype(at::kByte));
  ALEXNET_DISPATCH(x.scalar_type(), "alexnet_lrn_pool_forward", [&] {
    const Params<acc_t> P{size / 2, acc_t(alpha), acc_t(beta), acc_t(k), relu};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    uint8_t* ip = idx.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> s(C);
      const int64_t Cp = padded_channels(C);  // the padding lanes stay 0 and are never written out
      std::vector<acc_t> b(HW * Cp), best(Wo * Cp), where(Wo * Cp);
      const auto pool = pool_k == 3 && pool_s == 2   ? &max_pool_image<3, 2, acc_t, scalar_t>
                        : pool_k == 2 && pool_s == 2 ? &max_pool_image<2, 2, acc_t, scalar_t>
                                                     : &max_pool_image<0, 0, acc_t, scalar_t>;
      acc_t* tile = s.t.data();
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t p0 = 0; p0 < HW; p0 += kTile) {
          const int64_t T = std::min(kTile, HW - p0);
          tile_forward(xp + n * C * HW, tile, kRow, C, HW, p0, T, P, s);
          to_position_major(tile, b.data() + p0 * Cp, C, Cp, T);
        }
        pool(b.data(), yp + n * C * Ho * Wo, ip + n * C * Ho * Wo, C, W, Ho, Wo, pool_k, pool_s, best.data(),
             where.data());
      }
    });
  });
  return {y, idx};
}

at::Tensor lrn_pool_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& argmax,
                             int64_t size, double alpha, double beta, double k, bool relu, int64_t pool_k,
                             int64_t pool_s) {
  const PoolShape shape = pool_shape(input, size, pool_k, pool_s, 1);
  check_pooled_gradient(grad, argmax, shape);
  const int64_t N = shape.N, C = shape.C, W = shape.W, HW = shape.HW, Ho = shape.Ho, Wo = shape.Wo;
  auto x = input.contiguous();
  auto idx = argmax.contiguous();
  auto g = grad.contiguous().to(x.scalar_type());
  auto gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t tiles = (HW + kTile - 1) / kTile;
  // the offset in the input plane of each argmax code, from its window's corner: no division per element
  std::vector<int64_t> offset(pool_k * pool_k);
  for (int64_t a = 0; a < pool_k * pool_k; ++a) offset[a] = (a / pool_k) * W + a % pool_k;
  ALEXNET_DISPATCH(x.scalar_type(), "alexnet_lrn_pool_backward", [&] {
    const Params<acc_t> P{size / 2, acc_t(alpha), acc_t(beta), acc_t(k), relu};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const uint8_t* ip = idx.const_data_ptr<uint8_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const int64_t* off = offset.data();
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
            acc_t* corner = gbc + i * pool_s * W;
            for (int64_t j = 0; j < Wo; ++j) {
              corner[j * pool_s + off[ic[i * Wo + j]]] += static_cast<acc_t>(gc[i * Wo + j]);
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

// ---- The same fused ReLU -> LRN -> max pool on channels-last (N, H, W, C in memory) maps, towers in one call.
//
// oneDNN runs convolutions fastest on channels-last maps (with AMX, by far), and converting conv1's and conv2's
// outputs to NCHW and back for the kernels above cost more than the normalisation. Here every position's
// channels are contiguous: the window sums run along that vector, the pooling compares whole vectors and writes
// channels-last output directly. `groups` towers of C / groups channels are normalised each on its own (the
// window is clipped at a tower's edges), so the paper's per-tower LRN needs no reshape. The argmax is stored
// channels-last too; sums are taken in the same channel order as above, so both layouts give the same numbers.

// s = k + alpha * (window sum of sq) for the C channels of one position, towers of Cg channels each: the window
// is clipped at a tower's edges, and the channels whose whole window lies inside the tower run vectorised.
template <typename acc_t>
inline void vector_window_scale(const acc_t* sq, acc_t* scale, int64_t C, int64_t Cg, const Params<acc_t>& P) {
  const int64_t half = P.half;
  const acc_t k = P.k, alpha = P.alpha;
  const int64_t first_inside = std::min(half, Cg), first_edge = std::max(Cg - half, first_inside);
  for (int64_t g0 = 0; g0 < C; g0 += Cg) {
    const acc_t* q = sq + g0;
    acc_t* out = scale + g0;
    const auto clipped = [&](int64_t c) {
      const int64_t lo = std::max<int64_t>(0, c - half), hi = std::min<int64_t>(Cg - 1, c + half);
      acc_t sum = q[lo];
      for (int64_t j = lo + 1; j <= hi; ++j) sum += q[j];
      out[c] = std::fma(alpha, sum, k);
    };
    for (int64_t c = 0; c < first_inside; ++c) clipped(c);
    if (half == 2) {
#pragma omp simd
      for (int64_t c = first_inside; c < first_edge; ++c)
        out[c] = std::fma(alpha, q[c - 2] + q[c - 1] + q[c] + q[c + 1] + q[c + 2], k);
    } else {
      for (int64_t c = first_inside; c < first_edge; ++c) clipped(c);
    }
    for (int64_t c = first_edge; c < Cg; ++c) clipped(c);
  }
}

#if ALEXNET_AVX512
// The same channels-last passes, 16 channels a vector. One tower's values to be window-summed go to `pad` at
// pad[half + c] with `half` zeros on either side, so that every channel's window is the same run of 2 * half + 1
// terms, added in channel order: the zeros add exactly, so the sums equal the clipped sums above bit for bit.

// A position's C channels are held as `groups` towers of nv = ceil(Cg / 16) vectors each (lanes past a tower's
// end 0), in 64-byte-aligned scratch; a window sum shifts a vector against its neighbours in registers
// (valignd), with zero vectors before a tower's first and after its last. Summing through memory instead (store
// the squares, load them back 1 or 2 lanes off) stalled on every load: a load that straddles a just-written
// vector cannot be forwarded from the store buffer.

// a tower's window sums (2 H + 1 channels, H = 1 or 2) of the vector `cur` between `prev` and `next`, summed in
// channel order as the plain layout sums them
template <int H>
inline __m512 window_sum16(__m512 prev, __m512 cur, __m512 next) {
  const __m512i p = _mm512_castps_si512(prev), c = _mm512_castps_si512(cur), n = _mm512_castps_si512(next);
  const __m512 m1 = _mm512_castsi512_ps(_mm512_alignr_epi32(c, p, 15));
  const __m512 p1 = _mm512_castsi512_ps(_mm512_alignr_epi32(n, c, 1));
  if constexpr (H == 1) {
    return _mm512_add_ps(_mm512_add_ps(m1, cur), p1);
  } else {
    const __m512 m2 = _mm512_castsi512_ps(_mm512_alignr_epi32(c, p, 14));
    const __m512 p2 = _mm512_castsi512_ps(_mm512_alignr_epi32(n, c, 2));
    return _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(m2, m1), cur), p1), p2);
  }
}

// out[v] = k + alpha * window sums of vals' vectors, for the n vectors of one tower (vals[-1] and vals[n] are
// zero vectors)
template <int H>
inline void tower_window_scale(const float* vals, float* out, int64_t n, float alpha, float k) {
  const __m512 va = _mm512_set1_ps(alpha), vk = _mm512_set1_ps(k);
  for (int64_t v = 0; v < n; ++v) {
    const __m512 sum = window_sum16<H>(_mm512_load_ps(vals + (v - 1) * 16), _mm512_load_ps(vals + v * 16),
                                       _mm512_load_ps(vals + (v + 1) * 16));
    _mm512_store_ps(out + v * 16, _mm512_fmadd_ps(va, sum, vk));
  }
}

// Scratch for one position: the towers' a, s (then s^-beta), s^(-beta-1), window sums and output gradient, nv
// vectors a tower,
// and one tower's window input with a zero vector on either side.
struct TowerScratch {
  int64_t groups, Cg, nv;
  std::vector<__m512> a_, scale_, ratio_, acc_, gq_, window_;  // vectors: 64-byte aligned
  TowerScratch(int64_t C, int64_t groups_)
      : groups(groups_), Cg(C / groups_), nv((C / groups_ + 15) / 16), a_(groups * nv), scale_(groups * nv),
        ratio_(groups * nv), acc_(groups * nv), gq_(groups * nv), window_(nv + 2, _mm512_setzero_ps()) {}
  float* a() { return reinterpret_cast<float*>(a_.data()); }
  float* scale() { return reinterpret_cast<float*>(scale_.data()); }
  float* ratio() { return reinterpret_cast<float*>(ratio_.data()); }
  float* acc() { return reinterpret_cast<float*>(acc_.data()); }
  float* gq() { return reinterpret_cast<float*>(gq_.data()); }
  float* inner() { return reinterpret_cast<float*>(window_.data() + 1); }  // the zero vectors around stay zero
};

// a = x (max(x, 0) with relu) of every tower, and s = k + alpha * window sums of a^2, both tower-vector major
template <int H, typename scalar_t>
inline void tower_scales(const scalar_t* x, const Params<float>& P, TowerScratch& w) {
  for (int64_t g = 0; g < w.groups; ++g) {
    for (int64_t v = 0; v < w.nv; ++v) {
      __m512 a = load16(x + g * w.Cg + v * 16, lanes_left(w.Cg - v * 16));
      if (P.relu) a = relu16(a);
      _mm512_store_ps(w.a() + (g * w.nv + v) * 16, a);
      _mm512_store_ps(w.inner() + v * 16, _mm512_mul_ps(a, a));
    }
    tower_window_scale<H>(w.inner(), w.scale() + g * w.nv * 16, w.nv, P.alpha, P.k);
  }
}

// One image's LRN output (as nhwc_lrn_image), position-major with row stride Cp.
template <int H, typename scalar_t>
void nhwc_lrn_image_avx512(const scalar_t* x, float* b, int64_t HW, int64_t C, int64_t Cp, const Params<float>& P,
                           TowerScratch& w) {
  const int64_t n = w.groups * w.nv * 16;
  for (int64_t p = 0; p < HW; ++p) {
    tower_scales<H>(x + p * C, P, w);
    pow_neg_beta(w.scale(), w.scale(), n, P.beta);
    float* row = b + p * Cp;
    for (int64_t g = 0; g < w.groups; ++g) {
      for (int64_t v = 0; v < w.nv; ++v) {
        const int64_t at = (g * w.nv + v) * 16;
        _mm512_mask_storeu_ps(row + g * w.Cg + v * 16, lanes_left(w.Cg - v * 16),
                              _mm512_mul_ps(_mm512_load_ps(w.a() + at), _mm512_load_ps(w.scale() + at)));
      }
    }
  }
}

// Max pooling as nhwc_max_pool_image: the first maximum in row-major window order wins, a NaN wins.
template <int KC, typename scalar_t>
void nhwc_max_pool_image_avx512(const float* b, scalar_t* y, uint8_t* arg, int64_t C, int64_t Cp, int64_t W,
                                int64_t Ho, int64_t Wo, int64_t k_rt, int64_t S) {
  const int64_t K = KC > 0 ? KC : k_rt;
  for (int64_t i = 0; i < Ho; ++i) {
    for (int64_t j = 0; j < Wo; ++j) {
      for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const float* corner = b + (i * S * W + j * S) * Cp + c0;
        __m512 best = _mm512_loadu_ps(corner);
        __m512i where = _mm512_setzero_si512();
        for (int64_t u = 0; u < K; ++u) {
          for (int64_t v = u == 0 ? 1 : 0; v < K; ++v) {
            const __m512 val = _mm512_loadu_ps(corner + (u * W + v) * Cp);
            const __mmask16 take = _mm512_cmp_ps_mask(val, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(val, val, _CMP_UNORD_Q);
            best = _mm512_mask_mov_ps(best, take, val);
            where = _mm512_mask_mov_epi32(where, take, _mm512_set1_epi32(static_cast<int>(u * K + v)));
          }
        }
        const __mmask16 m = lanes_left(C - c0);
        store16(y + (i * Wo + j) * C + c0, m, best);
        _mm_mask_storeu_epi8(arg + (i * Wo + j) * C + c0, m, _mm512_cvtepi32_epi8(where));
      }
    }
  }
}

// The pooled gradient that reaches position (h, w) of one image (g and arg: Ho x Wo x C): the gradients of the
// (at most ceil(K / S)^2) windows that cover it and whose argmax it is, added in output order as the unpooling
// above adds them; into w.gq(), tower-vector major. Gathering per position needs no image-sized buffer.
inline void gather_pooled_gradient(const float* g, const uint8_t* arg, int64_t h, int64_t x, const PoolShape& sh,
                                   int64_t K, int64_t S, TowerScratch& w) {
  const int64_t C = sh.C, i0 = h < K ? 0 : (h - K) / S + 1, i1 = std::min(sh.Ho - 1, h / S);
  const int64_t j0 = x < K ? 0 : (x - K) / S + 1, j1 = std::min(sh.Wo - 1, x / S);
  for (int64_t v = 0; v < w.groups * w.nv; ++v) _mm512_store_ps(w.gq() + v * 16, _mm512_setzero_ps());
  for (int64_t i = i0; i <= i1; ++i) {
    for (int64_t j = j0; j <= j1; ++j) {
      const __m128i code = _mm_set1_epi8(static_cast<char>((h - i * S) * K + x - j * S));
      const float* go = g + (i * sh.Wo + j) * C;
      const uint8_t* ao = arg + (i * sh.Wo + j) * C;
      for (int64_t gr = 0; gr < w.groups; ++gr) {
        for (int64_t v = 0; v < w.nv; ++v) {
          const int64_t c = gr * w.Cg + v * 16;
          const __mmask16 m = lanes_left(w.Cg - v * 16);
          const __mmask16 hit = _mm_mask_cmpeq_epi8_mask(m, _mm_maskz_loadu_epi8(m, ao + c), code);
          float* dst = w.gq() + (gr * w.nv + v) * 16;
          _mm512_store_ps(dst, _mm512_mask_add_ps(_mm512_load_ps(dst), hit, _mm512_load_ps(dst),
                                                  _mm512_maskz_loadu_ps(hit, go + c)));
        }
      }
    }
  }
}

// LRN backward of one position (as nhwc_lrn_backward_position): x its input, w.gq() its output's gradient,
// gx the input's gradient.
template <int H, typename scalar_t>
void nhwc_lrn_backward_position_avx512(const scalar_t* x, scalar_t* gx, const Params<float>& P, TowerScratch& w) {
  const int64_t nv = w.nv, Cg = w.Cg;
  tower_scales<H>(x, P, w);
  pow_neg_beta(w.scale(), w.scale(), w.groups * nv * 16, P.beta, w.ratio());  // scale = s^-beta
  for (int64_t g = 0; g < w.groups; ++g) {  // window sums of t = g a s^(-beta-1), tower by tower
    for (int64_t v = 0; v < nv; ++v) {
      const int64_t at = (g * nv + v) * 16;
      const __m512 gv = _mm512_load_ps(w.gq() + at);
      _mm512_store_ps(w.inner() + v * 16, _mm512_mul_ps(_mm512_mul_ps(gv, _mm512_load_ps(w.a() + at)),
                                                        _mm512_load_ps(w.ratio() + at)));
    }
    tower_window_scale<H>(w.inner(), w.acc() + g * nv * 16, nv, 1.f, 0.f);
  }
  const __m512 two_ab = _mm512_set1_ps(2.f * P.alpha * P.beta);
  for (int64_t g = 0; g < w.groups; ++g) {
    for (int64_t v = 0; v < nv; ++v) {
      const int64_t at = (g * nv + v) * 16, c = g * Cg + v * 16;
      const __mmask16 m = lanes_left(Cg - v * 16);
      const __m512 xv = load16(x + c, m);
      const __m512 gp = _mm512_mul_ps(_mm512_load_ps(w.gq() + at), _mm512_load_ps(w.scale() + at));
      __m512 grad = _mm512_fnmadd_ps(_mm512_mul_ps(two_ab, xv), _mm512_load_ps(w.acc() + at), gp);
      if (P.relu) grad = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(xv, _mm512_setzero_ps(), _CMP_GT_OQ), grad);
      store16(gx + c, m, grad);
    }
  }
}
#endif

// One image's LRN output, position-major with row stride Cp, from its channels-last input x (HW x C).
template <typename scalar_t, typename acc_t>
void nhwc_lrn_image(const scalar_t* x, acc_t* b, int64_t HW, int64_t C, int64_t Cp, int64_t Cg,
                    const Params<acc_t>& P, acc_t* sq, acc_t* scale) {
  for (int64_t p = 0; p < HW; ++p) {
    const scalar_t* xp = x + p * C;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t a = load<scalar_t, acc_t>(xp + c, P.relu);
      sq[c] = a * a;
    }
    vector_window_scale(sq, scale, C, Cg, P);
    pow_neg_beta(scale, scale, C, P.beta);
    acc_t* row = b + p * Cp;
    for (int64_t c = 0; c < C; ++c) row[c] = load<scalar_t, acc_t>(xp + c, P.relu) * scale[c];
  }
}

// Max pooling of a position-major image b (row stride Cp) into channels-last y and arg (Ho x Wo x C).
template <int KC, int SC, typename acc_t, typename scalar_t>
void nhwc_max_pool_image(const acc_t* b, scalar_t* y, uint8_t* arg, int64_t C, int64_t Cp, int64_t W, int64_t Ho,
                         int64_t Wo, int64_t k_rt, int64_t s_rt) {
  const int64_t K = KC > 0 ? KC : k_rt, S = SC > 0 ? SC : s_rt;
  for (int64_t i = 0; i < Ho; ++i) {
    for (int64_t j = 0; j < Wo; ++j) {
      scalar_t* yo = y + (i * Wo + j) * C;
      uint8_t* ao = arg + (i * Wo + j) * C;
      for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
        const acc_t* corner = b + (i * S * W + j * S) * Cp + c0;
        acc_t bst[kLanes], wh[kLanes];
        window_max<KC, acc_t>(corner, W, Cp, K, bst, wh);
        const int64_t lanes = std::min<int64_t>(kLanes, C - c0);
        for (int64_t l = 0; l < lanes; ++l) {
          yo[c0 + l] = static_cast<scalar_t>(bst[l]);
          ao[c0 + l] = static_cast<uint8_t>(wh[l]);
        }
      }
    }
  }
}

// The pooled gradient g (Ho x Wo x C) sent back to the maximum of each window in gb (H x W x C, zeroed): for
// each of the window's offsets, every channel whose argmax code is that offset takes its gradient. K * K masked
// passes over whole channel vectors vectorise, where a scatter to C different positions does not.
template <typename acc_t>
void nhwc_unpool_image(const acc_t* g, const uint8_t* arg, acc_t* gb, int64_t C, int64_t W, int64_t Ho,
                       int64_t Wo, int64_t K, int64_t S) {
  for (int64_t i = 0; i < Ho; ++i) {
    for (int64_t j = 0; j < Wo; ++j) {
      const acc_t* __restrict go = g + (i * Wo + j) * C;
      const uint8_t* __restrict ao = arg + (i * Wo + j) * C;
      for (int64_t u = 0; u < K; ++u) {
        for (int64_t v = 0; v < K; ++v) {
          acc_t* __restrict dst = gb + ((i * S + u) * W + j * S + v) * C;
          const uint8_t code = static_cast<uint8_t>(u * K + v);
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) dst[c] += ao[c] == code ? go[c] : acc_t(0);
        }
      }
    }
  }
}

// LRN backward (see tile_backward) of one position's C channels: x its input, gq the gradient of its output,
// gx the input's gradient; `work` holds 7 * C scratch values.
template <typename scalar_t, typename acc_t>
void nhwc_lrn_backward_position(const scalar_t* __restrict x, const acc_t* __restrict gq, scalar_t* __restrict gx,
                                int64_t C, int64_t Cg, const Params<acc_t>& P, acc_t* work) {
  acc_t *a = work, *sq = work + C, *scale = work + 2 * C, *pw = work + 3 * C, *t = work + 4 * C, *acc = work + 5 * C,
        *xv = work + 6 * C;
  const bool relu = P.relu;
  for (int64_t c = 0; c < C; ++c) xv[c] = static_cast<acc_t>(x[c]);
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    a[c] = relu && xv[c] <= acc_t(0) ? acc_t(0) : xv[c];
    sq[c] = a[c] * a[c];
  }
  vector_window_scale(sq, scale, C, Cg, P);
  pow_neg_beta(scale, pw, C, P.beta, t);  // t = s^(-beta-1) for now
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) t[c] = gq[c] * a[c] * t[c];
  const Params<acc_t> sum_only{P.half, acc_t(1), P.beta, acc_t(0), relu};  // k 0, alpha 1: the plain window sum
  vector_window_scale(t, acc, C, Cg, sum_only);
  const acc_t two_ab = acc_t(2) * P.alpha * P.beta;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const bool dead = relu && !(xv[c] > acc_t(0));
    const acc_t gr = gq[c] * pw[c] - two_ab * xv[c] * acc[c];
    t[c] = dead ? acc_t(0) : gr;
  }
  for (int64_t c = 0; c < C; ++c) gx[c] = static_cast<scalar_t>(t[c]);
}

#if ALEXNET_AVX512
// gather_pooled_gradient and nhwc_lrn_backward_position_avx512 in one, for position (h, x) of one image (g, arg:
// its pooled gradient and argmax codes, Ho x Wo x C), when the tower's width in vectors (NV) and the window (H)
// are known at compile time and beta is 0.75: the same arithmetic in the same order (the pooled gradient summed
// in the same window order), with every tower's vectors in registers instead of scratch memory (the loops
// unroll), where the two-step version spent its time on loop overhead and stores read straight back.
template <int NV, int H, typename scalar_t>
void nhwc_backward_position_gathered(const float* g, const uint8_t* arg, int64_t h, int64_t x_, const PoolShape& sh,
                                     int64_t K, int64_t S, const scalar_t* x, scalar_t* gx, const Params<float>& P,
                                     int64_t groups) {
  const int64_t C = sh.C, Cg = C / groups;
  const int64_t i0 = h < K ? 0 : (h - K) / S + 1, i1 = std::min(sh.Ho - 1, h / S);
  const int64_t j0 = x_ < K ? 0 : (x_ - K) / S + 1, j1 = std::min(sh.Wo - 1, x_ / S);
  const __m512 zero = _mm512_setzero_ps(), va = _mm512_set1_ps(P.alpha), vk = _mm512_set1_ps(P.k);
  const __m512 two_ab = _mm512_set1_ps(2.f * P.alpha * P.beta);
  for (int64_t t_ = 0; t_ < groups; ++t_) {
    __m512 xv[NV], a[NV], sq[NV], pw[NV], t[NV], gq[NV];
    __mmask16 m[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      m[v] = lanes_left(Cg - v * 16);
      gq[v] = zero;
    }
    for (int64_t i = i0; i <= i1; ++i) {
      for (int64_t j = j0; j <= j1; ++j) {
        const __m128i code = _mm_set1_epi8(static_cast<char>((h - i * S) * K + x_ - j * S));
        const float* go = g + (i * sh.Wo + j) * C + t_ * Cg;
        const uint8_t* ao = arg + (i * sh.Wo + j) * C + t_ * Cg;
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          const __mmask16 hit = _mm_mask_cmpeq_epi8_mask(m[v], _mm_maskz_loadu_epi8(m[v], ao + v * 16), code);
          gq[v] = _mm512_mask_add_ps(gq[v], hit, gq[v], _mm512_maskz_loadu_ps(hit, go + v * 16));
        }
      }
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      xv[v] = load16(x + t_ * Cg + v * 16, m[v]);
      a[v] = P.relu ? relu16(xv[v]) : xv[v];
      sq[v] = _mm512_mul_ps(a[v], a[v]);
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __m512 s = _mm512_fmadd_ps(
          va, window_sum16<H>(v > 0 ? sq[v - 1] : zero, sq[v], v + 1 < NV ? sq[v + 1] : zero), vk);
      __m512 r;
      pow_neg_three_quarters(s, pw[v], r);
      t[v] = _mm512_mul_ps(_mm512_mul_ps(gq[v], a[v]), _mm512_mul_ps(pw[v], _mm512_mul_ps(r, r)));
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __m512 acc = window_sum16<H>(v > 0 ? t[v - 1] : zero, t[v], v + 1 < NV ? t[v + 1] : zero);
      __m512 grad = _mm512_fnmadd_ps(_mm512_mul_ps(two_ab, xv[v]), acc, _mm512_mul_ps(gq[v], pw[v]));
      if (P.relu) grad = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(xv[v], zero, _CMP_GT_OQ), grad);
      store16(gx + t_ * Cg + v * 16, m[v], grad);
    }
  }
}

template <typename scalar_t>
using GatheredBackward = void (*)(const float*, const uint8_t*, int64_t, int64_t, const PoolShape&, int64_t, int64_t,
                                  const scalar_t*, scalar_t*, const Params<float>&, int64_t);

// The fused gather + backward for this tower width, or nullptr where there is none (then the two steps run).
template <int H, typename scalar_t>
GatheredBackward<scalar_t> gathered_backward_for(int64_t nv, float beta) {
  if (beta != 0.75f) return nullptr;
  switch (nv) {
    case 1: return &nhwc_backward_position_gathered<1, H, scalar_t>;
    case 2: return &nhwc_backward_position_gathered<2, H, scalar_t>;
    case 3: return &nhwc_backward_position_gathered<3, H, scalar_t>;
    case 4: return &nhwc_backward_position_gathered<4, H, scalar_t>;
    case 6: return &nhwc_backward_position_gathered<6, H, scalar_t>;
    case 8: return &nhwc_backward_position_gathered<8, H, scalar_t>;
    default: return nullptr;
  }
}

// The forward of one image (as nhwc_lrn_image_avx512) with NV, H known at compile time and beta 0.75.
template <int NV, int H, typename scalar_t>
void nhwc_lrn_image_fixed(const scalar_t* x, float* b, int64_t HW, int64_t C, int64_t Cp, const Params<float>& P,
                          TowerScratch& w) {
  const int64_t Cg = w.Cg;
  const __m512 zero = _mm512_setzero_ps(), va = _mm512_set1_ps(P.alpha), vk = _mm512_set1_ps(P.k);
  for (int64_t p = 0; p < HW; ++p) {
    for (int64_t g = 0; g < w.groups; ++g) {
      __m512 a[NV], sq[NV];
      __mmask16 m[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        m[v] = lanes_left(Cg - v * 16);
        a[v] = load16(x + p * C + g * Cg + v * 16, m[v]);
        if (P.relu) a[v] = relu16(a[v]);
        sq[v] = _mm512_mul_ps(a[v], a[v]);
      }
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        const __m512 s = _mm512_fmadd_ps(
            va, window_sum16<H>(v > 0 ? sq[v - 1] : zero, sq[v], v + 1 < NV ? sq[v + 1] : zero), vk);
        __m512 pw, r;
        pow_neg_three_quarters(s, pw, r);
        _mm512_mask_storeu_ps(b + p * Cp + g * Cg + v * 16, m[v], _mm512_mul_ps(a[v], pw));
      }
    }
  }
}

template <int H, typename scalar_t>
auto forward_image_for(int64_t nv, float beta) -> void (*)(const scalar_t*, float*, int64_t, int64_t, int64_t,
                                                           const Params<float>&, TowerScratch&) {
  if (beta == 0.75f) {
    switch (nv) {
      case 1: return &nhwc_lrn_image_fixed<1, H, scalar_t>;
      case 2: return &nhwc_lrn_image_fixed<2, H, scalar_t>;
      case 3: return &nhwc_lrn_image_fixed<3, H, scalar_t>;
      case 4: return &nhwc_lrn_image_fixed<4, H, scalar_t>;
      case 6: return &nhwc_lrn_image_fixed<6, H, scalar_t>;
      case 8: return &nhwc_lrn_image_fixed<8, H, scalar_t>;
      default: break;
    }
  }
  return &nhwc_lrn_image_avx512<H, scalar_t>;
}
#endif

// Images [begin, end) of the channels-last forward and backward on the vector path; false where this build or
// type has none (then the portable loops run).
// Images [begin, end) of the channels-last forward and backward on the vector path; false where this build, the
// type or the window (more than 2 channels either side) has none: then the portable loops run.
template <typename scalar_t, typename acc_t>
bool nhwc_forward_images_avx512(const scalar_t* xp, scalar_t* yp, uint8_t* ip, int64_t begin, int64_t end,
                                const PoolShape& sh, int64_t groups, int64_t pool_k, int64_t pool_s,
                                const Params<acc_t>& P) {
#if ALEXNET_AVX512
  if constexpr (std::is_same_v<acc_t, float>) {
    if (P.half < 1 || P.half > 2) return false;
    const int64_t C = sh.C, HW = sh.HW, Cp = padded_channels(C), out = sh.Ho * sh.Wo * C;
    std::vector<float> b(HW * Cp, 0.f);
    TowerScratch w(C, groups);
    const auto lrn = P.half == 2 ? forward_image_for<2, scalar_t>(w.nv, P.beta)
                                 : forward_image_for<1, scalar_t>(w.nv, P.beta);
    const auto pool = pool_k == 3   ? &nhwc_max_pool_image_avx512<3, scalar_t>
                      : pool_k == 2 ? &nhwc_max_pool_image_avx512<2, scalar_t>
                                    : &nhwc_max_pool_image_avx512<0, scalar_t>;
    for (int64_t n = begin; n < end; ++n) {
      lrn(xp + n * HW * C, b.data(), HW, C, Cp, P, w);
      pool(b.data(), yp + n * out, ip + n * out, C, Cp, sh.W, sh.Ho, sh.Wo, pool_k, pool_s);
    }
    return true;
  }
#endif
  return false;
}

template <typename scalar_t, typename acc_t>
bool nhwc_backward_images_avx512(const acc_t* gp, const scalar_t* xp, const uint8_t* ip, scalar_t* gxp, int64_t begin,
                                 int64_t end, const PoolShape& sh, int64_t groups, int64_t pool_k, int64_t pool_s,
                                 const Params<acc_t>& P) {
#if ALEXNET_AVX512
  if constexpr (std::is_same_v<acc_t, float>) {
    if (P.half < 1 || P.half > 2) return false;
    const int64_t C = sh.C, HW = sh.HW, out = sh.Ho * sh.Wo * C;
    TowerScratch w(C, groups);
    const auto fused = P.half == 2 ? gathered_backward_for<2, scalar_t>(w.nv, P.beta)
                                   : gathered_backward_for<1, scalar_t>(w.nv, P.beta);
    if (fused != nullptr) {
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t q = 0; q < HW; ++q) {
          fused(gp + n * out, ip + n * out, q / sh.W, q % sh.W, sh, pool_k, pool_s, xp + (n * HW + q) * C,
                gxp + (n * HW + q) * C, P, groups);
        }
      }
      return true;
    }
    const auto lrn = P.half == 2 ? &nhwc_lrn_backward_position_avx512<2, scalar_t>
                                 : &nhwc_lrn_backward_position_avx512<1, scalar_t>;
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t q = 0; q < HW; ++q) {
        gather_pooled_gradient(gp + n * out, ip + n * out, q / sh.W, q % sh.W, sh, pool_k, pool_s, w);
        lrn(xp + (n * HW + q) * C, gxp + (n * HW + q) * C, P, w);
      }
    }
    return true;
  }
#endif
  return false;
}

std::tuple<at::Tensor, at::Tensor> lrn_pool_forward_nhwc(const at::Tensor& input, int64_t size, double alpha,
                                                         double beta, double k, bool relu, int64_t pool_k,
                                                         int64_t pool_s, int64_t groups) {
  const PoolShape shape = pool_shape(input, size, pool_k, pool_s, groups);
  const int64_t N = shape.N, C = shape.C, W = shape.W, HW = shape.HW, Ho = shape.Ho, Wo = shape.Wo;
  auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty({N, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto idx = at::empty({N, C, Ho, Wo}, x.options().dtype(at::kByte).memory_format(at::MemoryFormat::ChannelsLast));
  ALEXNET_DISPATCH(x.scalar_type(), "alexnet_lrn_pool_forward_nhwc", [&] {
    const Params<acc_t> P{size / 2, acc_t(alpha), acc_t(beta), acc_t(k), relu};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    uint8_t* ip = idx.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      const int64_t Cp = padded_channels(C);  // padding lanes stay 0 and are never written out
      std::vector<acc_t> b(HW * Cp, acc_t(0)), sq(C), scale(C);
      if (nhwc_forward_images_avx512(xp, yp, ip, begin, end, shape, groups, pool_k, pool_s, P)) return;
      const auto pool = pool_k == 3 && pool_s == 2   ? &nhwc_max_pool_image<3, 2, acc_t, scalar_t>
                        : pool_k == 2 && pool_s == 2 ? &nhwc_max_pool_image<2, 2, acc_t, scalar_t>
                                                     : &nhwc_max_pool_image<0, 0, acc_t, scalar_t>;
      for (int64_t n = begin; n < end; ++n) {
        nhwc_lrn_image(xp + n * HW * C, b.data(), HW, C, Cp, C / groups, P, sq.data(), scale.data());
        pool(b.data(), yp + n * Ho * Wo * C, ip + n * Ho * Wo * C, C, Cp, W, Ho, Wo, pool_k, pool_s);
      }
    });
  });
  return {y, idx};
}

at::Tensor lrn_pool_backward_nhwc(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& argmax,
                                  int64_t size, double alpha, double beta, double k, bool relu, int64_t pool_k,
                                  int64_t pool_s, int64_t groups) {
  const PoolShape shape = pool_shape(input, size, pool_k, pool_s, groups);
  check_pooled_gradient(grad, argmax, shape);
  const int64_t N = shape.N, C = shape.C, W = shape.W, HW = shape.HW, Ho = shape.Ho, Wo = shape.Wo;
  auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  auto idx = argmax.contiguous(at::MemoryFormat::ChannelsLast);
  // the pooled gradient in the accumulation type once (it is a quarter of the maps): the unpooling's masked
  // passes then compare and add float vectors only
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto g = grad.to(acc_type).contiguous(at::MemoryFormat::ChannelsLast);
  auto gx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  ALEXNET_DISPATCH(x.scalar_type(), "alexnet_lrn_pool_backward_nhwc", [&] {
    const Params<acc_t> P{size / 2, acc_t(alpha), acc_t(beta), acc_t(k), relu};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t* gp = g.const_data_ptr<acc_t>();
    const uint8_t* ip = idx.const_data_ptr<uint8_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const int64_t Cg = C / groups;
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> gb(HW * C), work(7 * C);
      if (nhwc_backward_images_avx512(gp, xp, ip, gxp, begin, end, shape, groups, pool_k, pool_s, P)) return;
      for (int64_t n = begin; n < end; ++n) {
        std::fill(gb.begin(), gb.end(), acc_t(0));
        nhwc_unpool_image(gp + n * Ho * Wo * C, ip + n * Ho * Wo * C, gb.data(), C, W, Ho, Wo, pool_k, pool_s);
        const scalar_t* xn = xp + n * HW * C;
        scalar_t* gxn = gxp + n * HW * C;
        for (int64_t q = 0; q < HW; ++q) {
          nhwc_lrn_backward_position(xn + q * C, gb.data() + q * C, gxn + q * C, C, Cg, P, work.data());
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
  m.def("pool_forward_nhwc(Tensor input, int size, float alpha, float beta, float k, bool relu, int pool_k, "
        "int pool_s, int groups) -> (Tensor, Tensor)");
  m.def("pool_backward_nhwc(Tensor grad, Tensor input, Tensor argmax, int size, float alpha, float beta, "
        "float k, bool relu, int pool_k, int pool_s, int groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(alexnet_lrn, CPU, m) {
  m.impl("forward", &lrn_forward);
  m.impl("backward", &lrn_backward);
  m.impl("pool_forward", &lrn_pool_forward);
  m.impl("pool_backward", &lrn_pool_backward);
  m.impl("pool_forward_nhwc", &lrn_pool_forward_nhwc);
  m.impl("pool_backward_nhwc", &lrn_pool_backward_nhwc);
}
