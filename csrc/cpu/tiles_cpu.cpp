// CPU kernels of merge_tiles and unmerge_tiles: one pass over the output, rows in parallel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace sammed_fast {
namespace {

// Rows of about this many output elements per parallel task.
constexpr int64_t kGrainElements = 32768;

int64_t grain_rows(int64_t row_elements) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_elements));
}

template <typename in_t, typename out_t>
void merge_rows(const at::Tensor& images, at::Tensor& canvases, int64_t grid,
                const float mean[3], const float stdev[3]) {
  const int64_t B = images.size(0), C = images.size(1), h = images.size(2), w = images.size(3);
  const int64_t rows_per_plane = grid * h;
  const int64_t rows = canvases.size(0) * 3 * rows_per_plane;
  const in_t* in = images.const_data_ptr<in_t>();
  out_t* out = canvases.data_ptr<out_t>();
  at::parallel_for(0, rows, grain_rows(grid * w), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / rows_per_plane;  // canvas * 3 + channel
      const int64_t canvas = plane / 3, channel = plane % 3;
      const int64_t Y = r % rows_per_plane, tile_row = Y / h, y = Y % h;
      const float m = mean[channel], s = stdev[channel];
      out_t* dst = out + r * grid * w;
      for (int64_t col = 0; col < grid; ++col, dst += w) {
        const int64_t k = canvas * grid * grid + tile_row * grid + col;
        if (k >= B) {
          std::fill(dst, dst + w, out_t(0));
          continue;
        }
        const in_t* src = in + ((k * C + (C == 3 ? channel : 0)) * h + y) * w;
        for (int64_t x = 0; x < w; ++x) {
          dst[x] = static_cast<out_t>((static_cast<float>(src[x]) - m) / s);
        }
      }
    }
  });
}

at::Tensor merge_tiles_cpu(const at::Tensor& images_in, int64_t grid,
                           c10::ArrayRef<double> pixel_mean, c10::ArrayRef<double> pixel_std,
                           at::ScalarType out_dtype) {
  TORCH_CHECK_VALUE(images_in.dim() == 4, "images must have 4 dimensions (B,C,h,w), got shape ",
                    images_in.sizes());
  const at::ScalarType in_dtype = images_in.scalar_type();
  TORCH_CHECK_TYPE(at::isFloatingType(in_dtype) || in_dtype == at::kByte,
                   "images must have a floating dtype or uint8, got ", in_dtype);
  TORCH_CHECK_VALUE(images_in.size(1) == 1 || images_in.size(1) == 3,
                    "images must have 1 or 3 channels, got ", images_in.size(1));
  TORCH_CHECK_VALUE(images_in.size(2) >= 1 && images_in.size(3) >= 1,
                    "images must have height and width >= 1, got shape ", images_in.sizes());
  TORCH_CHECK_VALUE(grid >= 1, "grid must be >= 1, got ", grid);
  TORCH_CHECK_VALUE(pixel_mean.size() == 3 && pixel_std.size() == 3,
                    "pixel_mean and pixel_std need 3 values each, got ", pixel_mean.size(),
                    " and ", pixel_std.size());
  TORCH_CHECK_TYPE(at::isFloatingType(out_dtype), "out_dtype must be a floating dtype, got ",
                   out_dtype);
  float mean[3], stdev[3];
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK_VALUE(pixel_std[c] > 0, "pixel_std must be positive, got ", pixel_std);
    mean[c] = static_cast<float>(pixel_mean[c]);
    stdev[c] = static_cast<float>(pixel_std[c]);
  }
  const at::Tensor images = images_in.contiguous();
  const int64_t B = images.size(0), h = images.size(2), w = images.size(3);
  const int64_t canvases = (B + grid * grid - 1) / (grid * grid);
  at::Tensor out = at::empty({canvases, 3, grid * h, grid * w}, images.options().dtype(out_dtype));
  if (canvases == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, in_dtype, "merge_tiles", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "merge_tiles_out", [&] {
      merge_rows<in_t, scalar_t>(images, out, grid, mean, stdev);
    });
  });
  return out;
}

// Bilinear resizing (align_corners=False) reproduces the rounding of PyTorch's CPU
// upsample_bilinear2d, which has two kernels for contiguous NCHW input:
// - "nested" (the generic kernel): per-axis weights rounded to the tensor's dtype, each output
//   fma(fma(a00, w0, a01 * w1), h0, fma(a10, w0, a11 * w1) * h1);
// - "four weights" (the channels-last kernel, picked for small outputs): weights in the compute
//   type, products w00 = h0 * w0 ..., each output
//   fma(a11, w11, fma(a10, w10, fma(a00, w00, a01 * w01))).
// The FMAs are what PyTorch's compiler contracts those expressions into.

