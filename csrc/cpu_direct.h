// Direct eager entry points of fastmtl._C to the CPU pointer-table kernels (cpu_direct.cpp);
// module.cpp lists them.
#pragma once
#include <Python.h>

PyObject* fastmtl_gramian_cpu_direct(PyObject* self, PyObject* args);
PyObject* fastmtl_weighted_sum_cpu_direct(PyObject* self, PyObject* args);
PyObject* fastmtl_weighted_sum_cpu_out_direct(PyObject* self, PyObject* args);
PyObject* fastmtl_graddrop_cpu_direct(PyObject* self, PyObject* args);
PyObject* fastmtl_graddrop_cpu_out_direct(PyObject* self, PyObject* args);
