// The Python module fastmtl._C: valid and empty, so that `import fastmtl._C` loads this library and
// runs the static TORCH_LIBRARY registrations of every translation unit (solver_ops.cpp,
// cpu_multi_tensor.cpp, cpu_graddrop.cpp, and with the CUDA part ops.cpp and solver_ops_cuda.cpp).
// The ops are then reached through torch.ops.fastmtl.*. Built in both the CPU-only and the CUDA
// configuration.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",     // m_name
      "fastmtl's compiled ops; importing this module registers torch.ops.fastmtl.*",
      -1,       // m_size
      nullptr,  // m_methods
      nullptr,  // m_slots
      nullptr,  // m_traverse
      nullptr,  // m_clear
      nullptr,  // m_free
  };
  return PyModule_Create(&module_def);
}
