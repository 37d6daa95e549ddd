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
//
// Two ways to find the pairs of touching runs, chosen per image of a mask (see label_masks()):
// RunLabeller merges the two rows' run lists, which costs little per row but mispredicts branches
// on every run; BitLabeller reads the pairs off bit masks (one per pair, see its comment) and wins
// on noise-like masks with many short runs. Both give the same forest roots, hence equal outputs.
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

// BitLabeller's inner loop needs a popcount. x86-64 has the instruction only from x86-64-v2 on
// (a plain build calls a library function instead), so there that loop is compiled twice and the
// instruction used where the CPU has it; elsewhere GCC and Clang's builtin is used as it is.
#if defined(__GNUC__) || defined(__clang__)
#define SAMMED_FAST_ALWAYS_INLINE __attribute__((always_inline)) inline
#define SAMMED_FAST_BUILTIN_POPCOUNT 1
#else
#define SAMMED_FAST_ALWAYS_INLINE inline
#define SAMMED_FAST_BUILTIN_POPCOUNT 0
#endif
#if SAMMED_FAST_BUILTIN_POPCOUNT && (defined(__x86_64__) || defined(__i386__))
#define SAMMED_FAST_POPCNT_DISPATCH 1
#else
#define SAMMED_FAST_POPCNT_DISPATCH 0
#endif

#if SAMMED_FAST_POPCNT_DISPATCH
bool cpu_has_popcnt() {
  static const bool has = [] {
    __builtin_cpu_init();  // needed before __builtin_cpu_supports outside the main program
    return __builtin_cpu_supports("popcnt") != 0;
  }();
  return has;
}
#endif

