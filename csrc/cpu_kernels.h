// The CPU pointer-table kernels as plain C++ functions, for the direct eager entry points
// (cpu_direct.cpp). Defined at the end of cpu_multi_tensor.cpp and cpu_graddrop.cpp; each forwards
// to the function its torch.ops.fastmtl.*_cpu op runs, so both paths give the same bits and errors.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "cpu_pointer_table.h"

namespace fastmtl_cpu {

at::Tensor direct_gramian(const Entries& tensors, int64_t num_tasks);
std::vector<at::Tensor> direct_weighted_sum(const Entries& tensors, int64_t num_tasks, const at::Tensor& weights);
void direct_weighted_sum_out(const Entries& tensors, int64_t num_tasks, const at::Tensor& weights,
                             at::TensorList out);
std::vector<at::Tensor> direct_graddrop(const Entries& tensors, int64_t num_tasks, const at::Tensor& leak,
                                        int64_t seed, int64_t offset, double eps);
void direct_graddrop_out(const Entries& tensors, int64_t num_tasks, const at::Tensor& leak, int64_t seed,
                         int64_t offset, double eps, at::TensorList out);

}  // namespace fastmtl_cpu
