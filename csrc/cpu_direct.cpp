// Direct eager entry points to the CPU pointer-table kernels (cpu_multi_tensor.cpp,
// cpu_graddrop.cpp), for fastmtl.cpu_ops: the same C++ functions the torch.ops.fastmtl.*_cpu ops
// run, reached without the op dispatcher.
//
// Why: an op call converts every element of a Tensor?[] argument through pybind11 and an IValue,
// about 0.12 us per tensor (measured with perf: mostly pybind's type caster and its internal
// mutex). A per-parameter call hands over K x P tensors (K = 8, P = 200: 0.2 ms per op, more than
// the kernels' own work at D = 1e5). Here each Python object is unpacked in a few nanoseconds.
//
// One difference: the per-parameter results of weighted_sum/graddrop are slices of one allocation
// here (a custom op's outputs must not alias one another, so the ops allocate each).
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
// Arguments as for the ops: tensors a list or tuple of Tensor | None (task-major) or of num_tasks
// rows of them, out a list or tuple of Tensor, seed/offset int, eps float.
#include <Python.h>

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>
#include <vector>

#include "cpu_direct.h"
#include "cpu_kernels.h"

namespace {

// The kernels' task-major entries, borrowed from the Python objects: a tuple holding them (the
// caller's tuple, or a copy of its list) stays referenced until the call returns, so nothing is freed
// while the kernels run without the GIL, and no tensor's reference count is touched per entry.
// Accepts a flat list or tuple of K * P Tensor | None, or K rows (lists or tuples) of P entries each
// (what fastmtl.gradients.TaskGradients holds, which saves flattening them in Python).
class BorrowedEntries {
 public:
  BorrowedEntries(PyObject* seq, int64_t num_tasks, const char* what) {
    TORCH_CHECK_TYPE(PyList_Check(seq) || PyTuple_Check(seq), what, " must be a list or tuple of tensors or None");
    PyObject* outer = hold(seq);
    const Py_ssize_t n = PyTuple_GET_SIZE(outer);
    if (n > 0 && (PyList_Check(PyTuple_GET_ITEM(outer, 0)) || PyTuple_Check(PyTuple_GET_ITEM(outer, 0)))) {
      TORCH_CHECK(n == num_tasks, what, ": got ", n, " rows for num_tasks = ", num_tasks);
      Py_ssize_t P = -1;
      for (Py_ssize_t k = 0; k < n; ++k) {
        PyObject* row = PyTuple_GET_ITEM(outer, k);
        TORCH_CHECK_TYPE(PyList_Check(row) || PyTuple_Check(row), what, "[", k, "] must be a list or tuple (a row)");
        PyObject* r = hold(row);
        if (P < 0) {
          P = PyTuple_GET_SIZE(r);
          entries_.reserve(size_t(n * P));
        }
        TORCH_CHECK(PyTuple_GET_SIZE(r) == P, what, ": row ", k, " has ", PyTuple_GET_SIZE(r), " entries, row 0 has ",
                    P);
        add(r, what);
      }
    } else {
      entries_.reserve(size_t(n));
      add(outer, what);
    }
  }
  BorrowedEntries(const BorrowedEntries&) = delete;
  BorrowedEntries& operator=(const BorrowedEntries&) = delete;
  ~BorrowedEntries() {  // with the GIL held: every entry point releases it only inside a narrower scope
    for (PyObject* o : held_) Py_DECREF(o);
  }
  const fastmtl_cpu::Entries& entries() const { return entries_; }

 private:
  PyObject* hold(PyObject* seq) {  // a tuple with seq's items, referenced until destruction
    PyObject* t = PyTuple_CheckExact(seq) ? (Py_INCREF(seq), seq) : PySequence_Tuple(seq);
    if (t == nullptr) throw python_error();
    held_.push_back(t);
    return t;
  }
  void add(PyObject* tuple, const char* what) {
    const Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* item = PyTuple_GET_ITEM(tuple, i);
      if (item == Py_None) {
        entries_.push_back(nullptr);
        continue;
      }
      TORCH_CHECK_TYPE(THPVariable_Check(item), what, "[", entries_.size(), "] must be a tensor or None");
      const at::Tensor& x = THPVariable_Unpack(item);
      entries_.push_back(x.defined() ? &x : nullptr);
    }
  }

  std::vector<PyObject*> held_;
  fastmtl_cpu::Entries entries_;
};

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
  const int64_t K = integer(a[1], "num_tasks");
  const BorrowedEntries list(a[0], K, "tensors");
  at::Tensor G;
  {
    ReleaseGil released;
    G = fastmtl_cpu::direct_gramian(list.entries(), K);
  }
  return THPVariable_Wrap(std::move(G));
  END_HANDLE_TH_ERRORS
}

PyObject* fastmtl_weighted_sum_cpu_direct(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[3];
  if (!unpack_args(args, 3, a, "weighted_sum_cpu_direct")) return nullptr;
  const int64_t K = integer(a[1], "num_tasks");
  const BorrowedEntries list(a[0], K, "tensors");
  const at::Tensor& weights = tensor(a[2], "weights");
  std::vector<at::Tensor> parts;
  {
    ReleaseGil released;
    parts = fastmtl_cpu::direct_weighted_sum(list.entries(), K, weights);
  }
  return wrap_all(std::move(parts));
  END_HANDLE_TH_ERRORS
}

PyObject* fastmtl_weighted_sum_cpu_out_direct(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[4];
  if (!unpack_args(args, 4, a, "weighted_sum_cpu_out_direct")) return nullptr;
  const int64_t K = integer(a[1], "num_tasks");
  const BorrowedEntries list(a[0], K, "tensors");
  const at::Tensor& weights = tensor(a[2], "weights");
  const std::vector<at::Tensor> out = tensors(a[3], "out");
  {
    ReleaseGil released;
    fastmtl_cpu::direct_weighted_sum_out(list.entries(), K, weights, out);
  }
  bump_versions(out);
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

namespace {

// (tensors, num_tasks, leak, seed, offset, eps), the leading arguments of both GradDrop entries.
struct GradDropArgs {
  explicit GradDropArgs(PyObject* const* a)
      : K(integer(a[1], "num_tasks")),
        list(a[0], K, "tensors"),
        seed(integer(a[3], "seed")),
        offset(integer(a[4], "offset")),
        leak(tensor(a[2], "leak")),
        eps(real(a[5], "eps")) {}
  int64_t K;
  BorrowedEntries list;
  int64_t seed, offset;
  at::Tensor leak;
  double eps;
};

}  // namespace

PyObject* fastmtl_graddrop_cpu_direct(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[6];
  if (!unpack_args(args, 6, a, "graddrop_cpu_direct")) return nullptr;
  const GradDropArgs g(a);
  std::vector<at::Tensor> parts;
  {
    ReleaseGil released;
    parts = fastmtl_cpu::direct_graddrop(g.list.entries(), g.K, g.leak, g.seed, g.offset, g.eps);
  }
  return wrap_all(std::move(parts));
  END_HANDLE_TH_ERRORS
}

PyObject* fastmtl_graddrop_cpu_out_direct(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* a[7];
  if (!unpack_args(args, 7, a, "graddrop_cpu_out_direct")) return nullptr;
  const GradDropArgs g(a);
  const std::vector<at::Tensor> out = tensors(a[6], "out");
  {
    ReleaseGil released;
    fastmtl_cpu::direct_graddrop_out(g.list.entries(), g.K, g.leak, g.seed, g.offset, g.eps, out);
  }
  bump_versions(out);
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}
