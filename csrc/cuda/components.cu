// Batched connected components on the GPU: label_components, largest_component, boxes_from_probs.
//
// Block-based union-find (Allegretti, Bolelli, Grana, TPDS 2020). The image is cut into blocks
// whose foreground pixels are always connected among themselves, and the union-find runs over
// blocks, one int32 parent per block:
//   8-connectivity: 2x2 blocks (any two pixels of a 2x2 block are 8-adjacent), BH = 2;
//   4-connectivity: 1x2 blocks (two horizontally adjacent pixels are 4-adjacent), BH = 1.
// Block q of image b at block row by, column bx has the global index
// q = b * per_image + by * cols + bx, so blocks of one image are contiguous and no union ever
// crosses an image border (neighbours are taken inside the image only).
//
// Launch sequence (one per op, the whole batch at once, no host synchronisation):
//   init      bits[q] = the block's foreground pixels (4 bits), parent[q] = q (foreground only)
//   merge     union with the preceding neighbour blocks that touch (atomicMin union)
//   compress  parent[q] = root (a separate launch: roots no longer change), and per root the
//             minimum "first slot" and the area (warp-aggregated atomics)
//   labels:   inclusive scan (CUB) of "slot s is the first slot of a component", write labels
//   largest:  select (one atomicMax per image of a packed (area, tie-break) key), write the mask
//             and the box (warp-aggregated atomics), finalize.
//
// Union-find invariants: parent[x] <= x always; a root is the smallest block index of its set;
// roots are only lowered with atomicMin and a union retries until it lands on a real root.
//
// Raster-first numbering. The first pixel of a component (its smallest raster index) is located
// by its "slot": (pixel row y, block column x / 2), slot index y * cols + x / 2 inside the image.
// Two components never share a slot (two foreground pixels of one row pair are adjacent), and
// slot order equals raster order between components, so numbering components by their smallest
// slot gives exactly scipy's labels, and "lowest label" means "smallest first slot".
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/device/device_scan.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <climits>
#include <cstdint>

#include "launchers.h"

