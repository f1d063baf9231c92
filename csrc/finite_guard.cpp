// fastmtl._C.finite_guard: fastmtl.pipeline.guarded_weights' check of the Gram matrix (and the
// reference dot products) in one pass on the host, for CPU tensors.
//
// As tensor ops the guard is six small ops per combine call (isfinite, all, a zero, two where, a
// full), about as long as a compiled K x K solve on CPU. Here it is one loop over K^2 values.
//
// Contract (the tensor-op version in fastmtl.ops.finite_guard is the specification):
//   finite_guard(G, dots) -> None | (G', dots', finite)
// G a contiguous float32/float64 CPU tensor, dots None or one of the same kind and dtype. finite is
// a 0-d bool tensor: every entry of G and dots is finite. G' and dots' are G and dots themselves
// when finite, new zero tensors of their shapes and dtypes otherwise. None (the caller then runs
// the tensor ops) for anything else: another device, dtype or layout, or a tensor subclass.
#include <Python.h>

#include <torch/csrc/autograd/python_variable.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "finite_guard.h"

namespace {

// A contiguous float32/float64 CPU tensor (an exact torch.Tensor), of dtype `dtype` when one is given.
bool eligible(PyObject* obj, std::optional<at::ScalarType> dtype = std::nullopt) {
  if (!THPVariable_CheckExact(obj)) return false;
  const at::Tensor& t = THPVariable_Unpack(obj);
  const at::ScalarType s = t.defined() ? t.scalar_type() : at::kFloat;
  return t.defined() && t.device().is_cpu() && t.layout() == c10::kStrided && t.is_contiguous() &&
         (s == at::kFloat || s == at::kDouble) && (!dtype || s == *dtype);
}

template <typename T>
bool all_finite(const at::Tensor& t) {
  const T* p = t.const_data_ptr<T>();
  bool ok = true;
  for (int64_t i = 0, n = t.numel(); i < n; ++i) ok &= std::isfinite(p[i]);
  return ok;
}

bool finite_values(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? all_finite<double>(t) : all_finite<float>(t);
}

PyObject* guard(PyObject* G_obj, PyObject* dots_obj) {
  if (!eligible(G_obj)) Py_RETURN_NONE;
  const at::Tensor& G = THPVariable_Unpack(G_obj);
  const bool with_dots = dots_obj != Py_None;
  if (with_dots && !eligible(dots_obj, G.scalar_type())) Py_RETURN_NONE;
  const bool finite = finite_values(G) && (!with_dots || finite_values(THPVariable_Unpack(dots_obj)));
  at::Tensor flag = at::empty({}, at::TensorOptions().dtype(at::kBool));
  *flag.mutable_data_ptr<bool>() = finite;
  PyObject* g_out;
  PyObject* d_out;
  if (finite) {
    Py_INCREF(G_obj);
    g_out = G_obj;
    Py_INCREF(dots_obj);
    d_out = dots_obj;
  } else {
    g_out = THPVariable_Wrap(at::zeros_like(G));
    if (g_out == nullptr) return nullptr;
    d_out = with_dots ? THPVariable_Wrap(at::zeros_like(THPVariable_Unpack(dots_obj))) : (Py_INCREF(Py_None), Py_None);
    if (d_out == nullptr) {
      Py_DECREF(g_out);
      return nullptr;
    }
  }
  PyObject* f_out = THPVariable_Wrap(std::move(flag));
  if (f_out == nullptr) {
    Py_DECREF(g_out);
    Py_DECREF(d_out);
    return nullptr;
  }
  PyObject* result = PyTuple_New(3);
  if (result == nullptr) {
    Py_DECREF(g_out);
    Py_DECREF(d_out);
    Py_DECREF(f_out);
    return nullptr;
  }
  PyTuple_SET_ITEM(result, 0, g_out);
  PyTuple_SET_ITEM(result, 1, d_out);
  PyTuple_SET_ITEM(result, 2, f_out);
  return result;
}

}  // namespace

PyObject* fastmtl_finite_guard(PyObject* /*self*/, PyObject* args) {
  PyObject* G;
  PyObject* dots;
  if (!PyArg_ParseTuple(args, "OO:finite_guard", &G, &dots)) return nullptr;
  try {
    return guard(G, dots);
  } catch (const std::exception& e) {  // never let a C++ exception cross into Python
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}
