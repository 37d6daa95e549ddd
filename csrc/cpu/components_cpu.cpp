// CPU kernels of label_components, largest_component and boxes_from_probs.
//
// Algorithm: run-based union-find, one image per task of at::parallel_for over the batch.
// Each row is first packed into a bit mask (64 pixels per word), its runs of foreground are
// read off the bit mask with count-trailing-zeros, and every run is linked to the runs of the
// previous row it touches (4-connectivity: overlapping columns; 8-connectivity: columns within one
// pixel). A union always hangs the larger root under the smaller one, so every parent index is
// lower than its child's and a root is the first run of its component in raster order. One
// forward pass over the runs then turns parents into labels 1..n in raster-first order (scipy's
// numbering) and sums the areas. Outputs are written row by row straight from the runs: no
// label image is built for largest_component or boxes_from_probs.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../checks.h"

namespace sammed_fast {
namespace {

inline int count_trailing_zeros(uint64_t word) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_ctzll(word);
#else
  int n = 0;
  while (!(word & 1)) {
    word >>= 1;
    ++n;
  }
  return n;
#endif
}

// 64 bytes -> 64 bits, bit j set when byte j is nonzero.
inline uint64_t nonzero_bits64(const uint8_t* bytes) {
#if defined(__SSE2__)
  const __m128i zero = _mm_setzero_si128();
  uint64_t word = 0;
  for (int j = 0; j < 4; ++j) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 16 * j));
    const uint32_t is_zero = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)));
    word |= static_cast<uint64_t>(~is_zero & 0xFFFFu) << (16 * j);
  }
  return word;
#else
  // SWAR: per byte, set its high bit when it is nonzero, then gather the 8 high bits.
  // The gather multiply assumes little-endian loads.
  constexpr uint64_t low7 = 0x7F7F7F7F7F7F7F7FULL;
  constexpr uint64_t ones = 0x0101010101010101ULL;
  uint64_t word = 0;
  for (int j = 0; j < 8; ++j) {
    uint64_t v;
    std::memcpy(&v, bytes + 8 * j, 8);
    v = (((v & low7) + low7) | v) >> 7 & ones;
    word |= ((v * 0x0102040810204080ULL) >> 56) << (8 * j);
  }
  return word;
#endif
}

// A row of W mask bytes -> ceil(W/64) words, padding bits zero.
void pack_mask_row(const uint8_t* row, int64_t W, uint64_t* bits) {
  const int64_t full = W / 64;
  for (int64_t k = 0; k < full; ++k) {
    bits[k] = nonzero_bits64(row + 64 * k);
  }
  if (W % 64) {
    uint64_t word = 0;
    for (int64_t x = 64 * full; x < W; ++x) {
      word |= static_cast<uint64_t>(row[x] != 0) << (x - 64 * full);
    }
    bits[full] = word;
  }
}

// A row of W values -> bits of `value > threshold` compared in acc_t (a NaN is background).
// Returns true when a value is NaN or infinite.
template <typename acc_t, typename T>
bool pack_threshold_row(const T* row, int64_t W, acc_t threshold, uint64_t* bits) {
  bool non_finite = false;
  for (int64_t k = 0; k * 64 < W; ++k) {
    const int64_t n = std::min<int64_t>(64, W - 64 * k);
    const T* v = row + 64 * k;
    uint64_t word = 0;
    for (int64_t j = 0; j < n; ++j) {
      const acc_t value = static_cast<acc_t>(v[j]);
      word |= static_cast<uint64_t>(value > threshold) << j;
      const acc_t zero = value - value;  // NaN for NaN and +-inf, else 0
      non_finite |= zero != zero;
    }
    bits[k] = word;
  }
  return non_finite;
}

// One run of foreground pixels [start, end) of a row. `parent` is its union-find parent (always
// a lower run index, or itself for a root) until RunLabeller::finish() replaces it by the label.
struct Run {
  int32_t start, end, parent;
};

