// merge_tiles and unmerge_tiles on the GPU: one fused pass each.
//
// Both kernels work row by row: a thread block of (tx, ty) threads handles ty output rows, tx
// threads striding along each row, so index arithmetic is done once per row and every load and
// store of a warp is contiguous. Values are computed in float (double for float64 unmerge, as
// F.interpolate does) and rounded once to the output type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace sammed_fast::gpu {
namespace {

#define SF_CHECK_LAUNCH()                       \
  do {                                          \
    const cudaError_t sf_error_ = cudaGetLastError(); \
    if (sf_error_ != cudaSuccess) {             \
      return sf_error_;                         \
    }                                           \
  } while (0)

__device__ __forceinline__ float to_float(uint8_t v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(double v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename Out>
__device__ __forceinline__ Out from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_float<double>(float v) { return static_cast<double>(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Accumulation type of bilinear interpolation (ATen's acc_type on CUDA).
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return to_float(v);
}
template <>
__device__ __forceinline__ double to_acc<double>(double v) {
  return v;
}

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type v) {
  return from_float<T>(v);
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}

struct RowLaunch {
  dim3 grid;
  dim3 block;
};

// ty rows per block of 256 threads, tx (a power of two >= 32) threads along a row.
RowLaunch row_launch(long long rows, long long row_length) {
  int tx = 32;
  while (tx < 256 && tx < row_length) {
    tx *= 2;
  }
  const int ty = 256 / tx;
  return {dim3(static_cast<unsigned>((rows + ty - 1) / ty)), dim3(tx, ty)};
}

// ------------------------------------------------------------------------------ merge
// Output row `row` of (canvases, 3, grid*h) rows: canvas n, channel c, canvas row Y; tile row i
// = Y / h; the row holds tiles j = 0..grid-1 side by side.
template <typename In, typename Out>
__global__ void __launch_bounds__(256)
    merge_tiles_kernel(const In* __restrict__ images, Out* __restrict__ out, int batch,
                       int channels, int height, int width, int grid, long long rows,
                       Normalisation norm) {
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= rows) {
    return;
  }
  const long long canvas_h = static_cast<long long>(grid) * height;
  const int Y = static_cast<int>(row % canvas_h);
  const long long plane = row / canvas_h;  // n * 3 + c
  const int c = static_cast<int>(plane % 3);
  const long long n = plane / 3;
  const int i = Y / height;
  const int y = Y - i * height;
  const float mean = c == 0 ? norm.mean[0] : (c == 1 ? norm.mean[1] : norm.mean[2]);
  const float stdev = c == 0 ? norm.std[0] : (c == 1 ? norm.std[1] : norm.std[2]);
  const int source_channel = channels == 3 ? c : 0;
  Out* out_row = out + row * (static_cast<long long>(grid) * width);
  for (int j = 0; j < grid; ++j) {
    const long long k = (n * grid + i) * grid + j;
    Out* dst = out_row + static_cast<long long>(j) * width;
    if (k < batch) {
      const In* src =
          images + ((k * channels + source_channel) * height + y) * static_cast<long long>(width);
      for (int x = threadIdx.x; x < width; x += blockDim.x) {
        dst[x] = from_float<Out>((to_float(src[x]) - mean) / stdev);
      }
    } else {
      for (int x = threadIdx.x; x < width; x += blockDim.x) {
        dst[x] = from_float<Out>(0.0f);
      }
    }
  }
}

// ------------------------------------------------------------------------------ unmerge
// Quadrant (i, j) of row k: i = (k % g^2) / g, j = (k % g^2) % g; origin of the quadrant in the
// canvas plane `plane` (= k * channels + c).
template <typename T>
__device__ __forceinline__ const T* quadrant(const T* logits, long long plane, int channels,
                                             int canvas_h, int canvas_w, int grid, int tile_h,
                                             int tile_w) {
  const long long k = plane / channels;
  const int position = static_cast<int>(k % (static_cast<long long>(grid) * grid));
  const int i = position / grid;
  const int j = position - i * grid;
  return logits + plane * canvas_h * static_cast<long long>(canvas_w) +
         static_cast<long long>(i) * tile_h * canvas_w + static_cast<long long>(j) * tile_w;
}

template <typename T>
__global__ void __launch_bounds__(256)
    unmerge_copy_kernel(const T* __restrict__ logits, T* __restrict__ out, int channels,
                        int canvas_h, int canvas_w, int grid, int tile_h, int tile_w,
                        long long rows) {
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= rows) {
    return;
  }
  const int y = static_cast<int>(row % tile_h);
  const long long plane = row / tile_h;
  const T* src = quadrant(logits, plane, channels, canvas_h, canvas_w, grid, tile_h, tile_w) +
                 static_cast<long long>(y) * canvas_w;
  T* dst = out + row * tile_w;
  for (int x = threadIdx.x; x < tile_w; x += blockDim.x) {
    dst[x] = src[x];
  }
}

// ATen's area_pixel_compute_source_index (align_corners=False, not cubic).
template <typename A>
__device__ __forceinline__ A source_index(A scale, int dst_index) {
  const A src = scale * (dst_index + static_cast<A>(0.5)) - static_cast<A>(0.5);
  return src < static_cast<A>(0) ? static_cast<A>(0) : src;
}

// The arithmetic of ATen's upsample_bilinear2d_out_frame, term by term, so results agree.
template <typename T>
__global__ void __launch_bounds__(256)
    unmerge_bilinear_kernel(const T* __restrict__ logits, T* __restrict__ out, int channels,
                            int canvas_h, int canvas_w, int grid, int tile_h, int tile_w,
                            int out_h, int out_w, typename Acc<T>::type rheight,
                            typename Acc<T>::type rwidth, long long rows) {
  using A = typename Acc<T>::type;
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= rows) {
    return;
  }
  const int h2 = static_cast<int>(row % out_h);
  const long long plane = row / out_h;
  const T* tile = quadrant(logits, plane, channels, canvas_h, canvas_w, grid, tile_h, tile_w);

  const A h1r = source_index(rheight, h2);
  int h1 = static_cast<int>(h1r);
  h1 = h1 < tile_h - 1 ? h1 : tile_h - 1;  // never taken mathematically; keeps reads in bounds
  const int h1p = (h1 < tile_h - 1) ? 1 : 0;
  const A h1lambda = h1r - h1;
  const A h0lambda = static_cast<A>(1) - h1lambda;
  const T* row0 = tile + static_cast<long long>(h1) * canvas_w;
  const T* row1 = tile + static_cast<long long>(h1 + h1p) * canvas_w;
  T* dst = out + row * static_cast<long long>(out_w);

  for (int w2 = threadIdx.x; w2 < out_w; w2 += blockDim.x) {
    const A w1r = source_index(rwidth, w2);
    int w1 = static_cast<int>(w1r);
    w1 = w1 < tile_w - 1 ? w1 : tile_w - 1;
    const int w1p = (w1 < tile_w - 1) ? 1 : 0;
    const A w1lambda = w1r - w1;
    const A w0lambda = static_cast<A>(1) - w1lambda;
    const A val = h0lambda * (w0lambda * to_acc(row0[w1]) + w1lambda * to_acc(row0[w1 + w1p])) +
                  h1lambda * (w0lambda * to_acc(row1[w1]) + w1lambda * to_acc(row1[w1 + w1p]));
    dst[w2] = from_acc<T>(val);
  }
}

// ------------------------------------------------------------------------------ dispatch
template <typename In, typename Out>
cudaError_t launch_merge(const void* images, void* out, int batch, int channels, int height,
                         int width, int grid, Normalisation norm, cudaStream_t stream) {
  const long long canvases = (static_cast<long long>(batch) + static_cast<long long>(grid) * grid - 1) /
                             (static_cast<long long>(grid) * grid);
  const long long rows = canvases * 3 * grid * static_cast<long long>(height);
  if (rows == 0) {
    return cudaSuccess;
  }
  const RowLaunch launch = row_launch(rows, width);
  merge_tiles_kernel<In, Out><<<launch.grid, launch.block, 0, stream>>>(
      static_cast<const In*>(images), static_cast<Out*>(out), batch, channels, height, width, grid,
      rows, norm);
  SF_CHECK_LAUNCH();
  return cudaSuccess;
}

template <typename In>
cudaError_t merge_for_output(const void* images, void* out, DType out_dtype, int batch,
                             int channels, int height, int width, int grid, Normalisation norm,
                             cudaStream_t stream) {
  switch (out_dtype) {
    case DType::kFloat32:
      return launch_merge<In, float>(images, out, batch, channels, height, width, grid, norm,
                                     stream);
    case DType::kFloat16:
      return launch_merge<In, __half>(images, out, batch, channels, height, width, grid, norm,
                                      stream);
    case DType::kBFloat16:
      return launch_merge<In, __nv_bfloat16>(images, out, batch, channels, height, width, grid,
                                             norm, stream);
    case DType::kFloat64:
      return launch_merge<In, double>(images, out, batch, channels, height, width, grid, norm,
                                      stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_unmerge(const void* logits, void* out, int batch, int channels, int canvas_h,
                           int canvas_w, int grid, int out_h, int out_w, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int tile_h = canvas_h / grid;
  const int tile_w = canvas_w / grid;
  const long long planes = static_cast<long long>(batch) * channels;
  if (out_h == tile_h && out_w == tile_w) {
    const long long rows = planes * tile_h;
    if (rows == 0) {
      return cudaSuccess;
    }
    const RowLaunch launch = row_launch(rows, tile_w);
    unmerge_copy_kernel<T><<<launch.grid, launch.block, 0, stream>>>(
        static_cast<const T*>(logits), static_cast<T*>(out), channels, canvas_h, canvas_w, grid,
        tile_h, tile_w, rows);
    SF_CHECK_LAUNCH();
    return cudaSuccess;
  }
  const long long rows = planes * out_h;
  if (rows == 0) {
    return cudaSuccess;
  }
  // ATen: (accscalar_t)input_size / output_size, computed on the host.
  const A rheight = static_cast<A>(tile_h) / static_cast<A>(out_h);
  const A rwidth = static_cast<A>(tile_w) / static_cast<A>(out_w);
  const RowLaunch launch = row_launch(rows, out_w);
  unmerge_bilinear_kernel<T><<<launch.grid, launch.block, 0, stream>>>(
      static_cast<const T*>(logits), static_cast<T*>(out), channels, canvas_h, canvas_w, grid,
      tile_h, tile_w, out_h, out_w, rheight, rwidth, rows);
  SF_CHECK_LAUNCH();
  return cudaSuccess;
}

}  // namespace

cudaError_t merge_tiles(const void* images, DType in_dtype, void* out, DType out_dtype, int batch,
                        int channels, int height, int width, int grid, Normalisation norm,
                        cudaStream_t stream) {
  switch (in_dtype) {
    case DType::kUInt8:
      return merge_for_output<uint8_t>(images, out, out_dtype, batch, channels, height, width,
                                       grid, norm, stream);
    case DType::kFloat32:
      return merge_for_output<float>(images, out, out_dtype, batch, channels, height, width, grid,
                                     norm, stream);
    case DType::kFloat16:
      return merge_for_output<__half>(images, out, out_dtype, batch, channels, height, width,
                                      grid, norm, stream);
    case DType::kBFloat16:
      return merge_for_output<__nv_bfloat16>(images, out, out_dtype, batch, channels, height,
                                             width, grid, norm, stream);
    case DType::kFloat64:
      return merge_for_output<double>(images, out, out_dtype, batch, channels, height, width,
                                      grid, norm, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t unmerge_tiles(const void* logits, void* out, DType dtype, int batch, int channels,
                          int canvas_h, int canvas_w, int grid, int out_h, int out_w,
                          cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return launch_unmerge<float>(logits, out, batch, channels, canvas_h, canvas_w, grid, out_h,
                                   out_w, stream);
    case DType::kFloat16:
      return launch_unmerge<__half>(logits, out, batch, channels, canvas_h, canvas_w, grid, out_h,
                                    out_w, stream);
    case DType::kBFloat16:
      return launch_unmerge<__nv_bfloat16>(logits, out, batch, channels, canvas_h, canvas_w, grid,
                                           out_h, out_w, stream);
    case DType::kFloat64:
      return launch_unmerge<double>(logits, out, batch, channels, canvas_h, canvas_w, grid, out_h,
                                    out_w, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace sammed_fast::gpu
