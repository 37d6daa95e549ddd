// CUDA kernels of the sammed_fast ops: argument checks, allocation of outputs and workspaces with
// torch on the input's device and stream, and calls of the launchers in csrc/cuda/*.cu.
// No host synchronisation: every op only enqueues work on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "../checks.h"
#include "launchers.h"

namespace {

namespace gpu = sammed_fast::gpu;

using sammed_fast::checks::kInt32Max;
namespace checks = sammed_fast::checks;

void check_cuda(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.is_cuda(), name, " must be a CUDA tensor, got device ", tensor.device());
}

void check_index_range(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_VALUE(tensor.numel() <= kInt32Max, name, " has ", tensor.numel(),
                    " elements, more than the 2^31-1 that 32-bit indices address; split the batch");
}

// (B,H,W) bool/uint8 masks with H, W >= 1, on CUDA, addressable with 32-bit indices.
void check_masks(const at::Tensor& masks, int64_t connectivity) {
  check_cuda(masks, "masks");
  checks::masks(masks, connectivity);
  check_index_range(masks, "masks");
}

gpu::DType dtype_code(at::ScalarType type, const char* name) {
  switch (type) {
    case at::kByte:
      return gpu::DType::kUInt8;
    case at::kFloat:
      return gpu::DType::kFloat32;
    case at::kHalf:
      return gpu::DType::kFloat16;
    case at::kBFloat16:
      return gpu::DType::kBFloat16;
    case at::kDouble:
      return gpu::DType::kFloat64;
    default:
      break;
  }
  TORCH_CHECK_TYPE(false, name, " has unsupported dtype ", type);
  return gpu::DType::kFloat32;  // not reached
}

