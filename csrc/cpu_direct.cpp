// Direct eager entry points to the CPU pointer-table kernels (cpu_multi_tensor.cpp,
// cpu_graddrop.cpp), for fastmtl.cpu_ops: the same C++ functions the torch.ops.fastmtl.*_cpu ops
// run, reached without the op dispatcher.
//
// Why: an op call converts every element of a Tensor?[] argument through pybind11 and an IValue,
// about 0.12 us per tensor (measured with perf: mostly pybind's type caster and its internal
// mutex). A per-parameter call hands over K x P tensors (K = 8, P = 200: 0.2 ms per op, more than
// the kernels' own work at D = 1e5). Here each Python object is unpacked in a few nanoseconds.
//
// The ops stay the interface for everything the dispatcher provides (torch.compile and fake
// tensors, dispatch and function modes, the profiler); fastmtl.cpu_ops takes these entry points
// only in plain eager mode. Both paths run the same C++ function, so results and error messages
// are identical (tests/test_cpu_direct.py).
//
//   gramian_cpu_direct(tensors, num_tasks) -> Tensor
//   weighted_sum_cpu_direct(tensors, num_tasks, weights) -> list[Tensor]
//   weighted_sum_cpu_out_direct(tensors, num_tasks, weights, out) -> None
//   graddrop_cpu_direct(tensors, num_tasks, leak, seed, offset, eps) -> list[Tensor]
//   graddrop_cpu_out_direct(tensors, num_tasks, leak, seed, offset, eps, out) -> None
// Arguments as for the ops: tensors a list or tuple of Tensor | None (task-major), out a list or
// tuple of Tensor, seed/offset int, eps float.
#include <Python.h>

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>
#include <vector>

#include "cpu_direct.h"
#include "cpu_kernels.h"

namespace {

// A fast sequence (list or tuple) of Tensor | None as the kernels' argument type. Throws TypeError
// (translated by HANDLE_TH_ERRORS) for anything else.
c10::List<std::optional<at::Tensor>> optional_tensors(PyObject* seq, const char* what) {
  TORCH_CHECK_TYPE(PyList_Check(seq) || PyTuple_Check(seq), what, " must be a list or tuple of tensors or None");
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  c10::List<std::optional<at::Tensor>> list;
  list.reserve(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (items[i] == Py_None) {
      list.push_back(std::nullopt);
    } else {
      TORCH_CHECK_TYPE(THPVariable_Check(items[i]), what, "[", i, "] must be a tensor or None");
      list.push_back(THPVariable_Unpack(items[i]));
    }
  }
  return list;
}

std::vector<at::Tensor> tensors(PyObject* seq, const char* what) {
  TORCH_CHECK_TYPE(PyList_Check(seq) || PyTuple_Check(seq), what, " must be a list or tuple of tensors");
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    TORCH_CHECK_TYPE(THPVariable_Check(items[i]), what, "[", i, "] must be a tensor");
    out.push_back(THPVariable_Unpack(items[i]));
  }
  return out;
}

const at::Tensor& tensor(PyObject* obj, const char* what) {
  TORCH_CHECK_TYPE(THPVariable_Check(obj), what, " must be a tensor");
  return THPVariable_Unpack(obj);
}

int64_t integer(PyObject* obj, const char* what) {
  TORCH_CHECK_TYPE(PyLong_Check(obj), what, " must be an int");
  const long long v = PyLong_AsLongLong(obj);
  if (v == -1 && PyErr_Occurred()) throw python_error();
  return v;
}

double real(PyObject* obj, const char* what) {
  TORCH_CHECK_TYPE(PyFloat_Check(obj) || PyLong_Check(obj), what, " must be a float");
  const double v = PyFloat_AsDouble(obj);
  if (v == -1.0 && PyErr_Occurred()) throw python_error();
  return v;
}

PyObject* wrap_all(std::vector<at::Tensor>&& parts) {
  PyObject* result = PyList_New(Py_ssize_t(parts.size()));
  if (result == nullptr) return nullptr;
  for (size_t p = 0; p < parts.size(); ++p) {
    PyObject* item = THPVariable_Wrap(std::move(parts[p]));
    if (item == nullptr) {
      Py_DECREF(result);
      return nullptr;
    }
    PyList_SET_ITEM(result, Py_ssize_t(p), item);
  }
  return result;
}

