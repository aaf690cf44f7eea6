// Section 5's update rule in one pass over memory (alexnet.optim.PaperSGD's CPU path):
//
//   v <- momentum * v - weight_decay * lr * w - lr * dL/dw
//   w <- w + v
//
// PaperSGD written with tensor operations (v.mul_, v.add_, v.add_, w.add_) reads and writes the 61 million
// velocities and weights in four passes, about 11 x 244 MB per step for the paper's network; here each
// element is read once and written once (5 x 244 MB). The arithmetic and its rounding are those of the four
// operations as torch's vectorised CPU kernels compute them (a product, then two fused multiply-adds, then a
// sum), so both paths give identical weights (tests/test_optim.py) wherever torch's kernels fuse their
// multiply-adds (alexnet.native.vector_fma; elsewhere PaperSGD keeps the tensor operations).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Elementwise over memory: any dense layout works, as long as the three tensors share it.
void check(const at::Tensor& t, const at::Tensor& param, const char* what, size_t i) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_non_overlapping_and_dense(),
              "alexnet_sgd::paper_step: ", what, "[", i, "] must be a dense float32 CPU tensor, got ",
              t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.sizes() == param.sizes() && t.strides() == param.strides(), "alexnet_sgd::paper_step: ", what,
              "[", i, "] has sizes ", t.sizes(), " and strides ", t.strides(), ", its parameter ", param.sizes(),
              " and ", param.strides());
}

void paper_step(at::TensorList params, at::TensorList grads, at::TensorList velocities, double lr,
                double momentum, double weight_decay) {
  TORCH_CHECK(params.size() == grads.size() && params.size() == velocities.size(),
              "alexnet_sgd::paper_step: ", params.size(), " parameters, ", grads.size(), " gradients, ",
              velocities.size(), " velocities");
  // The scalars as torch's kernels see them: float, with the products -wd*lr and -lr taken in double.
  const float m = static_cast<float>(momentum);
  const float a = static_cast<float>(-weight_decay * lr);
  const float b = static_cast<float>(-lr);
  for (size_t i = 0; i < params.size(); ++i) {  // every tensor checked before anything is written
    check(params[i], params[i], "params", i);
    check(grads[i], params[i], "grads", i);
    check(velocities[i], params[i], "velocities", i);
  }
  for (size_t i = 0; i < params.size(); ++i) {
    float* __restrict__ w = params[i].data_ptr<float>();
    const float* __restrict__ g = grads[i].data_ptr<float>();
    float* __restrict__ v = velocities[i].data_ptr<float>();
    at::parallel_for(0, params[i].numel(), 1 << 15, [=](int64_t begin, int64_t end) {
      float* __restrict__ wr = w;
      const float* __restrict__ gr = g;
      float* __restrict__ vr = v;
#pragma omp simd
      for (int64_t j = begin; j < end; ++j) {
        float t = vr[j] * m;          // v.mul_(momentum)
        t = std::fma(wr[j], a, t);    // v.add_(w, alpha=-wd*lr)
        t = std::fma(gr[j], b, t);    // v.add_(grad, alpha=-lr)
        vr[j] = t;
        wr[j] = wr[j] + t;            // w.add_(v)
      }
    });
  }
}

// How many of torch's threads at::parallel_for gave work to, for `n` chunks of one element: 1 in a library
// built without OpenMP, whatever torch.get_num_threads() says (the build flags' test, tests/test_native.py).
int64_t parallel_threads(int64_t n) {
  std::vector<char> used(std::max<int64_t>(at::get_num_threads(), 1), 0);
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) { used[at::get_thread_num()] = 1; });
  int64_t count = 0;
  for (char u : used) count += u;
  return count;
}

}  // namespace

TORCH_LIBRARY(alexnet_sgd, m) {
  m.def("paper_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] velocities, float lr, float momentum, "
        "float weight_decay) -> ()");
  m.def("parallel_threads(int n) -> int", &parallel_threads);  // no tensor: one kernel for every backend
}

TORCH_LIBRARY_IMPL(alexnet_sgd, CPU, m) { m.impl("paper_step", &paper_step); }