namespace sammed_fast::gpu {
namespace {

constexpr int kThreads = 256;  // a multiple of 32: every warp is full (warp intrinsics below)
constexpr unsigned kFullWarp = 0xffffffffu;
constexpr size_t kAlign = 256;

// Pixel bits of a block: a b (row y) / c d (row y + 1), columns x and x + 1.
constexpr unsigned kA = 1u, kB = 2u, kC = 4u, kD = 8u;

#define SF_RETURN_IF_ERROR(expr)            \
  do {                                      \
    const cudaError_t sf_error_ = (expr);   \
    if (sf_error_ != cudaSuccess) {         \
      return sf_error_;                     \
    }                                       \
  } while (0)
#define SF_CHECK_LAUNCH() SF_RETURN_IF_ERROR(cudaGetLastError())

struct BlockGrid {
  int batch;
  int height;     // pixel (or pooled cell) rows of one image
  int width;      // pixel (or pooled cell) columns of one image
  int cols;       // blocks per block row: ceil(width / 2)
  int rows;       // block rows: ceil(height / BH)
  int per_image;  // rows * cols
  int total;      // batch * per_image (<= batch * height * width < 2^31)
  int slots;      // first-pixel slots per image: height * cols
};

BlockGrid make_grid(int batch, int height, int width, int block_height) {
  BlockGrid g;
  g.batch = batch;
  g.height = height;
  g.width = width;
  g.cols = static_cast<int>((static_cast<long long>(width) + 1) / 2);
  g.rows = static_cast<int>((static_cast<long long>(height) + block_height - 1) / block_height);
  g.per_image = g.rows * g.cols;
  g.total = static_cast<int>(static_cast<long long>(batch) * g.per_image);
  g.slots = height * g.cols;
  return g;
}

unsigned blocks_for(long long items) {
  return static_cast<unsigned>((items + kThreads - 1) / kThreads);
}

struct BlockPos {
  int img, by, bx, y, x;  // image, block row/column, top-left pixel row/column
};

template <int BH>
__device__ __forceinline__ BlockPos block_pos(const BlockGrid& g, int q) {
  BlockPos p;
  p.img = q / g.per_image;
  const int r = q - p.img * g.per_image;
  p.by = r / g.cols;
  p.bx = r - p.by * g.cols;
  p.y = p.by * BH;
  p.x = 2 * p.bx;
  return p;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// ------------------------------------------------------------------------------ pixel sources
struct MaskSource {
  const uint8_t* masks;
  int height, width;
  __device__ __forceinline__ bool operator()(int img, int y, int x) const {
    return masks[(static_cast<long long>(img) * height + y) * width + x] != 0;
  }
};

// The precision cells are pooled and compared in: float64 for float64 probabilities, float32
// otherwise (as ATen's accscalar_t, and PyTorch's `tensor > python_float` for float32).
template <typename T>
struct PoolAcc {
  using type = float;
  static __device__ __forceinline__ float load(T v) { return to_float(v); }
};
template <>
struct PoolAcc<double> {
  using type = double;
  static __device__ __forceinline__ double load(double v) { return v; }
};

// Cell (cy, cx) of adaptive average pooling to (cells_h, cells_w), thresholded: the same sum
// order and divisions as ATen's CUDA adaptive_avg_pool2d (row-major sum, / kH / kW), in A.
template <typename T>
struct PoolSource {
  using A = typename PoolAcc<T>::type;
  const T* probs;
  int height, width, cells_h, cells_w;
  A threshold;
  bool identity;  // cells == pixels: the value itself
  __device__ __forceinline__ bool operator()(int img, int cy, int cx) const {
    const T* plane = probs + static_cast<long long>(img) * height * width;
    if (identity) {
      return PoolAcc<T>::load(plane[static_cast<long long>(cy) * width + cx]) > threshold;
    }
    const long long y_begin = static_cast<long long>(cy) * height / cells_h;
    const long long y_end = (static_cast<long long>(cy + 1) * height + cells_h - 1) / cells_h;
    const long long x_begin = static_cast<long long>(cx) * width / cells_w;
    const long long x_end = (static_cast<long long>(cx + 1) * width + cells_w - 1) / cells_w;
    A sum = A(0);
    for (long long y = y_begin; y < y_end; ++y) {
      const T* row = plane + y * width;
      for (long long x = x_begin; x < x_end; ++x) {
        sum += PoolAcc<T>::load(row[x]);
      }
    }
    const A mean = sum / static_cast<A>(static_cast<int>(y_end - y_begin)) /
                   static_cast<A>(static_cast<int>(x_end - x_begin));
    return mean > threshold;
  }
};

// ------------------------------------------------------------------------------ union-find
// Loads through L2 (ld.global.cg): other SMs lower parents with atomics during merge.
__device__ __forceinline__ int find_root(const int* parent, int n) {
  int p = __ldcg(parent + n);
  while (p != n) {
    n = p;
    p = __ldcg(parent + n);
  }
  return n;
}

__device__ void unite(int* parent, int a, int b) {
  while (true) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) {
      return;
    }
    if (a > b) {
      const int t = a;
      a = b;
      b = t;
    }
    // Link root b under a. If b stopped being a root meanwhile, atomicMin left parent[b] <= its
    // old parent and pointing into a's or old's set; retry with the old parent until it lands.
    const int old = atomicMin(parent + b, a);
    if (old == b) {
      return;
    }
    b = old;
  }
}

// ------------------------------------------------------------------------------ warp helpers
// Reduction over runs of equal `seg` in a warp (lanes hold consecutive blocks, so each image is
// one contiguous run); the first lane of each run gets the run's result. Whole warp must call.
template <typename T, typename Op>
__device__ __forceinline__ T segmented_reduce(T value, int seg, Op op) {
  const int lane = static_cast<int>(threadIdx.x & 31);
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const T other = __shfl_down_sync(kFullWarp, value, offset);
    const int other_seg = __shfl_down_sync(kFullWarp, seg, offset);
    if (lane + offset < 32 && other_seg == seg) {
      value = op(value, other);
    }
  }
  return value;
}