// Whether upsample_bilinear2d takes its four-weight kernel for tiles (B,C,th,tw) -> (out_h,out_w).
bool uses_four_weight_kernel(int64_t C, int64_t th, int64_t tw, int64_t out_h, int64_t out_w) {
  const bool channels_last_contiguous = th == 1 && tw == 1;  // of a contiguous NCHW tensor
  return (channels_last_contiguous && C > 3) || out_h + out_w <= 128 ||
         (at::get_num_threads() == 1 && C == 3);
}

// Source taps along one axis. An axis of unchanged size is copied.
template <typename scalar_t>
struct Taps {
  using opmath_t = at::opmath_type<scalar_t>;
  std::vector<int64_t> i0, i1;
  std::vector<opmath_t> w0, w1;

  Taps(int64_t in_size, int64_t out_size, bool round_to_dtype)
      : i0(out_size), i1(out_size), w0(out_size), w1(out_size) {
    const opmath_t scale = static_cast<opmath_t>(in_size) / out_size;
    for (int64_t o = 0; o < out_size; ++o) {
      if (in_size == out_size) {
        i0[o] = i1[o] = o;
        w0[o] = 1;
        w1[o] = 0;
        continue;
      }
      opmath_t real = std::fma(scale, o + static_cast<opmath_t>(0.5), static_cast<opmath_t>(-0.5));
      real = real < 0 ? opmath_t(0) : real;
      const int64_t index = std::min<int64_t>(
          static_cast<int64_t>(std::floor(static_cast<float>(real))), in_size - 1);
      opmath_t lambda =
          std::min(std::max(real - static_cast<opmath_t>(index), opmath_t(0)), opmath_t(1));
      i0[o] = index;
      i1[o] = index + (index < in_size - 1 ? 1 : 0);
      if (round_to_dtype) {
        const scalar_t rounded = static_cast<scalar_t>(lambda);
        w1[o] = static_cast<opmath_t>(rounded);
        w0[o] = static_cast<opmath_t>(static_cast<scalar_t>(static_cast<scalar_t>(1) - rounded));
      } else {
        w1[o] = lambda;
        w0[o] = 1 - lambda;
      }
    }
  }
};

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__FMA__)
// Compiled twice, one picked when the library loads: with FMA instructions, and a fallback whose
// std::fma calls are slower but give the same bits.
#define SAMMED_FAST_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define SAMMED_FAST_FMA_CLONES
#endif

// One output row from source rows row0 (weight h0) and row1 (weight h1).
template <typename T>
inline void bilinear_row_impl(const T* row0, const T* row1, T h0, T h1, const int64_t* x0,
                              const int64_t* x1, const T* w0, const T* w1, int64_t n,
                              bool four_weights, T* out) {
  if (four_weights) {
    for (int64_t i = 0; i < n; ++i) {
      const T w00 = h0 * w0[i], w01 = h0 * w1[i], w10 = h1 * w0[i], w11 = h1 * w1[i];
      out[i] = std::fma(row1[x1[i]], w11,
                        std::fma(row1[x0[i]], w10, std::fma(row0[x0[i]], w00, row0[x1[i]] * w01)));
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const T top = std::fma(row0[x0[i]], w0[i], row0[x1[i]] * w1[i]);
      const T bottom = std::fma(row1[x0[i]], w0[i], row1[x1[i]] * w1[i]);
      out[i] = std::fma(top, h0, bottom * h1);
    }
  }
}

SAMMED_FAST_FMA_CLONES void bilinear_row(const float* row0, const float* row1, float h0, float h1,
                                         const int64_t* x0, const int64_t* x1, const float* w0,
                                         const float* w1, int64_t n, bool four_weights,
                                         float* out) {
  bilinear_row_impl(row0, row1, h0, h1, x0, x1, w0, w1, n, four_weights, out);
}

SAMMED_FAST_FMA_CLONES void bilinear_row(const double* row0, const double* row1, double h0,
                                         double h1, const int64_t* x0, const int64_t* x1,
                                         const double* w0, const double* w1, int64_t n,
                                         bool four_weights, double* out) {
  bilinear_row_impl(row0, row1, h0, h1, x0, x1, w0, w1, n, four_weights, out);
}

