// CPU kernels of merge_tiles (one pass over the output, rows in parallel) and unmerge_tiles (a
// parallel quadrant copy, then PyTorch's bilinear kernel when a resize is asked for).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/upsample_bilinear2d.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../checks.h"

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
  checks::merge(images_in, grid, pixel_mean, pixel_std, out_dtype);
  const at::ScalarType in_dtype = images_in.scalar_type();
  float mean[3], stdev[3];
  for (int c = 0; c < 3; ++c) {
    mean[c] = static_cast<float>(pixel_mean[c]);
    stdev[c] = static_cast<float>(pixel_std[c]);
  }
  const at::Tensor images = images_in.contiguous();
  const int64_t B = images.size(0), h = images.size(2), w = images.size(3);
  const int64_t canvases = checks::ceil_div(B, grid * grid);  // grid < 2^31: no overflow
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

// Copies each row k's own quadrant (position k % grid^2) of its canvas into tiles (B,C,th,tw).
template <typename scalar_t>
void copy_quadrants(const at::Tensor& logits, at::Tensor& tiles, int64_t grid) {
  const int64_t C = logits.size(1), Hc = logits.size(2), Wc = logits.size(3);
  const int64_t th = tiles.size(2), tw = tiles.size(3);
  const scalar_t* in = logits.const_data_ptr<scalar_t>();
  scalar_t* out = tiles.data_ptr<scalar_t>();
  at::parallel_for(0, tiles.size(0) * C * th, grain_rows(tw), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / th, y = r % th;  // plane = b * C + c
      const int64_t position = (plane / C) % (grid * grid);
      const scalar_t* quadrant =
          in + (plane * Hc + (position / grid) * th) * Wc + (position % grid) * tw;
      std::memcpy(out + r * tw, quadrant + y * Wc, sizeof(scalar_t) * tw);
    }
  });
}

at::Tensor unmerge_tiles_cpu(const at::Tensor& logits_in, int64_t grid, int64_t out_h,
                             int64_t out_w) {
  checks::unmerge(logits_in, grid, out_h, out_w);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), C = logits.size(1);
  const int64_t Hc = logits.size(2), Wc = logits.size(3);
  const int64_t th = Hc / grid, tw = Wc / grid;
  const int64_t oh = out_h > 0 ? out_h : th, ow = out_w > 0 ? out_w : tw;
  if (B == 0 || C == 0) {
    return at::empty({B, C, oh, ow}, logits.options());
  }
  at::Tensor tiles = at::empty({B, C, th, tw}, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "unmerge_tiles", [&] {
    copy_quadrants<scalar_t>(logits, tiles, grid);
  });
  if (oh == th && ow == tw) {
    return tiles;
  }
  // PyTorch's own vectorised CPU kernel: the resize then equals F.interpolate bit for bit, on
  // every CPU and thread count (reproducing its rounding by hand was slower and fragile).
  return at::upsample_bilinear2d(tiles, {oh, ow}, /*align_corners=*/false);
}

}  // namespace
}  // namespace sammed_fast

TORCH_LIBRARY_IMPL(sammed_fast, CPU, m) {
  m.impl("merge_tiles", &sammed_fast::merge_tiles_cpu);
  m.impl("unmerge_tiles", &sammed_fast::unmerge_tiles_cpu);
}