__device__ __forceinline__ bool segment_head(int seg) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int previous = __shfl_up_sync(kFullWarp, seg, 1);
  return lane == 0 || previous != seg;
}

struct MinOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a < b ? a : b; }
};
struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// ------------------------------------------------------------------------------ kernels
template <int BH, class Source>
__global__ void __launch_bounds__(kThreads)
    init_blocks(BlockGrid g, Source source, uint8_t* bits, int* parent, int* first, int* area,
                unsigned long long* best, int* box) {
  const long long t = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (best != nullptr && t < g.batch) {  // per-image statistics (batch <= total)
    best[t] = 0ull;
    box[4 * t + 0] = INT_MAX;
    box[4 * t + 1] = INT_MAX;
    box[4 * t + 2] = -1;
    box[4 * t + 3] = -1;
  }
  if (t >= g.total) {
    return;
  }
  const int q = static_cast<int>(t);
  const BlockPos p = block_pos<BH>(g, q);
  const bool right = p.x + 1 < g.width;
  unsigned m = source(p.img, p.y, p.x) ? kA : 0u;
  if (right && source(p.img, p.y, p.x + 1)) {
    m |= kB;
  }
  if (BH == 2 && p.y + 1 < g.height) {
    if (source(p.img, p.y + 1, p.x)) {
      m |= kC;
    }
    if (right && source(p.img, p.y + 1, p.x + 1)) {
      m |= kD;
    }
  }
  bits[q] = static_cast<uint8_t>(m);
  // A background block is never read through parent/first/area (every later read is guarded
  // by bits != 0, and parents only ever point at foreground blocks): skip those writes.
  if (m != 0) {
    parent[q] = q;
    first[q] = INT_MAX;
    if (area != nullptr) {
      area[q] = 0;
    }
  }
}

// Unions with the preceding neighbours (left, up-left, up, up-right); the following ones do the
// same towards this block, so every adjacent pair is examined once.
template <int BH>
__global__ void __launch_bounds__(kThreads)
    merge_blocks(BlockGrid g, const uint8_t* __restrict__ bits, int* parent) {
  const long long t = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= g.total) {
    return;
  }
  const int q = static_cast<int>(t);
  const unsigned m = bits[q];
  if (m == 0) {
    return;
  }
  const BlockPos p = block_pos<BH>(g, q);
  if (p.bx > 0) {
    const unsigned left = bits[q - 1];
    const bool touches = BH == 2 ? ((m & (kA | kC)) != 0 && (left & (kB | kD)) != 0)
                                 : ((m & kA) != 0 && (left & kB) != 0);
    if (touches) {
      unite(parent, q, q - 1);
    }
  }
  if (p.by > 0) {
    const int up = q - g.cols;
    const unsigned above = bits[up];
    if (BH == 2) {
      if ((m & (kA | kB)) != 0 && (above & (kC | kD)) != 0) {
        unite(parent, q, up);
      }
      if (p.bx > 0 && (m & kA) != 0 && (bits[up - 1] & kD) != 0) {
        unite(parent, q, up - 1);
      }
      if (p.bx + 1 < g.cols && (m & kB) != 0 && (bits[up + 1] & kC) != 0) {
        unite(parent, q, up + 1);
      }
    } else if ((m & above & (kA | kB)) != 0) {
      unite(parent, q, up);
    }
  }
}

