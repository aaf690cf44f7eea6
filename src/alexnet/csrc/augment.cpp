// The training crop of Section 4.1 in one pass (alexnet.data.augment.Augmenter's CPU path):
//
//   out[i, c, y, x] = (image[i, c, oy_i + y, sx] - mean[c, oy_i + y, sx]) * scale[c] + offset[i, c]
//
// with sx = ox_i + x, or ox_i + crop - 1 - x for a reflected image (the mean is reflected with it), written
// in the plain (N, C, H, W) or the channels-last layout, images spread over torch's threads. The rounding
// is that of the tensor operations it replaces (the difference rounded to float, then torch.addcmul's fused
// multiply-add, or the sum where the scale is 1; nothing else contracted: the library is built with
// -ffp-contract=off), so both paths give identical batches (tests/test_augment.py) wherever torch's kernels
// fuse their multiply-adds (alexnet.native.vector_fma; elsewhere the tensor operations run).
// The Python loop took 46 ms for a batch of 128 crops of 224 from 256 on one thread, and the network then
// copied the batch into channels-last.
//
// With `index`, `batch` is a whole split held in memory (N, 3, S, S) and image i of the output is crop i of
// batch[index[i]]: the batch is gathered by the crop itself instead of being copied out first (a 25 MB copy
// per batch of 128 at 256 px, 7-14 ms on one thread of the 2-core development machine).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

namespace {

at::Tensor crop_normalize(const at::Tensor& batch, const std::optional<at::Tensor>& index,
                          const std::optional<at::Tensor>& mean, const at::Tensor& oy,
                          const at::Tensor& ox, const at::Tensor& flip, const at::Tensor& offset,
                          const at::Tensor& scale, bool unit_scale, int64_t crop, bool channels_last) {
  TORCH_CHECK(batch.device().is_cpu() && batch.scalar_type() == at::kByte && batch.dim() == 4 &&
                  batch.size(1) == 3 && batch.is_contiguous(),
              "alexnet_augment::crop_normalize: batch must be a contiguous uint8 (B, 3, S, S) CPU tensor, got ",
              batch.scalar_type(), " ", batch.sizes());
  const int64_t N = batch.size(0), H = batch.size(2), W = batch.size(3);
  at::Tensor index_c;
  if (index.has_value()) {
    TORCH_CHECK(index->device().is_cpu() && index->scalar_type() == at::kLong && index->dim() == 1,
                "alexnet_augment::crop_normalize: index must be a 1-d int64 CPU tensor, got ", index->scalar_type(),
                " ", index->sizes(), " on ", index->device());
    index_c = index->contiguous();
  }
  const int64_t B = index.has_value() ? index_c.size(0) : N;
  const int64_t* ip = index.has_value() ? index_c.data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; ip != nullptr && i < B; ++i) {
    TORCH_CHECK(ip[i] >= 0 && ip[i] < N, "alexnet_augment::crop_normalize: index[", i, "] = ", ip[i],
                " is outside the ", N, " images held");
  }
  TORCH_CHECK(crop > 0 && crop <= H && crop <= W, "alexnet_augment::crop_normalize: crop ", crop,
              " does not fit images of ", H, "x", W);
  auto check_vec = [&](const at::Tensor& t, at::ScalarType type, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == type && t.dim() == 1 && t.size(0) == B,
                "alexnet_augment::crop_normalize: ", name, " must be a (", B, ",) ", type, " CPU tensor, got ",
                t.scalar_type(), " ", t.sizes(), " on ", t.device());
    return t.contiguous();
  };
  const at::Tensor oy_c = check_vec(oy, at::kLong, "oy"), ox_c = check_vec(ox, at::kLong, "ox");
  const at::Tensor flip_c = check_vec(flip, at::kBool, "flip");
  TORCH_CHECK(offset.device().is_cpu() && offset.scalar_type() == at::kFloat && offset.numel() == B * 3,
              "alexnet_augment::crop_normalize: offset must be a float32 CPU tensor of ", B, " x 3 values");
  TORCH_CHECK(scale.device().is_cpu() && scale.scalar_type() == at::kFloat && scale.numel() == 3,
              "alexnet_augment::crop_normalize: scale must be a float32 CPU tensor of 3 values");
  const at::Tensor off = offset.contiguous().view({B, 3});
  const at::Tensor sc = scale.contiguous().view({3});
  const float* m = nullptr;
  at::Tensor mean_c;
  if (mean.has_value()) {
    mean_c = mean->contiguous();
    TORCH_CHECK(mean_c.device().is_cpu() && mean_c.scalar_type() == at::kFloat && mean_c.dim() == 3 &&
                    mean_c.size(0) == 3 && mean_c.size(1) == H && mean_c.size(2) == W,
                "alexnet_augment::crop_normalize: mean must be a float32 (3, ", H, ", ", W, ") tensor, got ",
                mean_c.scalar_type(), " ", mean_c.sizes());
    m = mean_c.data_ptr<float>();
  }
  const int64_t* oyp = oy_c.data_ptr<int64_t>();
  const int64_t* oxp = ox_c.data_ptr<int64_t>();
  const bool* fp = flip_c.data_ptr<bool>();
  for (int64_t i = 0; i < B; ++i) {
    TORCH_CHECK(oyp[i] >= 0 && oyp[i] + crop <= H && oxp[i] >= 0 && oxp[i] + crop <= W,
                "alexnet_augment::crop_normalize: window (", oyp[i], ", ", oxp[i], ") of image ", i,
                " leaves the ", H, "x", W, " image");
  }
  at::Tensor out = at::empty({B, 3, crop, crop}, batch.options().dtype(at::kFloat),
                             channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const uint8_t* src = batch.data_ptr<uint8_t>();
  const float* offp = off.data_ptr<float>();
  const float* scp = sc.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t plane = H * W, o_step = channels_last ? 3 : 1;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t y0 = oyp[i];
      // the crop's first source column, and the step along it (-1: reflected)
      const int64_t start = fp[i] ? oxp[i] + crop - 1 : oxp[i], step = fp[i] ? -1 : 1;
      for (int64_t c = 0; c < 3; ++c) {
        const float s = scp[c], o = offp[i * 3 + c];
        const int64_t image = ip != nullptr ? ip[i] : i;
        const uint8_t* img = src + (image * 3 + c) * plane;
        const float* mc = m != nullptr ? m + c * plane : nullptr;
        for (int64_t y = 0; y < crop; ++y) {
          const int64_t row = (y0 + y) * W;
          float* o_row = channels_last ? dst + ((i * crop + y) * crop) * 3 + c
                                       : dst + ((i * 3 + c) * crop + y) * crop;
          for (int64_t x = 0; x < crop; ++x) {
            const int64_t sx = row + start + step * x;
            float t = static_cast<float>(img[sx]);
            if (mc != nullptr) t = t - mc[sx];
            o_row[x * o_step] = unit_scale ? t + o : std::fma(t, s, o);
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(alexnet_augment, m) {
  m.def("crop_normalize(Tensor batch, Tensor? index, Tensor? mean, Tensor oy, Tensor ox, Tensor flip, "
        "Tensor offset, Tensor scale, "
        "bool unit_scale, int crop, bool channels_last) -> Tensor");
}

TORCH_LIBRARY_IMPL(alexnet_augment, CPU, m) { m.impl("crop_normalize", &crop_normalize); }