// The foreground runs of one image and their union-find forest.
class RunLabeller {
 public:
  void begin(int64_t H, int64_t W, bool eight) {
    width_ = static_cast<int32_t>(W);
    slack_ = eight ? 1 : 0;
    count_ = 0;
    labels_ = 0;
    row_begin_.assign(1, 0);
    row_begin_.reserve(H + 1);
    bits_.assign((W + 63) / 64, 0);
  }

  // Fill these bits (padding zero) with the next row's foreground, then call end_row().
  uint64_t* row_bits() { return bits_.data(); }

  void end_row() {
    // A row holds at most ceil(W/2) runs.
    const size_t needed = static_cast<size_t>(count_) + (width_ + 1) / 2;
    if (runs_.size() < needed) {
      runs_.resize(std::max(needed, 2 * runs_.size()));
    }
    const int32_t first = count_;
    Run* runs = runs_.data();
    int32_t n = count_;
    int32_t open = -1;  // start of a run that continues into the next word
    const int64_t words = static_cast<int64_t>(bits_.size());
    for (int64_t k = 0; k < words; ++k) {
      uint64_t w = open >= 0 ? ~bits_[k] : bits_[k];  // search for the next transition
      while (w) {
        const int p = count_trailing_zeros(w);
        const int32_t x = static_cast<int32_t>(64 * k + p);
        if (open < 0) {
          open = x;
        } else {
          runs[n] = Run{open, x, n};
          ++n;
          open = -1;
        }
        w = ~w & (~uint64_t{0} << p);
      }
    }
    if (open >= 0) {
      runs[n] = Run{open, width_, n};
      ++n;
    }
    count_ = n;
    const size_t row = row_begin_.size() - 1;
    if (row > 0) {
      link_rows(row_begin_[row - 1], first, n);
    }
    row_begin_.push_back(n);
  }

  // Parents -> labels 1..n in raster-first order, and the area of every label.
  void finish() {
    if (area_.size() < static_cast<size_t>(count_) + 1) {
      area_.resize(static_cast<size_t>(count_) + 1);
    }
    Run* runs = runs_.data();
    for (int32_t i = 0; i < count_; ++i) {
      const int32_t p = runs[i].parent;
      const int64_t length = runs[i].end - runs[i].start;
      if (p == i) {
        runs[i].parent = ++labels_;
        area_[labels_] = length;
      } else {
        const int32_t label = runs[p].parent;  // p < i already holds its label
        runs[i].parent = label;
        area_[label] += length;
      }
    }
  }

  // After finish(): the label with the largest area, the lowest on ties; 0 when empty.
  int32_t largest() const {
    int32_t best = 0;
    int64_t best_area = 0;
    for (int32_t l = 1; l <= labels_; ++l) {
      if (area_[l] > best_area) {
        best_area = area_[l];
        best = l;
      }
    }
    return best;
  }

  int64_t area(int32_t label) const { return label > 0 ? area_[label] : 0; }

  // The runs of row y; after finish() each run's `parent` is its label.
  const Run* row_runs(int64_t y) const { return runs_.data() + row_begin_[y]; }
  const Run* row_runs_end(int64_t y) const { return runs_.data() + row_begin_[y + 1]; }
  int64_t rows() const { return static_cast<int64_t>(row_begin_.size()) - 1; }

 private:
  int32_t find(int32_t x) {
    Run* runs = runs_.data();
    while (runs[x].parent != x) {
      runs[x].parent = runs[runs[x].parent].parent;  // path halving
      x = runs[x].parent;
    }
    return x;
  }

  void unite(int32_t a, int32_t b) {
    a = find(a);
    b = find(b);
    if (a < b) {
      runs_[b].parent = a;
    } else if (b < a) {
      runs_[a].parent = b;
    }
  }

