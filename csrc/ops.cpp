// Schemas of every sammed_fast op (one TORCH_LIBRARY) and the Python module stub that makes
// `import sammed_fast._C` load this library. Kernels live in csrc/cpu and csrc/cuda and register
// themselves per device with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#ifndef SAMMED_FAST_CUDA_ARCHS
#define SAMMED_FAST_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(sammed_fast, m) {
  // masks (B,H,W) bool/uint8 -> int32 labels numbered 1..n per image in raster-first order.
  m.def("label_components(Tensor masks, int connectivity) -> Tensor");
  // -> (mask bool (B,H,W), boxes float32 (B,4) xyxy inclusive, areas int64 (B,))
  m.def("largest_component(Tensor masks, int connectivity) -> (Tensor, Tensor, Tensor)");
  // probs (B,H,W) float -> (boxes float32 (B,4) full-resolution xyxy inclusive, empty bool (B,)).
  // Cells are pooled and compared in float64 for float64 probs, else in float32. check_finite:
  // raise on NaN or infinite values where the kernel can do so without a host synchronisation
  // (CPU). Every output shape of every op follows from the input shapes (meta tensors work).
  m.def(
      "boxes_from_probs(Tensor probs, float threshold, int downscale, int connectivity, "
      "bool empty_full, bool check_finite=False) -> (Tensor, Tensor)");
  // images (B,C,h,w), C in {1,3}, 0..255 -> canvases (ceil(B/g^2), 3, g*h, g*w)
  m.def(
      "merge_tiles(Tensor images, int grid, float[] pixel_mean, float[] pixel_std, "
      "ScalarType out_dtype) -> Tensor");
  // logits (B,C,Hc,Wc) -> tile k's own quadrant (B,C,Hc/g,Wc/g), bilinear to (out_h,out_w) when > 0
  m.def("unmerge_tiles(Tensor logits, int grid, int out_h, int out_w) -> Tensor");
}

namespace {

std::string build_info_json() {
  std::string info = "{\"torch\": \"";
  info += std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
          std::to_string(TORCH_VERSION_PATCH);
  info += "\", \"cpu\": true, \"cuda\": ";
#ifdef SAMMED_FAST_WITH_CUDA
  info += "true, \"cuda_archs\": \"" SAMMED_FAST_CUDA_ARCHS "\"";
#else
  info += "false, \"cuda_archs\": \"\"";
#endif
  info += "}";
  return info;
}

PyObject* build_info(PyObject*, PyObject*) {
  const std::string info = build_info_json();
  return PyUnicode_FromString(info.c_str());
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "JSON string: what this library was compiled with."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