// kBuiltin: __builtin_popcountll (an instruction where the target has one), else bit tricks.
template <bool kBuiltin>
SAMMED_FAST_ALWAYS_INLINE int popcount(uint64_t x) {
#if SAMMED_FAST_BUILTIN_POPCOUNT
  if constexpr (kBuiltin) {
    return __builtin_popcountll(x);
  }
#endif
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<int>((x * 0x0101010101010101ULL) >> 56);
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
SAMMED_FAST_ALWAYS_INLINE void pack_mask_row(const uint8_t* row, int64_t W, uint64_t* bits) {
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

// The label in 1..labels with the largest area, the lowest on ties; 0 when there is none.
int32_t largest_label(const std::vector<int64_t>& area, int32_t labels) {
  int32_t best = 0;
  int64_t best_area = 0;
  for (int32_t l = 1; l <= labels; ++l) {
    if (area[l] > best_area) {
      best_area = area[l];
      best = l;
    }
  }
  return best;
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
  int32_t largest() const { return largest_label(area_, labels_); }

  int64_t area(int32_t label) const { return label > 0 ? area_[label] : 0; }
  int64_t run_count() const { return count_; }

  // After finish(): f(start, end, label) for every run of row y, left to right.
  template <typename F>
  void for_each_run(int64_t y, F&& f) const {
    for (const Run* r = runs_.data() + row_begin_[y]; r != runs_.data() + row_begin_[y + 1]; ++r) {
      f(r->start, r->end, r->parent);
    }
  }

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

// The same forest as RunLabeller, with the touching pairs of runs read off bit masks. Two runs of
// adjacent rows touch when their column intervals, the upper one widened by a pixel on each side
// with 8-connectivity, overlap; then the later of the two starts lies in the other run (or, with
// 8-connectivity, a pixel right of its end), so every pair shows up as one set bit of
//   (starts & reach(prev)) | (prev_starts & reach(cur) & ~starts),   reach(r) = r or r | r << 1,
// and the two run indices are counts of start bits up to that bit. No branch depends on how the
// runs interleave, which is what costs RunLabeller its time on noise.
class BitLabeller {
 public:
  void begin(int64_t H, int64_t W, bool eight) {
    width_ = static_cast<int32_t>(W);
    eight_ = eight;
    count_ = 0;
    labels_ = 0;
    flip_ = 0;
    words_ = (W + 63) / 64;
    row_begin_.assign(1, 0);
    row_begin_.reserve(H + 1);
    // Two rows (this one, the previous one), each with a zero word past its end. The previous
    // row starts out empty, so the first row unites nothing.
    bits_.assign(2 * (words_ + 1), 0);
    index_.assign(2 * words_, WordIndex{0, 0});
  }

  // Fill these bits (padding zero) with the next row's foreground, then call end_row().
  uint64_t* row_bits() { return bits_.data() + flip_ * (words_ + 1); }

  void end_row() {
#if SAMMED_FAST_POPCNT_DISPATCH
    if (has_popcnt_) {
      eight_ ? end_row_popcnt<true>() : end_row_popcnt<false>();
      return;
    }
#endif
    constexpr bool kBuiltin = SAMMED_FAST_BUILTIN_POPCOUNT && !SAMMED_FAST_POPCNT_DISPATCH;
    eight_ ? end_row_impl<kBuiltin, true>() : end_row_impl<kBuiltin, false>();
  }

  // Parents -> labels 1..n in raster-first order, and the area of every label.
  void finish() {
    area_.assign(static_cast<size_t>(count_) + 1, 0);
    int32_t* parent = parent_.data();
    int64_t* area = area_.data();
    int32_t labels = 0;
    for (int32_t i = 0; i < count_; ++i) {
      // Without branches: a root is one run in four on noise, too often to predict.
      const int32_t p = parent[i];
      const bool root = p == i;
      labels += root;
      const int32_t label = root ? labels : parent[p];  // p < i already holds its label
      parent[i] = label;
      area[label] += span_[i].end - span_[i].start;
    }
    labels_ = labels;
  }

  int32_t largest() const { return largest_label(area_, labels_); }
  int64_t area(int32_t label) const { return label > 0 ? area_[label] : 0; }

  template <typename F>
  void for_each_run(int64_t y, F&& f) const {
    for (int32_t r = row_begin_[y]; r < row_begin_[y + 1]; ++r) {
      f(span_[r].start, span_[r].end, parent_[r]);
    }
  }

  int64_t rows() const { return static_cast<int64_t>(row_begin_.size()) - 1; }

 private:
  struct Span {
    int32_t start, end;
  };
  // Per 64-pixel word of a row: the bits where runs start, and the index of the first run that
  // starts in the word (or after it).
  struct WordIndex {
    uint64_t starts;
    int32_t base;
  };

#if SAMMED_FAST_POPCNT_DISPATCH
  template <bool kEight>
  __attribute__((target("popcnt"))) void end_row_popcnt() {
    end_row_impl<true, kEight>();
  }
#endif

  template <bool kPopcnt, bool kEight>
  SAMMED_FAST_ALWAYS_INLINE void end_row_impl() {
    const size_t needed = static_cast<size_t>(count_) + (width_ + 1) / 2;
    if (parent_.size() < needed) {
      const size_t size = std::max(needed, 2 * parent_.size());
      span_.resize(size);
      parent_.resize(size);
    }
    const int64_t nw = words_;
    const uint64_t* cur = bits_.data() + flip_ * (nw + 1);
    const uint64_t* prev = bits_.data() + (1 - flip_) * (nw + 1);
    WordIndex* cur_index = index_.data() + flip_ * nw;
    const WordIndex* prev_index = index_.data() + (1 - flip_) * nw;
    Span* span = span_.data();
    int32_t* parent = parent_.data();
    int32_t n = count_;
    uint64_t carry = 0, prev_carry = 0;  // the last pixel of the word before, in each row
    int32_t last = -1, root = -1;        // this row's run of the last union, and its root
    for (int64_t k = 0; k < nw; ++k) {
      const uint64_t w = cur[k];
      cur_index[k].base = n;
      if ((w | prev[k]) == 0) {  // background in both rows
        cur_index[k].starts = 0;
        carry = 0;
        prev_carry = 0;
        continue;
      }
      const uint64_t starts = w & ~((w << 1) | carry);
      uint64_t lasts = w & ~((w >> 1) | (cur[k + 1] << 63));
      uint64_t prev_reach = prev[k], cur_reach = w;
      if constexpr (kEight) {
        prev_reach |= (prev[k] << 1) | prev_carry;
        cur_reach |= (w << 1) | carry;
        prev_carry = prev[k] >> 63;
      }
      const uint64_t prev_starts = prev_index[k].starts;
      uint64_t pairs = (starts & prev_reach) | (prev_starts & cur_reach & ~starts);
      cur_index[k].starts = starts;
      const int32_t x0 = static_cast<int32_t>(64 * k);
      int32_t m = n - static_cast<int32_t>(carry & w & 1);  // a run from the word before ends first
      carry = w >> 63;
      for (uint64_t rest = starts; rest; rest &= rest - 1) {
        span[n].start = x0 + count_trailing_zeros(rest);
        parent[n] = n;
        ++n;
      }
      for (; lasts; lasts &= lasts - 1) {
        span[m++].end = x0 + count_trailing_zeros(lasts) + 1;
      }
      for (; pairs; pairs &= pairs - 1) {
        const uint64_t upto = (uint64_t{2} << count_trailing_zeros(pairs)) - 1;
        const int32_t i = find(prev_index[k].base - 1 + popcount<kPopcnt>(prev_starts & upto));
        const int32_t j = cur_index[k].base - 1 + popcount<kPopcnt>(starts & upto);
        // The pairs of run j come one after another, and its root stays a root in between, so j
        // needs no find. Hanging the larger root under the smaller keeps parents below children.
        root = j == last ? root : j;
        last = j;
        parent[std::max(i, root)] = std::min(i, root);
        root = std::min(i, root);
      }
    }
    count_ = n;
    row_begin_.push_back(n);
    flip_ ^= 1;
  }

  int32_t find(int32_t x) {
    int32_t* parent = parent_.data();
    while (parent[x] != x) {
      parent[x] = parent[parent[x]];  // path halving
      x = parent[x];
    }
    return x;
  }

  int32_t width_ = 0;
  bool eight_ = false;
  int32_t count_ = 0;
  int32_t labels_ = 0;
  int64_t flip_ = 0;  // which half of bits_ and index_ holds this row
  int64_t words_ = 0;
  std::vector<Span> span_;
  std::vector<int32_t> parent_;
  std::vector<int32_t> row_begin_;
  std::vector<int64_t> area_;
  std::vector<uint64_t> bits_;
  std::vector<WordIndex> index_;
#if SAMMED_FAST_POPCNT_DISPATCH
  bool has_popcnt_ = cpu_has_popcnt();
#endif
};

// Inclusive box (x0, y0, x1, y1) of runs visited in raster order; -1s while empty.
struct Box {
  int64_t x0 = -1, y0 = -1, x1 = -1, y1 = -1;
  void add(int64_t y, int64_t start, int64_t end) {
    x0 = y0 < 0 ? start : std::min(x0, start);
    y0 = y0 < 0 ? y : y0;
    x1 = std::max(x1, end - 1);
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
    runs.for_each_run(y, [&](int32_t start, int32_t end, int32_t l) {
      if (l == label) {
        box.add(y, start, end);
      }
    });
  }
  return box;
}

void check_masks(const at::Tensor& masks, int64_t connectivity) {
  checks::masks(masks, connectivity);
}

// Labels one (H,W) image of mask bytes (nonzero is foreground) into `runs`.
template <typename Labeller>
void label_mask(const uint8_t* image, int64_t H, int64_t W, bool eight, Labeller& runs) {
  runs.begin(H, W, eight);
  for (int64_t y = 0; y < H; ++y) {
    pack_mask_row(image + y * W, W, runs.row_bits());
    runs.end_row();
  }
  runs.finish();
}

// Labels each image b in [begin, end) with the labeller that suits it and calls emit(b, labeller).
// RunLabeller starts; when the first rows hold more than one run per 32 pixels (a blob and a few
// specks make a handful of runs per row, 50% noise one per 4 pixels), BitLabeller starts over.
// Deciding from the first rows costs a coarse mask nothing and a noisy one 4 rows.
template <typename Emit>
void label_masks(const uint8_t* in, int64_t begin, int64_t end, int64_t H, int64_t W, bool eight,
                 Emit&& emit) {
  constexpr int64_t kProbeRows = 4;
  RunLabeller merge_runs;
  BitLabeller bit_runs;
  for (int64_t b = begin; b < end; ++b) {
    const uint8_t* image = in + b * H * W;
    merge_runs.begin(H, W, eight);
    bool noise_like = false;
    for (int64_t y = 0; y < H && !noise_like; ++y) {
      pack_mask_row(image + y * W, W, merge_runs.row_bits());
      merge_runs.end_row();
      noise_like = y + 1 == kProbeRows && 32 * merge_runs.run_count() > kProbeRows * W;
    }
    if (noise_like) {
      label_mask(image, H, W, eight, bit_runs);
      emit(b, bit_runs);
    } else {
      merge_runs.finish();
      emit(b, merge_runs);
    }
  }
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
    label_masks(in, begin, end, H, W, connectivity == 8, [&](int64_t b, const auto& runs) {
      for (int64_t y = 0; y < H; ++y) {
        int32_t* row = out + (b * H + y) * W;
        std::memset(row, 0, sizeof(int32_t) * W);
        runs.for_each_run(y, [&](int32_t start, int32_t end, int32_t label) {
          std::fill(row + start, row + end, label);
        });
      }
    });
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
    label_masks(in, begin, end, H, W, connectivity == 8, [&](int64_t b, const auto& runs) {
      const int32_t best = runs.largest();
      // The mask and the box of the largest component in one pass over the rows.
      Box box;
      for (int64_t y = 0; y < H; ++y) {
        bool* row = out + (b * H + y) * W;
        std::memset(row, 0, W);
        runs.for_each_run(y, [&](int32_t start, int32_t end, int32_t label) {
          if (label == best) {
            std::memset(row + start, 1, end - start);
            box.add(y, start, end);
          }
        });
      }
      box.store(box_out + 4 * b);
      area_out[b] = runs.area(best);
    });
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