template <typename scalar_t>
void unmerge_rows(const at::Tensor& logits, at::Tensor& tiles, int64_t grid) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool computed_in_dtype = std::is_same_v<scalar_t, opmath_t>;
  const int64_t B = logits.size(0), C = logits.size(1), Hc = logits.size(2), Wc = logits.size(3);
  const int64_t th = Hc / grid, tw = Wc / grid;
  const int64_t out_h = tiles.size(2), out_w = tiles.size(3);
  const bool resize = out_h != th || out_w != tw;
  const bool four_weights = uses_four_weight_kernel(C, th, tw, out_h, out_w);
  const scalar_t* in = logits.const_data_ptr<scalar_t>();
  scalar_t* out = tiles.data_ptr<scalar_t>();
  const Taps<scalar_t> ys(resize ? th : 0, resize ? out_h : 0, !four_weights);
  const Taps<scalar_t> xs(resize ? tw : 0, resize ? out_w : 0, !four_weights);
  at::parallel_for(0, B * C * out_h, grain_rows(out_w), [&](int64_t begin, int64_t end) {
    // Reduced-precision rows are computed in float.
    std::vector<opmath_t> source0, source1, result;
    if (!computed_in_dtype && resize) {
      source0.resize(tw);
      source1.resize(tw);
      result.resize(out_w);
    }
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / out_h, oy = r % out_h;  // plane = b * C + c
      const int64_t position = (plane / C) % (grid * grid);
      const scalar_t* quadrant =
          in + (plane * Hc + (position / grid) * th) * Wc + (position % grid) * tw;
      scalar_t* dst = out + r * out_w;
      if (!resize) {
        std::memcpy(dst, quadrant + oy * Wc, sizeof(scalar_t) * out_w);
        continue;
      }
      const scalar_t* row0 = quadrant + ys.i0[oy] * Wc;
      const scalar_t* row1 = quadrant + ys.i1[oy] * Wc;
      if constexpr (computed_in_dtype) {
        bilinear_row(row0, row1, ys.w0[oy], ys.w1[oy], xs.i0.data(), xs.i1.data(), xs.w0.data(),
                     xs.w1.data(), out_w, four_weights, dst);
      } else {
        std::copy(row0, row0 + tw, source0.begin());
        std::copy(row1, row1 + tw, source1.begin());
        bilinear_row(source0.data(), source1.data(), ys.w0[oy], ys.w1[oy], xs.i0.data(),
                     xs.i1.data(), xs.w0.data(), xs.w1.data(), out_w, four_weights,
                     result.data());
        std::copy(result.begin(), result.end(), dst);
      }
    }
  });
}

at::Tensor unmerge_tiles_cpu(const at::Tensor& logits_in, int64_t grid, int64_t out_h,
                             int64_t out_w) {
  TORCH_CHECK_VALUE(logits_in.dim() == 4, "logits must have 4 dimensions (B,C,Hc,Wc), got shape ",
                    logits_in.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits_in.scalar_type()),
                   "logits must have a floating dtype, got ", logits_in.scalar_type());
  TORCH_CHECK_VALUE(grid >= 1, "grid must be >= 1, got ", grid);
  const int64_t Hc = logits_in.size(2), Wc = logits_in.size(3);
  TORCH_CHECK_VALUE(Hc >= 1 && Wc >= 1, "logits must have height and width >= 1, got shape ",
                    logits_in.sizes());
  TORCH_CHECK_VALUE(Hc % grid == 0 && Wc % grid == 0, "logits canvas ", Hc, "x", Wc,
                    " is not divisible by grid=", grid);
  TORCH_CHECK_VALUE((out_h == 0 && out_w == 0) || (out_h > 0 && out_w > 0),
                    "out_h and out_w must both be positive (resize) or both 0, got ", out_h, ", ",
                    out_w);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), C = logits.size(1);
  const int64_t th = Hc / grid, tw = Wc / grid;
  const int64_t oh = out_h > 0 ? out_h : th, ow = out_w > 0 ? out_w : tw;
  at::Tensor tiles = at::empty({B, C, oh, ow}, logits.options());
  if (tiles.numel() == 0) {
    return tiles;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "unmerge_tiles", [&] {
    unmerge_rows<scalar_t>(logits, tiles, grid);
  });
  return tiles;
}

}  // namespace
}  // namespace sammed_fast

TORCH_LIBRARY_IMPL(sammed_fast, CPU, m) {
  m.impl("merge_tiles", &sammed_fast::merge_tiles_cpu);
  m.impl("unmerge_tiles", &sammed_fast::unmerge_tiles_cpu);
}
