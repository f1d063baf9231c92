// See finite_guard.cpp: the finiteness guard of a Gram matrix on the host, or None (module.cpp lists it).
#pragma once
#include <Python.h>

PyObject* fastmtl_finite_guard(PyObject* self, PyObject* args);