// parent[q] = root for every foreground block, and per root: first[root] = min first slot,
// area[root] = pixel count (kArea). Roots are final here, so the statistics can be gathered in
// the same pass. Warp-aggregated: one atomic per distinct root per warp.
template <int BH, bool kArea>
__global__ void __launch_bounds__(kThreads)
    compress_blocks(BlockGrid g, const uint8_t* __restrict__ bits, int* parent, int* first,
                    int* area) {
  const long long t = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  const bool inside = t < g.total;
  const int q = inside ? static_cast<int>(t) : 0;
  const unsigned m = inside ? bits[q] : 0u;
  int root = -1;
  int slot = 0;
  if (m != 0) {
    root = find_root(parent, q);
    if (root != q) {
      parent[q] = root;
    }
    const BlockPos p = block_pos<BH>(g, q);
    slot = (p.y + ((m & (kA | kB)) != 0 ? 0 : 1)) * g.cols + p.bx;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned peers = __match_any_sync(kFullWarp, root);
  if (m != 0) {  // all lanes of `peers` share root != -1, so all of them are here
    const int lowest = __reduce_min_sync(peers, slot);
    unsigned pixels = 0;
    if constexpr (kArea) {
      pixels = __reduce_add_sync(peers, static_cast<unsigned>(__popc(m)));
    }
    if (static_cast<int>(threadIdx.x & 31) == __ffs(peers) - 1) {
      atomicMin(first + root, lowest);
      if constexpr (kArea) {
        atomicAdd(area + root, static_cast<int>(pixels));
      }
    }
  }
#else
  if (m != 0) {
    atomicMin(first + root, slot);
    if constexpr (kArea) {
      atomicAdd(area + root, __popc(m));
    }
  }
#endif
}

// best[img] = max over the image's components of (area << 32 | ~first slot): the largest area,
// ties to the smallest first slot (= lowest raster-first label). 0 stays for an empty image.
__global__ void __launch_bounds__(kThreads)
    select_largest(BlockGrid g, const uint8_t* __restrict__ bits, const int* __restrict__ parent,
                   const int* __restrict__ first, const int* __restrict__ area,
                   unsigned long long* best) {
  const long long t = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  int img = INT_MAX;
  unsigned long long key = 0ull;
  if (t < g.total) {
    const int q = static_cast<int>(t);
    img = q / g.per_image;
    if (bits[q] != 0 && parent[q] == q) {
      key = (static_cast<unsigned long long>(static_cast<unsigned>(area[q])) << 32) |
            static_cast<unsigned long long>(0xffffffffu - static_cast<unsigned>(first[q]));
    }
  }
  key = segmented_reduce(key, img, MaxOp{});
  if (segment_head(img) && key != 0ull) {
    atomicMax(best + img, key);
  }
}

__device__ __forceinline__ bool is_winner(unsigned long long key, int first_slot) {
  return key != 0ull &&
         static_cast<unsigned>(first_slot) ==
             0xffffffffu - static_cast<unsigned>(key & 0xffffffffull);
}

// Writes the largest component's mask (kMask) and gathers its box (in grid units) per image.
template <int BH, bool kMask>
__global__ void __launch_bounds__(kThreads)
    write_largest(BlockGrid g, const uint8_t* __restrict__ bits, const int* __restrict__ parent,
                  const int* __restrict__ first, const unsigned long long* __restrict__ best,
                  int* box, uint8_t* mask_out) {
  const long long t = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  int img = INT_MAX;
  unsigned m = 0;
  bool win = false;
  BlockPos p{0, 0, 0, 0, 0};
  if (t < g.total) {
    const int q = static_cast<int>(t);
    p = block_pos<BH>(g, q);
    img = p.img;
    m = bits[q];
    if (m != 0) {
      win = is_winner(best[img], first[parent[q]]);
    }
    if constexpr (kMask) {
      const long long top = (static_cast<long long>(img) * g.height + p.y) * g.width + p.x;
      const bool right = p.x + 1 < g.width;
      mask_out[top] = (win && (m & kA) != 0) ? 1 : 0;
      if (right) {
        mask_out[top + 1] = (win && (m & kB) != 0) ? 1 : 0;
      }
      if (BH == 2 && p.y + 1 < g.height) {
        const long long bottom = top + g.width;
        mask_out[bottom] = (win && (m & kC) != 0) ? 1 : 0;
        if (right) {
          mask_out[bottom + 1] = (win && (m & kD) != 0) ? 1 : 0;
        }
      }
    }
  }
  int x0 = INT_MAX, y0 = INT_MAX, x1 = -1, y1 = -1;
  if (win) {
    x0 = p.x + ((m & (kA | kC)) != 0 ? 0 : 1);
    x1 = p.x + ((m & (kB | kD)) != 0 ? 1 : 0);
    y0 = p.y + ((m & (kA | kB)) != 0 ? 0 : 1);
    y1 = p.y + ((m & (kC | kD)) != 0 ? 1 : 0);
  }
  x0 = segmented_reduce(x0, img, MinOp{});
  y0 = segmented_reduce(y0, img, MinOp{});
  x1 = segmented_reduce(x1, img, MaxOp{});
  y1 = segmented_reduce(y1, img, MaxOp{});
  if (segment_head(img) && x1 >= 0) {
    int* b = box + 4 * static_cast<long long>(img);
    atomicMin(b + 0, x0);
    atomicMin(b + 1, y0);
    atomicMax(b + 2, x1);
    atomicMax(b + 3, y1);
  }
}

__global__ void finalize_largest(int batch, const unsigned long long* __restrict__ best,
                                 const int* __restrict__ box, float* boxes, int64_t* areas) {
  const int b = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (b >= batch) {
    return;
  }
  const long long area = static_cast<long long>(best[b] >> 32);
  areas[b] = area;
  float* out = boxes + 4 * static_cast<long long>(b);
  const int* in = box + 4 * static_cast<long long>(b);
  for (int i = 0; i < 4; ++i) {
    out[i] = area == 0 ? -1.0f : static_cast<float>(in[i]);
  }
}

// Cell box -> the inclusive full-resolution pixels its cells cover: cell i of n over s pixels
// covers [floor(i*s/n), ceil((i+1)*s/n)).
__global__ void finalize_boxes(int batch, int height, int width, int cells_h, int cells_w,
                               bool empty_full, const unsigned long long* __restrict__ best,
                               const int* __restrict__ box, float* boxes, uint8_t* empty) {
  const int b = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (b >= batch) {
    return;
  }
  float* out = boxes + 4 * static_cast<long long>(b);
  const int* in = box + 4 * static_cast<long long>(b);
  if ((best[b] >> 32) == 0ull) {
    empty[b] = 1;
    const float nan = __int_as_float(0x7fc00000);
    out[0] = empty_full ? 0.0f : nan;
    out[1] = empty_full ? 0.0f : nan;
    out[2] = empty_full ? static_cast<float>(width - 1) : nan;
    out[3] = empty_full ? static_cast<float>(height - 1) : nan;
    return;
  }
  empty[b] = 0;
  const long long w = width, h = height;
  out[0] = static_cast<float>(in[0] * w / cells_w);
  out[1] = static_cast<float>(in[1] * h / cells_h);
  out[2] = static_cast<float>(((in[2] + 1LL) * w + cells_w - 1) / cells_w - 1);
  out[3] = static_cast<float>(((in[3] + 1LL) * h + cells_h - 1) / cells_h - 1);
}

// 1 when slot s (global: image * slots + row * cols + block column) is its component's first.
template <int BH>
struct FirstSlotFlag {
  BlockGrid g;
  const uint8_t* bits;
  const int* parent;
  const int* first;
  __host__ __device__ int operator()(int s) const {
    const int img = s / g.slots;
    const int r = s - img * g.slots;
    const int y = r / g.cols;
    const int bx = r - y * g.cols;
    const int q = img * g.per_image + (y / BH) * g.cols + bx;
    unsigned m = bits[q];
    if (BH == 2 && (y & 1) != 0) {
      m >>= 2;
    }
    if ((m & 3u) == 0) {
      return 0;
    }
    return first[parent[q]] == r ? 1 : 0;
  }
};

template <int BH>
using FlagIterator =
    thrust::transform_iterator<FirstSlotFlag<BH>, thrust::counting_iterator<int>, int, int>;

template <int BH>
FlagIterator<BH> flag_iterator(const BlockGrid& g, const uint8_t* bits, const int* parent,
                               const int* first) {
  return FlagIterator<BH>(thrust::counting_iterator<int>(0),
                          FirstSlotFlag<BH>{g, bits, parent, first});
}

// label = rank of the component's first slot among the first slots of its image.
template <int BH>
__global__ void __launch_bounds__(kThreads)
    write_labels(BlockGrid g, const uint8_t* __restrict__ bits, const int* __restrict__ parent,
                 const int* __restrict__ first, const int* __restrict__ scan, int32_t* labels) {
  const long long t = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= g.total) {
    return;
  }
  const int q = static_cast<int>(t);
  const BlockPos p = block_pos<BH>(g, q);
  const unsigned m = bits[q];
  int label = 0;
  if (m != 0) {
    const long long image_slots = static_cast<long long>(p.img) * g.slots;
    const int before = p.img > 0 ? scan[image_slots - 1] : 0;
    label = scan[image_slots + first[parent[q]]] - before;
  }
  const long long top = (static_cast<long long>(p.img) * g.height + p.y) * g.width + p.x;
  const bool right = p.x + 1 < g.width;
  labels[top] = (m & kA) != 0 ? label : 0;
  if (right) {
    labels[top + 1] = (m & kB) != 0 ? label : 0;
  }
  if (BH == 2 && p.y + 1 < g.height) {
    const long long bottom = top + g.width;
    labels[bottom] = (m & kC) != 0 ? label : 0;
    if (right) {
      labels[bottom + 1] = (m & kD) != 0 ? label : 0;
    }
  }
}