  // Links runs [i, i_end) of the previous row with the runs [i_end, j_end) of this row that touch
  // them (a pixel apart diagonally counts with 8-connectivity).
  void link_rows(int32_t i, int32_t i_end, int32_t j_end) {
    const Run* runs = runs_.data();
    int32_t j = i_end;
    while (i < i_end && j < j_end) {
      if (runs[i].end + slack_ <= runs[j].start) {
        ++i;
      } else if (runs[j].end + slack_ <= runs[i].start) {
        ++j;
      } else {
        unite(i, j);
        if (runs[i].end < runs[j].end) {
          ++i;
        } else {
          ++j;
        }
      }
    }
  }

  int32_t width_ = 0;
  int32_t slack_ = 0;
  int32_t count_ = 0;
  int32_t labels_ = 0;
  std::vector<Run> runs_;
  std::vector<int32_t> row_begin_;
  std::vector<int64_t> area_;
  std::vector<uint64_t> bits_;
};

// Inclusive box (x0, y0, x1, y1) of runs visited in raster order; -1s while empty.
struct Box {
  int64_t x0 = -1, y0 = -1, x1 = -1, y1 = -1;
  void add(int64_t y, const Run& run) {
    x0 = y0 < 0 ? run.start : std::min<int64_t>(x0, run.start);
    y0 = y0 < 0 ? y : y0;
    x1 = std::max<int64_t>(x1, run.end - 1);
    y1 = y;
  }
  void store(float* out) const {
    out[0] = static_cast<float>(x0);
    out[1] = static_cast<float>(y0);
    out[2] = static_cast<float>(x1);
    out[3] = static_cast<float>(y1);
  }
};

Box label_box(const RunLabeller& runs, int32_t label) {
  Box box;
  for (int64_t y = 0; y < runs.rows(); ++y) {
    for (const Run* r = runs.row_runs(y); r != runs.row_runs_end(y); ++r) {
      if (r->parent == label) {
        box.add(y, *r);
      }
    }
  }
  return box;
}

void check_masks(const at::Tensor& masks, int64_t connectivity) {
  checks::masks(masks, connectivity);
}

// Labels one (H,W) image of mask bytes (nonzero is foreground) into `runs`.
void label_mask(const uint8_t* image, int64_t H, int64_t W, bool eight, RunLabeller& runs) {
  runs.begin(H, W, eight);
  for (int64_t y = 0; y < H; ++y) {
    pack_mask_row(image + y * W, W, runs.row_bits());
    runs.end_row();
  }
  runs.finish();
}

const uint8_t* mask_bytes(const at::Tensor& contiguous_masks) {
  return static_cast<const uint8_t*>(contiguous_masks.const_data_ptr());
}

at::Tensor label_components_cpu(const at::Tensor& masks_in, int64_t connectivity) {
  check_masks(masks_in, connectivity);
  const at::Tensor masks = masks_in.contiguous();
  const int64_t B = masks.size(0), H = masks.size(1), W = masks.size(2);
  at::Tensor labels = at::empty({B, H, W}, masks.options().dtype(at::kInt));
  const uint8_t* in = mask_bytes(masks);
  int32_t* out = labels.data_ptr<int32_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    RunLabeller runs;
    for (int64_t b = begin; b < end; ++b) {
      label_mask(in + b * H * W, H, W, connectivity == 8, runs);
      for (int64_t y = 0; y < H; ++y) {
        int32_t* row = out + (b * H + y) * W;
        std::memset(row, 0, sizeof(int32_t) * W);
        for (const Run* r = runs.row_runs(y); r != runs.row_runs_end(y); ++r) {
          std::fill(row + r->start, row + r->end, r->parent);
        }
      }
    }
  });
  return labels;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> largest_component_cpu(const at::Tensor& masks_in,
                                                                       int64_t connectivity) {
  check_masks(masks_in, connectivity);
  const at::Tensor masks = masks_in.contiguous();
  const int64_t B = masks.size(0), H = masks.size(1), W = masks.size(2);
  at::Tensor mask = at::empty({B, H, W}, masks.options().dtype(at::kBool));
  at::Tensor boxes = at::empty({B, 4}, masks.options().dtype(at::kFloat));
  at::Tensor areas = at::empty({B}, masks.options().dtype(at::kLong));
  const uint8_t* in = mask_bytes(masks);
  bool* out = mask.data_ptr<bool>();
  float* box_out = boxes.data_ptr<float>();
  int64_t* area_out = areas.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    RunLabeller runs;
    for (int64_t b = begin; b < end; ++b) {
      label_mask(in + b * H * W, H, W, connectivity == 8, runs);
      const int32_t best = runs.largest();
      // The mask and the box of the largest component in one pass over the rows.
      Box box;
      for (int64_t y = 0; y < H; ++y) {
        bool* row = out + (b * H + y) * W;
        std::memset(row, 0, W);
        for (const Run* r = runs.row_runs(y); r != runs.row_runs_end(y); ++r) {
          if (r->parent == best) {
            std::memset(row + r->start, 1, r->end - r->start);
            box.add(y, *r);
          }
        }
      }
      box.store(box_out + 4 * b);
      area_out[b] = runs.area(best);
    }
  });
  return {mask, boxes, areas};
}

