// Host helpers shared by the kernels: graph-safe table upload and cached device properties.
#include "multi_tensor.cuh"

#include <atomic>

namespace fastmtl {
namespace {

// Kernel parameters are limited to 4 KiB on every supported toolkit/architecture pair; 500 words
// (4000 bytes) plus the other arguments stay below it.
constexpr int kFillWords = 500;

struct FillWords {
  int64_t v[kFillWords];
};

__global__ void fill_table_kernel(int64_t* __restrict__ dst, FillWords words, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = words.v[i];
}

constexpr int kMaxDevices = 256;
std::atomic<int> g_sm_count[kMaxDevices];

}  // namespace

// The values travel inside the launch parameters: a CUDA graph copies them when the launch is
// captured, so replays never read host memory (unlike a captured host-to-device memcpy, whose
// source buffer would have to outlive the graph unchanged).
cudaError_t fill_table_async(int64_t* dst, const int64_t* src, int64_t n, cudaStream_t stream) {
  for (int64_t start = 0; start < n; start += kFillWords) {
    const int count = int(n - start < kFillWords ? n - start : kFillWords);
    FillWords words;
    for (int i = 0; i < count; ++i) words.v[i] = src[start + i];
    fill_table_kernel<<<1, 256, 0, stream>>>(dst + start, words, count);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

int device_sm_count(int device) {
  if (device < 0 || device >= kMaxDevices) device = 0;
  int n = g_sm_count[device].load(std::memory_order_relaxed);
  if (n > 0) return n;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();
    n = 1;
  }
  g_sm_count[device].store(n, std::memory_order_relaxed);
  return n;
}

}  // namespace fastmtl