// ------------------------------------------------------------------------------ workspace
struct Workspace {
  uint8_t* bits = nullptr;
  int* parent = nullptr;
  int* first = nullptr;
  int* area = nullptr;
  unsigned long long* best = nullptr;
  int* box = nullptr;
  int* scan = nullptr;
  void* temp = nullptr;
  size_t temp_bytes = 0;
};

// Lays the workspace out from `base` (nullptr: only counts) and returns the bytes it needs.
size_t carve(const BlockGrid& g, bool stats, bool labels, size_t temp_bytes, char* base,
             Workspace* ws) {
  size_t offset = 0;
  auto take = [&](size_t bytes) -> char* {
    char* at = base != nullptr ? base + offset : nullptr;
    offset += (bytes + kAlign - 1) / kAlign * kAlign;
    return at;
  };
  const size_t total = static_cast<size_t>(g.total);
  const size_t batch = static_cast<size_t>(g.batch);
  ws->bits = reinterpret_cast<uint8_t*>(take(total));
  ws->parent = reinterpret_cast<int*>(take(total * sizeof(int)));
  ws->first = reinterpret_cast<int*>(take(total * sizeof(int)));
  if (stats) {
    ws->area = reinterpret_cast<int*>(take(total * sizeof(int)));
    ws->best = reinterpret_cast<unsigned long long*>(take(batch * sizeof(unsigned long long)));
    ws->box = reinterpret_cast<int*>(take(batch * 4 * sizeof(int)));
  }
  if (labels) {
    ws->scan = reinterpret_cast<int*>(take(batch * static_cast<size_t>(g.slots) * sizeof(int)));
    ws->temp = take(temp_bytes);
    ws->temp_bytes = temp_bytes;
  }
  return offset;
}

