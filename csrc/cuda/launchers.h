// Launchers of the CUDA kernels (csrc/cuda/*.cu): plain C++ over raw device pointers, so that
// the .cu files compile without torch headers. csrc/cuda/ops_cuda.cpp checks the arguments,
// allocates outputs and workspaces with torch and calls these on the current stream.
//
// Every launcher enqueues its kernels on `stream` without host synchronisation and returns the
// first error of cudaGetLastError() after each launch (cudaSuccess when all launched).
// Shapes: every size is >= 1 and every tensor holds at most 2^31-1 elements (checked by the
// caller); device buffers are contiguous and at least 16-byte aligned.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace sammed_fast::gpu {

// Element types of the tile and probability kernels.
enum class DType : int { kUInt8 = 0, kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3, kFloat64 = 4 };

// ---- connected components (components.cu) -----------------------------------------------------
// masks: (batch, height, width) bytes, nonzero = foreground (bool or uint8 tensors).
// connectivity: 4 or 8. Workspace: a device buffer of at least the returned number of bytes.

size_t label_components_workspace_bytes(int batch, int height, int width, int connectivity);
// labels: int32 (batch, height, width); 0 background, components numbered 1..n per image in
// raster-first order (scipy.ndimage.label's numbering).
cudaError_t label_components(const uint8_t* masks, int32_t* labels, int batch, int height, int width,
                             int connectivity, void* workspace, size_t workspace_bytes,
                             cudaStream_t stream);

size_t largest_component_workspace_bytes(int batch, int height, int width, int connectivity);
// mask_out: bool bytes (batch, height, width); boxes: float32 (batch, 4) xyxy inclusive, -1 when
// empty; areas: int64 (batch,). Ties go to the lowest raster-first label.
cudaError_t largest_component(const uint8_t* masks, uint8_t* mask_out, float* boxes, int64_t* areas,
                              int batch, int height, int width, int connectivity, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream);

// probs: (batch, height, width) of `dtype` (float32/16, bfloat16, float64). The map is pooled by
// adaptive average pooling to (cells_h, cells_w) cells (= (height, width) for downscale 1),
// thresholded with `cell > threshold` (pooled and compared in float64 for float64 probs, else in
// float32, the threshold rounded once to that precision), its largest component's cell box mapped
// back to the full-resolution pixels those cells cover. boxes: float32 (batch, 4); empty: bool bytes
// (batch,); an empty image gets (0, 0, width-1, height-1) when empty_full, else NaNs.
size_t boxes_from_probs_workspace_bytes(int batch, int cells_h, int cells_w, int connectivity);
cudaError_t boxes_from_probs(const void* probs, DType dtype, float* boxes, uint8_t* empty, int batch,
                             int height, int width, int cells_h, int cells_w, double threshold,
                             int connectivity, bool empty_full, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream);

// ---- tiles (tiles.cu) -------------------------------------------------------------------------
struct Normalisation {
  float mean[3];
  float std[3];
};

// images (batch, channels, height, width), channels 1 or 3, of in_dtype (uint8 or a float type)
// -> out (ceil(batch/grid^2), 3, grid*height, grid*width) of out_dtype (a float type):
// (x - mean[c]) / std[c] computed in float32, tile k at canvas k / grid^2, row (k % grid^2) / grid,
// column (k % grid^2) % grid; missing tiles are 0.
cudaError_t merge_tiles(const void* images, DType in_dtype, void* out, DType out_dtype, int batch,
                        int channels, int height, int width, int grid, Normalisation norm,
                        cudaStream_t stream);

// logits (batch, channels, canvas_h, canvas_w) -> out (batch, channels, out_h, out_w), same float
// dtype: row k's own quadrant (tile position k % grid^2), copied when (out_h, out_w) is the
// quadrant size, else bilinearly resized exactly as F.interpolate(align_corners=False) on CUDA.
cudaError_t unmerge_tiles(const void* logits, void* out, DType dtype, int batch, int channels,
                          int canvas_h, int canvas_w, int grid, int out_h, int out_w,
                          cudaStream_t stream);

}  // namespace sammed_fast::gpu
