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

#include "launchers.h"

namespace {

namespace gpu = sammed_fast::gpu;

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

void check_cuda(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.is_cuda(), name, " must be a CUDA tensor, got device ", tensor.device());
}

void check_index_range(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_VALUE(tensor.numel() <= kInt32Max, name, " has ", tensor.numel(),
                    " elements, more than the 2^31-1 that 32-bit indices address; split the batch");
}

// (B,H,W) bool/uint8 masks with H, W >= 1.
void check_masks(const at::Tensor& masks, int64_t connectivity) {
  check_cuda(masks, "masks");
  TORCH_CHECK_VALUE(masks.dim() == 3, "masks must have 3 dimensions (B,H,W), got shape ",
                    masks.sizes());
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kByte,
                   "masks must have dtype bool or uint8, got ", masks.scalar_type());
  TORCH_CHECK_VALUE(masks.size(1) >= 1 && masks.size(2) >= 1,
                    "masks must have height and width >= 1, got shape ", masks.sizes());
  TORCH_CHECK_VALUE(connectivity == 4 || connectivity == 8, "connectivity must be 4 or 8, got ",
                    connectivity);
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

bool is_float_type(at::ScalarType type) {
  return type == at::kFloat || type == at::kHalf || type == at::kBFloat16 || type == at::kDouble;
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

// ceil(size / downscale) without overflow for any downscale >= 1.
int64_t pooled_size(int64_t size, int64_t downscale) {
  return size / downscale + (size % downscale != 0 ? 1 : 0);
}

std::tuple<at::Tensor, at::Tensor> boxes_from_probs_cuda(const at::Tensor& probs, double threshold,
                                                         int64_t downscale, int64_t connectivity,
                                                         bool empty_full,
                                                         bool /*check_finite*/) {
  // NaN checks would need a host synchronisation here; the Python wrapper does them on CUDA.
  check_cuda(probs, "probs");
  TORCH_CHECK_VALUE(probs.dim() == 3, "probs must have 3 dimensions (B,H,W), got shape ",
                    probs.sizes());
  TORCH_CHECK_TYPE(is_float_type(probs.scalar_type()),
                   "probs must have dtype float32, float16, bfloat16 or float64, got ",
                   probs.scalar_type());
  TORCH_CHECK_VALUE(probs.size(1) >= 1 && probs.size(2) >= 1,
                    "probs must have height and width >= 1, got shape ", probs.sizes());
  TORCH_CHECK_VALUE(downscale >= 1, "downscale must be >= 1, got ", downscale);
  TORCH_CHECK_VALUE(connectivity == 4 || connectivity == 8, "connectivity must be 4 or 8, got ",
                    connectivity);
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
  const int cells_h = static_cast<int>(pooled_size(height, downscale));
  const int cells_w = static_cast<int>(pooled_size(width, downscale));
  const int conn = static_cast<int>(connectivity);
  const size_t bytes =
      gpu::boxes_from_probs_workspace_bytes(static_cast<int>(batch), cells_h, cells_w, conn);
  at::Tensor scratch = workspace(bytes, input);
  // `cell > threshold` compares in float32, as the float32 tensor against a Python float does.
  C10_CUDA_CHECK(gpu::boxes_from_probs(
      input.const_data_ptr(), dtype_code(input.scalar_type(), "probs"),
      boxes.mutable_data_ptr<float>(), static_cast<uint8_t*>(empty.mutable_data_ptr()),
      static_cast<int>(batch), static_cast<int>(height), static_cast<int>(width), cells_h, cells_w,
      static_cast<float>(threshold), conn, empty_full, scratch.mutable_data_ptr(), bytes,
      c10::cuda::getCurrentCUDAStream()));
  return {boxes, empty};
}

at::Tensor merge_tiles_cuda(const at::Tensor& images, int64_t grid, at::ArrayRef<double> pixel_mean,
                            at::ArrayRef<double> pixel_std, at::ScalarType out_dtype) {
  check_cuda(images, "images");
  TORCH_CHECK_VALUE(images.dim() == 4, "images must have 4 dimensions (B,C,h,w), got shape ",
                    images.sizes());
  TORCH_CHECK_TYPE(images.scalar_type() == at::kByte || is_float_type(images.scalar_type()),
                   "images must have dtype uint8 or a float dtype, got ", images.scalar_type());
  TORCH_CHECK_VALUE(images.size(1) == 1 || images.size(1) == 3,
                    "images must have 1 or 3 channels, got ", images.size(1));
  TORCH_CHECK_VALUE(images.size(2) >= 1 && images.size(3) >= 1,
                    "images must have height and width >= 1, got shape ", images.sizes());
  TORCH_CHECK_VALUE(grid >= 1, "grid must be >= 1, got ", grid);
  TORCH_CHECK_VALUE(pixel_mean.size() == 3 && pixel_std.size() == 3,
                    "pixel_mean and pixel_std need 3 values each, got ", pixel_mean.size(), " and ",
                    pixel_std.size());
  for (const double s : pixel_std) {
    TORCH_CHECK_VALUE(s > 0, "pixel_std must be positive, got ", pixel_std);
  }
  TORCH_CHECK_TYPE(is_float_type(out_dtype), "out_dtype must be a float dtype, got ", out_dtype);
  check_index_range(images, "images");
  const int64_t batch = images.size(0), channels = images.size(1);
  const int64_t height = images.size(2), width = images.size(3);
  TORCH_CHECK_VALUE(grid <= kInt32Max / height && grid <= kInt32Max / width,
                    "grid * tile size exceeds 2^31-1: grid=", grid, ", tile ", height, "x", width);
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
  TORCH_CHECK_VALUE(logits.dim() == 4, "logits must have 4 dimensions (B,C,Hc,Wc), got shape ",
                    logits.sizes());
  TORCH_CHECK_TYPE(is_float_type(logits.scalar_type()),
                   "logits must have dtype float32, float16, bfloat16 or float64, got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(2) >= 1 && logits.size(3) >= 1,
                    "logits must have height and width >= 1, got shape ", logits.sizes());
  TORCH_CHECK_VALUE(grid >= 1, "grid must be >= 1, got ", grid);
  const int64_t batch = logits.size(0), channels = logits.size(1);
  const int64_t canvas_h = logits.size(2), canvas_w = logits.size(3);
  TORCH_CHECK_VALUE(canvas_h % grid == 0 && canvas_w % grid == 0, "logits canvas ", canvas_h, "x",
                    canvas_w, " is not divisible by grid=", grid);
  check_index_range(logits, "logits");
  const int64_t tile_h = canvas_h / grid, tile_w = canvas_w / grid;
  // As the reference: out_h > 0 asks for (out_h, out_w); otherwise the quadrant size.
  const int64_t height = out_h > 0 ? out_h : tile_h;
  const int64_t width = out_h > 0 ? out_w : tile_w;
  TORCH_CHECK_VALUE(width >= 1 && height <= kInt32Max && width <= kInt32Max,
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