template <int BH>
size_t scan_temp_bytes(const BlockGrid& g) {
  size_t bytes = 0;
  cub::DeviceScan::InclusiveSum(nullptr, bytes, flag_iterator<BH>(g, nullptr, nullptr, nullptr),
                                static_cast<int*>(nullptr), g.batch * g.slots);
  return bytes;
}

int block_height(int connectivity) { return connectivity == 8 ? 2 : 1; }

// ------------------------------------------------------------------------------ pipelines
// init + merge + compress: the union-find of every image of the batch.
template <int BH, class Source>
cudaError_t build_forest(const BlockGrid& g, const Source& source, const Workspace& ws,
                         bool stats, cudaStream_t stream) {
  const unsigned blocks = blocks_for(g.total);
  init_blocks<BH, Source><<<blocks, kThreads, 0, stream>>>(
      g, source, ws.bits, ws.parent, ws.first, ws.area, ws.best, ws.box);
  SF_CHECK_LAUNCH();
  merge_blocks<BH><<<blocks, kThreads, 0, stream>>>(g, ws.bits, ws.parent);
  SF_CHECK_LAUNCH();
  if (stats) {
    compress_blocks<BH, true><<<blocks, kThreads, 0, stream>>>(g, ws.bits, ws.parent, ws.first,
                                                               ws.area);
  } else {
    compress_blocks<BH, false><<<blocks, kThreads, 0, stream>>>(g, ws.bits, ws.parent, ws.first,
                                                                nullptr);
  }
  SF_CHECK_LAUNCH();
  return cudaSuccess;
}

