// The Python module fastmtl._C: `import fastmtl._C` loads this library and runs the static
// TORCH_LIBRARY registrations of every translation unit (solver_ops.cpp, cpu_multi_tensor.cpp,
// cpu_graddrop.cpp, and with the CUDA part ops.cpp and solver_ops_cuda.cpp); the ops are then
// reached through torch.ops.fastmtl.*. The module itself holds functions that take Python objects
// and so are not ops: describe_params (describe_params.cpp), finite_guard (finite_guard.cpp) and
// the direct eager entry points to the CPU kernels (cpu_direct.cpp). Built in both the CPU-only and the CUDA configuration.
#include <Python.h>

#include "cpu_direct.h"
#include "describe_params.h"
#include "finite_guard.h"

namespace {
PyMethodDef methods[] = {
    {"describe_params", fastmtl_describe_params, METH_O,
     "describe_params(grads) -> None | (rows, shapes, numels, dtype, device): bulk validation of "
     "per-parameter task gradients (see fastmtl.gradients)"},
    {"finite_guard", fastmtl_finite_guard, METH_VARARGS,
     "finite_guard(G, dots) -> None | (G', dots', finite): the Gram matrix's finiteness guard on the host "
     "(see fastmtl.ops.finite_guard)"},
    {"gramian_cpu_direct", fastmtl_gramian_cpu_direct, METH_VARARGS,
     "gramian_cpu_direct(tensors, num_tasks): torch.ops.fastmtl.gramian_cpu without the dispatcher"},
    {"weighted_sum_cpu_direct", fastmtl_weighted_sum_cpu_direct, METH_VARARGS,
     "weighted_sum_cpu_direct(tensors, num_tasks, weights): torch.ops.fastmtl.weighted_sum_cpu without the "
     "dispatcher"},
    {"weighted_sum_cpu_out_direct", fastmtl_weighted_sum_cpu_out_direct, METH_VARARGS,
     "weighted_sum_cpu_out_direct(tensors, num_tasks, weights, out): torch.ops.fastmtl.weighted_sum_cpu_out "
     "without the dispatcher"},
    {"graddrop_cpu_direct", fastmtl_graddrop_cpu_direct, METH_VARARGS,
     "graddrop_cpu_direct(tensors, num_tasks, leak, seed, offset, eps): torch.ops.fastmtl.graddrop_cpu without "
     "the dispatcher"},
    {"graddrop_cpu_out_direct", fastmtl_graddrop_cpu_out_direct, METH_VARARGS,
     "graddrop_cpu_out_direct(tensors, num_tasks, leak, seed, offset, eps, out): "
     "torch.ops.fastmtl.graddrop_cpu_out without the dispatcher"},
    {nullptr, nullptr, 0, nullptr},
};
}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",     // m_name
      "fastmtl's compiled ops; importing this module registers torch.ops.fastmtl.*",
      -1,       // m_size
      methods,  // m_methods
      nullptr,  // m_slots
      nullptr,  // m_traverse
      nullptr,  // m_clear
      nullptr,  // m_free
  };
  return PyModule_Create(&module_def);
}