// Pixel span [begin[i], end[i]) of cell i of n over s pixels: [floor(i*s/n), ceil((i+1)*s/n)).
struct CellSpans {
  std::vector<int64_t> begin, end;
  CellSpans(int64_t s, int64_t n) : begin(n), end(n) {
    for (int64_t i = 0; i < n; ++i) {
      begin[i] = i * s / n;
      end[i] = ((i + 1) * s + n - 1) / n;
    }
  }
};

// Cell row `cy` of the adaptive average pooling of one image, exactly as F.adaptive_avg_pool2d
// computes it on CPU for an acc_t tensor: per cell an acc_t sum over its rows, then its columns,
// in order, divided by the cell height, then by the cell width.
template <typename scalar_t, typename acc_t>
void pool_cell_row(const scalar_t* image, int64_t W, const CellSpans& rows,
                   const CellSpans& cols, int64_t cy, acc_t* sums) {
  const int64_t w = static_cast<int64_t>(cols.begin.size());
  std::fill(sums, sums + w, acc_t(0));
  // Cells of equal width k (W divisible by w): the same per-cell order of additions, but the
  // loop over cells is innermost, so the w running sums are independent and vectorise.
  const int64_t k = W / w;
  const bool uniform = k * w == W;
  for (int64_t y = rows.begin[cy]; y < rows.end[cy]; ++y) {
    const scalar_t* row = image + y * W;
    if (uniform) {
      for (int64_t j = 0; j < k; ++j) {
        for (int64_t cx = 0; cx < w; ++cx) {
          sums[cx] += static_cast<acc_t>(row[cx * k + j]);
        }
      }
      continue;
    }
    for (int64_t cx = 0; cx < w; ++cx) {
      acc_t sum = sums[cx];
      for (int64_t x = cols.begin[cx]; x < cols.end[cx]; ++x) {
        sum += static_cast<acc_t>(row[x]);
      }
      sums[cx] = sum;
    }
  }
  const acc_t kh = static_cast<acc_t>(rows.end[cy] - rows.begin[cy]);
  for (int64_t cx = 0; cx < w; ++cx) {
    sums[cx] = sums[cx] / kh / static_cast<acc_t>(cols.end[cx] - cols.begin[cx]);
  }
}

// True when a pixel of the rows that cell row `cy` covers is NaN or infinite. Asked only once a
// cell is not finite, which finite pixels also cause when their sum overflows.
template <typename scalar_t>
bool pixels_non_finite(const scalar_t* image, int64_t W, const CellSpans& rows, int64_t cy) {
  for (int64_t i = rows.begin[cy] * W; i < rows.end[cy] * W; ++i) {
    if (!std::isfinite(static_cast<double>(image[i]))) {
      return true;
    }
  }
  return false;
}