const uint8_t* mask_bytes(const at::Tensor& contiguous_masks) {
  return static_cast<const uint8_t*>(contiguous_masks.const_data_ptr());
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

at::Tensor label_components_cuda(const at::Tensor& masks, int64_t connectivity) {
  check_masks(masks, connectivity);
  const c10::cuda::CUDAGuard guard(masks.device());
  const at::Tensor input = masks.contiguous();
  at::Tensor labels = at::empty(input.sizes(), input.options().dtype(at::kInt));
  if (input.numel() == 0) {
    return labels;
  }
  const int batch = static_cast<int>(input.size(0));
  const int height = static_cast<int>(input.size(1));
  const int width = static_cast<int>(input.size(2));
  const int conn = static_cast<int>(connectivity);
  const size_t bytes = gpu::label_components_workspace_bytes(batch, height, width, conn);
  at::Tensor scratch = workspace(bytes, input);
  C10_CUDA_CHECK(gpu::label_components(mask_bytes(input), labels.mutable_data_ptr<int32_t>(), batch,
                                       height, width, conn, scratch.mutable_data_ptr(), bytes,
                                       c10::cuda::getCurrentCUDAStream()));
  return labels;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> largest_component_cuda(const at::Tensor& masks,
                                                                      int64_t connectivity) {
  check_masks(masks, connectivity);
  const c10::cuda::CUDAGuard guard(masks.device());
  const at::Tensor input = masks.contiguous();
  const int64_t batch = input.size(0);
  at::Tensor mask = at::empty(input.sizes(), input.options().dtype(at::kBool));
  at::Tensor boxes = at::empty({batch, 4}, input.options().dtype(at::kFloat));
  at::Tensor areas = at::empty({batch}, input.options().dtype(at::kLong));
  if (input.numel() == 0) {
    return {mask, boxes, areas};
  }
  const int height = static_cast<int>(input.size(1));
  const int width = static_cast<int>(input.size(2));
  const int conn = static_cast<int>(connectivity);
  const size_t bytes =
      gpu::largest_component_workspace_bytes(static_cast<int>(batch), height, width, conn);
  at::Tensor scratch = workspace(bytes, input);
  C10_CUDA_CHECK(gpu::largest_component(
      mask_bytes(input), static_cast<uint8_t*>(mask.mutable_data_ptr()),
      boxes.mutable_data_ptr<float>(), areas.mutable_data_ptr<int64_t>(), static_cast<int>(batch),
      height, width, conn, scratch.mutable_data_ptr(), bytes, c10::cuda::getCurrentCUDAStream()));
  return {mask, boxes, areas};
}

std::tuple<at::Tensor, at::Tensor> boxes_from_probs_cuda(const at::Tensor& probs, double threshold,
                                                         int64_t downscale, int64_t connectivity,
                                                         bool empty_full,
                                                         bool /*check_finite*/) {
  // Finiteness checks would need a host synchronisation here; the Python wrapper does them on CUDA.
  check_cuda(probs, "probs");
  checks::probs(probs, threshold, downscale, connectivity);
  check_index_range(probs, "probs");
  const c10::cuda::CUDAGuard guard(probs.device());
  const at::Tensor input = probs.contiguous();
  const int64_t batch = input.size(0);
  at::Tensor boxes = at::empty({batch, 4}, input.options().dtype(at::kFloat));
  at::Tensor empty = at::empty({batch}, input.options().dtype(at::kBool));
  if (batch == 0) {
    return {boxes, empty};
  }
  const int64_t height = input.size(1);
  const int64_t width = input.size(2);
  const int cells_h = static_cast<int>(checks::ceil_div(height, downscale));
  const int cells_w = static_cast<int>(checks::ceil_div(width, downscale));
  const int conn = static_cast<int>(connectivity);
  const size_t bytes =
      gpu::boxes_from_probs_workspace_bytes(static_cast<int>(batch), cells_h, cells_w, conn);
  at::Tensor scratch = workspace(bytes, input);
  // `cell > threshold` compares in float64 for float64 probs, else in float32 (see launchers.h).
  C10_CUDA_CHECK(gpu::boxes_from_probs(
      input.const_data_ptr(), dtype_code(input.scalar_type(), "probs"),
      boxes.mutable_data_ptr<float>(), static_cast<uint8_t*>(empty.mutable_data_ptr()),
      static_cast<int>(batch), static_cast<int>(height), static_cast<int>(width), cells_h, cells_w,
      threshold, conn, empty_full, scratch.mutable_data_ptr(), bytes,
      c10::cuda::getCurrentCUDAStream()));
  return {boxes, empty};
}

at::Tensor merge_tiles_cuda(const at::Tensor& images, int64_t grid, at::ArrayRef<double> pixel_mean,
                            at::ArrayRef<double> pixel_std, at::ScalarType out_dtype) {
  check_cuda(images, "images");
  checks::merge(images, grid, pixel_mean, pixel_std, out_dtype);
  check_index_range(images, "images");
  const int64_t batch = images.size(0), channels = images.size(1);
  const int64_t height = images.size(2), width = images.size(3);
  const int64_t per_canvas = grid * grid;  // < 2^62: grid < 2^31
  const int64_t canvases = batch / per_canvas + (batch % per_canvas != 0 ? 1 : 0);
  const int64_t canvas_h = grid * height, canvas_w = grid * width;  // each < 2^31
  TORCH_CHECK_VALUE(canvases == 0 || (canvas_h <= kInt32Max / canvas_w &&
                                      canvases * 3 <= kInt32Max / (canvas_h * canvas_w)),
                    "merge_tiles output would exceed 2^31-1 elements; split the batch");
  const c10::cuda::CUDAGuard guard(images.device());
  at::Tensor out =
      at::empty({canvases, 3, canvas_h, canvas_w}, images.options().dtype(out_dtype));
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor input = images.contiguous();
  gpu::Normalisation norm;
  for (int c = 0; c < 3; ++c) {
    // torch.tensor(pixel_mean, dtype=float32): each value rounded to float32 once.
    norm.mean[c] = static_cast<float>(pixel_mean[c]);
    norm.std[c] = static_cast<float>(pixel_std[c]);
  }
  C10_CUDA_CHECK(gpu::merge_tiles(input.const_data_ptr(), dtype_code(input.scalar_type(), "images"),
                                  out.mutable_data_ptr(), dtype_code(out_dtype, "out_dtype"),
                                  static_cast<int>(batch), static_cast<int>(channels),
                                  static_cast<int>(height), static_cast<int>(width),
                                  static_cast<int>(grid), norm, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor unmerge_tiles_cuda(const at::Tensor& logits, int64_t grid, int64_t out_h,
                              int64_t out_w) {
  check_cuda(logits, "logits");
  checks::unmerge(logits, grid, out_h, out_w);
  const int64_t batch = logits.size(0), channels = logits.size(1);
  const int64_t canvas_h = logits.size(2), canvas_w = logits.size(3);
  check_index_range(logits, "logits");
  const int64_t tile_h = canvas_h / grid, tile_w = canvas_w / grid;
  // As the reference: out_h > 0 asks for (out_h, out_w); otherwise the quadrant size.
  const int64_t height = out_h > 0 ? out_h : tile_h;
  const int64_t width = out_h > 0 ? out_w : tile_w;
  TORCH_CHECK_VALUE(height <= kInt32Max && width <= kInt32Max,
                    "out_size must be two positive ints below 2^31, got (", out_h, ", ", out_w, ")");
  TORCH_CHECK_VALUE(batch * channels * height <= kInt32Max,
                    "unmerge_tiles output has more than 2^31-1 rows; split the batch");
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor out = at::empty({batch, channels, height, width}, logits.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor input = logits.contiguous();
  C10_CUDA_CHECK(gpu::unmerge_tiles(
      input.const_data_ptr(), out.mutable_data_ptr(), dtype_code(input.scalar_type(), "logits"),
      static_cast<int>(batch), static_cast<int>(channels), static_cast<int>(canvas_h),
      static_cast<int>(canvas_w), static_cast<int>(grid), static_cast<int>(height),
      static_cast<int>(width), c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sammed_fast, CUDA, m) {
  m.impl("label_components", &label_components_cuda);
  m.impl("largest_component", &largest_component_cuda);
  m.impl("boxes_from_probs", &boxes_from_probs_cuda);
  m.impl("merge_tiles", &merge_tiles_cuda);
  m.impl("unmerge_tiles", &unmerge_tiles_cuda);
}