template <int BH>
cudaError_t run_labels(const uint8_t* masks, int32_t* labels, const BlockGrid& g, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream) {
  Workspace ws;
  size_t temp_bytes = scan_temp_bytes<BH>(g);
  if (carve(g, false, true, temp_bytes, static_cast<char*>(workspace), &ws) > workspace_bytes) {
    return cudaErrorInvalidValue;
  }
  SF_RETURN_IF_ERROR(build_forest<BH>(g, MaskSource{masks, g.height, g.width}, ws, false, stream));
  SF_RETURN_IF_ERROR(cub::DeviceScan::InclusiveSum(
      ws.temp, temp_bytes, flag_iterator<BH>(g, ws.bits, ws.parent, ws.first), ws.scan,
      g.batch * g.slots, stream));
  SF_CHECK_LAUNCH();
  write_labels<BH><<<blocks_for(g.total), kThreads, 0, stream>>>(g, ws.bits, ws.parent, ws.first,
                                                                 ws.scan, labels);
  SF_CHECK_LAUNCH();
  return cudaSuccess;
}

// select + write (mask and box); mask_out == nullptr: box only.
template <int BH>
cudaError_t pick_largest(const BlockGrid& g, const Workspace& ws, uint8_t* mask_out,
                         cudaStream_t stream) {
  const unsigned blocks = blocks_for(g.total);
  select_largest<<<blocks, kThreads, 0, stream>>>(g, ws.bits, ws.parent, ws.first, ws.area,
                                                  ws.best);
  SF_CHECK_LAUNCH();
  if (mask_out != nullptr) {
    write_largest<BH, true><<<blocks, kThreads, 0, stream>>>(g, ws.bits, ws.parent, ws.first,
                                                             ws.best, ws.box, mask_out);
  } else {
    write_largest<BH, false><<<blocks, kThreads, 0, stream>>>(g, ws.bits, ws.parent, ws.first,
                                                              ws.best, ws.box, nullptr);
  }
  SF_CHECK_LAUNCH();
  return cudaSuccess;
}

template <int BH>
cudaError_t run_largest(const uint8_t* masks, uint8_t* mask_out, float* boxes, int64_t* areas,
                        const BlockGrid& g, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream) {
  Workspace ws;
  if (carve(g, true, false, 0, static_cast<char*>(workspace), &ws) > workspace_bytes) {
    return cudaErrorInvalidValue;
  }
  SF_RETURN_IF_ERROR(build_forest<BH>(g, MaskSource{masks, g.height, g.width}, ws, true, stream));
  SF_RETURN_IF_ERROR(pick_largest<BH>(g, ws, mask_out, stream));
  finalize_largest<<<blocks_for(g.batch), kThreads, 0, stream>>>(g.batch, ws.best, ws.box, boxes,
                                                                 areas);
  SF_CHECK_LAUNCH();
  return cudaSuccess;
}

template <int BH, typename T>
cudaError_t run_boxes(const T* probs, float* boxes, uint8_t* empty, int height, int width,
                      double threshold, bool empty_full, const BlockGrid& g, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream) {
  Workspace ws;
  if (carve(g, true, false, 0, static_cast<char*>(workspace), &ws) > workspace_bytes) {
    return cudaErrorInvalidValue;
  }
  using A = typename PoolSource<T>::A;
  const PoolSource<T> source{probs,   height, width, g.height, g.width, static_cast<A>(threshold),
                             g.height == height && g.width == width};
  SF_RETURN_IF_ERROR(build_forest<BH>(g, source, ws, true, stream));
  SF_RETURN_IF_ERROR(pick_largest<BH>(g, ws, nullptr, stream));
  finalize_boxes<<<blocks_for(g.batch), kThreads, 0, stream>>>(
      g.batch, height, width, g.height, g.width, empty_full, ws.best, ws.box, boxes, empty);
  SF_CHECK_LAUNCH();
  return cudaSuccess;
}