std::tuple<at::Tensor, at::Tensor> boxes_from_probs_cpu(const at::Tensor& probs_in,
                                                        double threshold, int64_t downscale,
                                                        int64_t connectivity, bool empty_full,
                                                        bool check_finite) {
  checks::probs(probs_in, threshold, downscale, connectivity);
  const at::Tensor probs = probs_in.contiguous();
  const int64_t B = probs.size(0), H = probs.size(1), W = probs.size(2);
  const int64_t h = checks::ceil_div(H, downscale), w = checks::ceil_div(W, downscale);
  at::Tensor boxes = at::empty({B, 4}, probs.options().dtype(at::kFloat));
  at::Tensor empty = at::empty({B}, probs.options().dtype(at::kBool));
  if (B == 0) {
    return {boxes, empty};
  }
  // Values are pooled and compared in float64 for float64 input, else in float32 (which holds
  // float16 and bfloat16 exactly), as PyTorch compares such a tensor with a Python float.
  const bool wide = probs.scalar_type() == at::kDouble;
  // A 1x1 pooling is a mean in PyTorch (a different summation order): use the same reduction.
  at::Tensor means;
  if (downscale > 1 && h == 1 && w == 1) {
    means = probs.to(wide ? at::kDouble : at::kFloat).mean({1, 2}).contiguous();
  }
  const CellSpans row_spans(H, h), col_spans(W, w);
  float* box_out = boxes.data_ptr<float>();
  bool* empty_out = empty.data_ptr<bool>();
  std::atomic<bool> found_non_finite{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, probs.scalar_type(), "boxes_from_probs", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const acc_t thr = static_cast<acc_t>(threshold);
    const scalar_t* in = probs.const_data_ptr<scalar_t>();
    const acc_t* mean_of = means.defined() ? means.const_data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      RunLabeller runs;
      std::vector<acc_t> cells(w);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* image = in + b * H * W;
        runs.begin(h, w, connectivity == 8);
        for (int64_t cy = 0; cy < h; ++cy) {
          bool non_finite;
          if (downscale == 1) {
            non_finite = pack_threshold_row(image + cy * W, W, thr, runs.row_bits());
          } else {
            if (mean_of != nullptr) {
              cells[0] = mean_of[b];
            } else {
              pool_cell_row(image, W, row_spans, col_spans, cy, cells.data());
            }
            // A NaN or infinite pixel makes its cell NaN or infinite: the pixels need a look
            // only then.
            non_finite = pack_threshold_row(cells.data(), w, thr, runs.row_bits()) &&
                         check_finite && pixels_non_finite(image, W, row_spans, cy);
          }
          if (non_finite) {
            found_non_finite.store(true, std::memory_order_relaxed);
          }
          runs.end_row();
        }
        runs.finish();
        const int32_t best = runs.largest();
        float* box = box_out + 4 * b;
        empty_out[b] = best == 0;
        if (best == 0) {
          const float nan = std::numeric_limits<float>::quiet_NaN();
          box[0] = empty_full ? 0.0f : nan;
          box[1] = empty_full ? 0.0f : nan;
          box[2] = empty_full ? static_cast<float>(W - 1) : nan;
          box[3] = empty_full ? static_cast<float>(H - 1) : nan;
          continue;
        }
        const Box cell_box = label_box(runs, best);
        // The full-resolution pixels the box's cells cover (the identity when downscale is 1).
        box[0] = static_cast<float>(col_spans.begin[cell_box.x0]);
        box[1] = static_cast<float>(row_spans.begin[cell_box.y0]);
        box[2] = static_cast<float>(col_spans.end[cell_box.x1] - 1);
        box[3] = static_cast<float>(row_spans.end[cell_box.y1] - 1);
      }
    });
  });
  TORCH_CHECK_VALUE(!(check_finite && found_non_finite.load()),
                    "probs contains NaN or infinite values; probabilities must be finite "
                    "(in [0, 1])");
  return {boxes, empty};
}

}  // namespace
}  // namespace sammed_fast

TORCH_LIBRARY_IMPL(sammed_fast, CPU, m) {
  m.impl("label_components", &sammed_fast::label_components_cpu);
  m.impl("largest_component", &sammed_fast::largest_component_cpu);
  m.impl("boxes_from_probs", &sammed_fast::boxes_from_probs_cpu);
}
