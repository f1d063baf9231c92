// The Python-level functions of fastmtl._C (module.cpp lists them).
#pragma once
#include <Python.h>

// See describe_params.cpp: bulk validation of per-parameter task gradients, or None.
PyObject* fastmtl_describe_params(PyObject* self, PyObject* grads);
