// Argument checks of every op, shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels: the
// contract of each schema in csrc/ops.cpp, in one place for the C++ layer. The Python wrappers in
// sammed_fast/ops check the same first (with Python's own types); these guard direct calls of
// torch.ops.sammed_fast.*. Device-specific limits (32-bit indices on CUDA) stay with the kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace sammed_fast::checks {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

inline bool is_float_type(at::ScalarType type) {
  return type == at::kFloat || type == at::kHalf || type == at::kBFloat16 || type == at::kDouble;
}

// ceil(size / divisor) for size >= 0, divisor >= 1, without overflow (divisor may be 2^63-1).
inline int64_t ceil_div(int64_t size, int64_t divisor) {
  return size / divisor + (size % divisor != 0 ? 1 : 0);
}

inline void connectivity(int64_t connectivity) {
  TORCH_CHECK_VALUE(connectivity == 4 || connectivity == 8, "connectivity must be 4 or 8, got ",
                    connectivity);
}

// (B,H,W) images with H, W >= 1 and at most 2^31-1 pixels each.
inline void images_3d(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_VALUE(tensor.dim() == 3, name, " must have 3 dimensions (B,H,W), got shape ",
                    tensor.sizes());
  TORCH_CHECK_VALUE(tensor.size(1) >= 1 && tensor.size(2) >= 1, name,
                    " must have height and width >= 1, got shape ", tensor.sizes());
  TORCH_CHECK_VALUE(tensor.size(1) <= kInt32Max / tensor.size(2), name,
                    " images have more than 2^31-1 pixels, got shape ", tensor.sizes());
}

// label_components, largest_component: (B,H,W) bool/uint8 masks.
inline void masks(const at::Tensor& masks, int64_t connectivity_) {
  images_3d(masks, "masks");
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kByte,
                   "masks must have dtype bool or uint8, got ", masks.scalar_type());
  connectivity(connectivity_);
}

// boxes_from_probs: (B,H,W) float probabilities.
inline void probs(const at::Tensor& probs, double threshold, int64_t downscale,
                  int64_t connectivity_) {
  images_3d(probs, "probs");
  TORCH_CHECK_TYPE(is_float_type(probs.scalar_type()),
                   "probs must have dtype float32, float16, bfloat16 or float64, got ",
                   probs.scalar_type());
  TORCH_CHECK_VALUE(threshold >= 0.0 && threshold <= 1.0, "threshold must lie in [0, 1], got ",
                    threshold);
  TORCH_CHECK_VALUE(downscale >= 1, "downscale must be >= 1, got ", downscale);
  connectivity(connectivity_);
}

// merge_tiles: (B,C,h,w) images, C in {1,3}, uint8 or float; 3 means and 3 stds > 0, finite in
// float32; grid * h and grid * w below 2^31 (so no canvas size overflows).
inline void merge(const at::Tensor& images, int64_t grid, c10::ArrayRef<double> pixel_mean,
                  c10::ArrayRef<double> pixel_std, at::ScalarType out_dtype) {
  TORCH_CHECK_VALUE(images.dim() == 4, "images must have 4 dimensions (B,C,h,w), got shape ",
                    images.sizes());
  TORCH_CHECK_TYPE(images.scalar_type() == at::kByte || is_float_type(images.scalar_type()),
                   "images must have dtype uint8, float32, float16, bfloat16 or float64, got ",
                   images.scalar_type());
  TORCH_CHECK_VALUE(images.size(1) == 1 || images.size(1) == 3,
                    "images must have 1 or 3 channels, got ", images.size(1));
  TORCH_CHECK_VALUE(images.size(2) >= 1 && images.size(3) >= 1,
                    "images must have height and width >= 1, got shape ", images.sizes());
  TORCH_CHECK_VALUE(grid >= 1, "grid must be >= 1, got ", grid);
  TORCH_CHECK_VALUE(grid <= kInt32Max / images.size(2) && grid <= kInt32Max / images.size(3),
                    "grid * tile size exceeds 2^31-1: grid=", grid, ", tile ", images.size(2), "x",
                    images.size(3));
  TORCH_CHECK_VALUE(pixel_mean.size() == 3, "pixel_mean needs 3 values, got ", pixel_mean.size());
  TORCH_CHECK_VALUE(pixel_std.size() == 3, "pixel_std needs 3 values, got ", pixel_std.size());
  // The kernels normalise in float32: the values must stay finite (and std > 0) there.
  constexpr double kFloatMax = std::numeric_limits<float>::max();
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK_VALUE(std::fabs(pixel_mean[c]) <= kFloatMax,  // false for NaN
                      "pixel_mean must be finite in float32, got ", pixel_mean);
    TORCH_CHECK_VALUE(
        std::fabs(pixel_std[c]) <= kFloatMax && static_cast<float>(pixel_std[c]) > 0.0f,
        "pixel_std must be finite and positive in float32, got ", pixel_std);
  }
  TORCH_CHECK_TYPE(is_float_type(out_dtype),
                   "out_dtype must be float32, float16, bfloat16 or float64, got ", out_dtype);
}

// unmerge_tiles: (B,C,Hc,Wc) float logits, canvas divisible by grid; out_h and out_w both 0
// (the quadrant size) or both positive.
inline void unmerge(const at::Tensor& logits, int64_t grid, int64_t out_h, int64_t out_w) {
  TORCH_CHECK_VALUE(logits.dim() == 4, "logits must have 4 dimensions (B,C,Hc,Wc), got shape ",
                    logits.sizes());
  TORCH_CHECK_TYPE(is_float_type(logits.scalar_type()),
                   "logits must have dtype float32, float16, bfloat16 or float64, got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(2) >= 1 && logits.size(3) >= 1,
                    "logits must have height and width >= 1, got shape ", logits.sizes());
  TORCH_CHECK_VALUE(grid >= 1, "grid must be >= 1, got ", grid);
  TORCH_CHECK_VALUE(logits.size(2) % grid == 0 && logits.size(3) % grid == 0, "logits canvas ",
                    logits.size(2), "x", logits.size(3), " is not divisible by grid=", grid);
  TORCH_CHECK_VALUE((out_h == 0 && out_w == 0) || (out_h > 0 && out_w > 0),
                    "out_size (out_h, out_w) must be both positive (resize) or both 0, got (",
                    out_h, ", ", out_w, ")");
}

}  // namespace sammed_fast::checks
