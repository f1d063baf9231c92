// The Python module fastmtl._C: `import fastmtl._C` loads this library and runs the static
// TORCH_LIBRARY registrations of every translation unit (solver_ops.cpp, cpu_multi_tensor.cpp,
// cpu_graddrop.cpp, and with the CUDA part ops.cpp and solver_ops_cuda.cpp); the ops are then reached through
// torch.ops.fastmtl.*. The module itself holds one function, describe_params (describe_params.cpp),
// which takes Python objects and so is not an op. Built in both the CPU-only and the CUDA
// configuration.
#include <Python.h>

#include "describe_params.h"

namespace {
PyMethodDef methods[] = {
    {"describe_params", fastmtl_describe_params, METH_O,
     "describe_params(grads) -> None | (rows, shapes, numels, dtype, device): bulk validation of "
     "per-parameter task gradients (see fastmtl.gradients)"},
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