template <int BH>
cudaError_t dispatch_boxes(const void* probs, DType dtype, float* boxes, uint8_t* empty,
                           int height, int width, double threshold, bool empty_full,
                           const BlockGrid& g, void* workspace, size_t workspace_bytes,
                           cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return run_boxes<BH>(static_cast<const float*>(probs), boxes, empty, height, width,
                           threshold, empty_full, g, workspace, workspace_bytes, stream);
    case DType::kFloat16:
      return run_boxes<BH>(static_cast<const __half*>(probs), boxes, empty, height, width,
                           threshold, empty_full, g, workspace, workspace_bytes, stream);
    case DType::kBFloat16:
      return run_boxes<BH>(static_cast<const __nv_bfloat16*>(probs), boxes, empty, height, width,
                           threshold, empty_full, g, workspace, workspace_bytes, stream);
    case DType::kFloat64:
      return run_boxes<BH>(static_cast<const double*>(probs), boxes, empty, height, width,
                           threshold, empty_full, g, workspace, workspace_bytes, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

// ------------------------------------------------------------------------------ launchers
size_t label_components_workspace_bytes(int batch, int height, int width, int connectivity) {
  const int bh = block_height(connectivity);
  const BlockGrid g = make_grid(batch, height, width, bh);
  const size_t temp = bh == 2 ? scan_temp_bytes<2>(g) : scan_temp_bytes<1>(g);
  Workspace ws;
  return carve(g, false, true, temp, nullptr, &ws);
}

cudaError_t label_components(const uint8_t* masks, int32_t* labels, int batch, int height,
                             int width, int connectivity, void* workspace, size_t workspace_bytes,
                             cudaStream_t stream) {
  const int bh = block_height(connectivity);
  const BlockGrid g = make_grid(batch, height, width, bh);
  return bh == 2 ? run_labels<2>(masks, labels, g, workspace, workspace_bytes, stream)
                 : run_labels<1>(masks, labels, g, workspace, workspace_bytes, stream);
}

size_t largest_component_workspace_bytes(int batch, int height, int width, int connectivity) {
  const BlockGrid g = make_grid(batch, height, width, block_height(connectivity));
  Workspace ws;
  return carve(g, true, false, 0, nullptr, &ws);
}

cudaError_t largest_component(const uint8_t* masks, uint8_t* mask_out, float* boxes,
                              int64_t* areas, int batch, int height, int width, int connectivity,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int bh = block_height(connectivity);
  const BlockGrid g = make_grid(batch, height, width, bh);
  return bh == 2 ? run_largest<2>(masks, mask_out, boxes, areas, g, workspace, workspace_bytes,
                                  stream)
                 : run_largest<1>(masks, mask_out, boxes, areas, g, workspace, workspace_bytes,
                                  stream);
}

size_t boxes_from_probs_workspace_bytes(int batch, int cells_h, int cells_w, int connectivity) {
  const BlockGrid g = make_grid(batch, cells_h, cells_w, block_height(connectivity));
  Workspace ws;
  return carve(g, true, false, 0, nullptr, &ws);
}

cudaError_t boxes_from_probs(const void* probs, DType dtype, float* boxes, uint8_t* empty,
                             int batch, int height, int width, int cells_h, int cells_w,
                             double threshold, int connectivity, bool empty_full, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream) {
  const int bh = block_height(connectivity);
  const BlockGrid g = make_grid(batch, cells_h, cells_w, bh);
  return bh == 2 ? dispatch_boxes<2>(probs, dtype, boxes, empty, height, width, threshold,
                                     empty_full, g, workspace, workspace_bytes, stream)
                 : dispatch_boxes<1>(probs, dtype, boxes, empty, height, width, threshold,
                                     empty_full, g, workspace, workspace_bytes, stream);
}

}  // namespace sammed_fast::gpu