// What the dispatcher's ADInplaceOrView step does for a mutated argument: autograd then sees the
// write (an inference tensor has no version counter).
void bump_versions(const std::vector<at::Tensor>& out) {
  for (const at::Tensor& o : out) {
    if (o.defined() && !o.is_inference()) torch::autograd::impl::bump_version(o);
  }
}

// The kernels run with the GIL released, as under the dispatcher (their arguments hold their own
// references, so no Python object is touched meanwhile).
struct ReleaseGil {
  PyThreadState* state = PyEval_SaveThread();
  ~ReleaseGil() { PyEval_RestoreThread(state); }
};

bool unpack_args(PyObject* args, Py_ssize_t n, PyObject** out, const char* name) {
  if (!PyTuple_Check(args) || PyTuple_GET_SIZE(args) != n) {
    PyErr_Format(PyExc_TypeError, "%s takes %zd positional arguments", name, n);
    return false;
  }
  for (Py_ssize_t i = 0; i < n; ++i) out[i] = PyTuple_GET_ITEM(args, i);
  return true;
}

}  // namespace

PyObject* fastmtl_gramian_cpu_direct(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[2];
  if (!unpack_args(args, 2, a, "gramian_cpu_direct")) return nullptr;
  const auto list = optional_tensors(a[0], "tensors");
  const int64_t K = integer(a[1], "num_tasks");
  at::Tensor G;
  {
    ReleaseGil released;
    G = fastmtl_cpu::direct_gramian(list, K);
  }
  return THPVariable_Wrap(std::move(G));
  END_HANDLE_TH_ERRORS
}

PyObject* fastmtl_weighted_sum_cpu_direct(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[3];
  if (!unpack_args(args, 3, a, "weighted_sum_cpu_direct")) return nullptr;
  const auto list = optional_tensors(a[0], "tensors");
  const int64_t K = integer(a[1], "num_tasks");
  const at::Tensor& weights = tensor(a[2], "weights");
  std::vector<at::Tensor> parts;
  {
    ReleaseGil released;
    parts = fastmtl_cpu::direct_weighted_sum(list, K, weights);
  }
  return wrap_all(std::move(parts));
  END_HANDLE_TH_ERRORS
}

PyObject* fastmtl_weighted_sum_cpu_out_direct(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[4];
  if (!unpack_args(args, 4, a, "weighted_sum_cpu_out_direct")) return nullptr;
  const auto list = optional_tensors(a[0], "tensors");
  const int64_t K = integer(a[1], "num_tasks");
  const at::Tensor& weights = tensor(a[2], "weights");
  const std::vector<at::Tensor> out = tensors(a[3], "out");
  {
    ReleaseGil released;
    fastmtl_cpu::direct_weighted_sum_out(list, K, weights, out);
  }
  bump_versions(out);
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

namespace {

struct GradDropArgs {
  c10::List<std::optional<at::Tensor>> list;
  int64_t K, seed, offset;
  at::Tensor leak;
  double eps;
};

// (tensors, num_tasks, leak, seed, offset, eps), the leading arguments of both GradDrop entries.
GradDropArgs graddrop_args(PyObject* const* a) {
  return {optional_tensors(a[0], "tensors"), integer(a[1], "num_tasks"), integer(a[3], "seed"),
          integer(a[4], "offset"), tensor(a[2], "leak"), real(a[5], "eps")};
}

}  // namespace

PyObject* fastmtl_graddrop_cpu_direct(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[6];
  if (!unpack_args(args, 6, a, "graddrop_cpu_direct")) return nullptr;
  const GradDropArgs g = graddrop_args(a);
  std::vector<at::Tensor> parts;
  {
    ReleaseGil released;
    parts = fastmtl_cpu::direct_graddrop(g.list, g.K, g.leak, g.seed, g.offset, g.eps);
  }
  return wrap_all(std::move(parts));
  END_HANDLE_TH_ERRORS
}

PyObject* fastmtl_graddrop_cpu_out_direct(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[7];
  if (!unpack_args(args, 7, a, "graddrop_cpu_out_direct")) return nullptr;
  const GradDropArgs g = graddrop_args(a);
  const std::vector<at::Tensor> out = tensors(a[6], "out");
  {
    ReleaseGil released;
    fastmtl_cpu::direct_graddrop_out(g.list, g.K, g.leak, g.seed, g.offset, g.eps, out);
  }
  bump_versions(out);
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}
