// Deterministic embedding backward (sort + segment sum) as a CUDA kernel, for the optional
// torch extension loaded by ds_minimodel/kernels/cuda_ext.py. Same contract as the Triton
// kernel in triton_embedding.py: the caller stable-sorts the token ids and passes, for each of
// the U distinct ids, the range [offsets[u], offsets[u + 1]) of positions in `perm`; each
// (segment, column) is summed by one thread in that fixed order, in fp32 (fp64 for fp64),
// and written once in the gradient's dtype. The padding row is never written (stays zero).
//
// One thread per column and 128 consecutive columns per block: the loads of one token row are
// coalesced, and no two threads ever add into the same output, so there are no atomics and the
// result is bitwise reproducible.
//
// Only <torch/extension.h> and the CUDA runtime are included: the caller (cuda_ext.py) passes
// torch's current stream as a handle and sets the device, so no c10/cuda or ATen/cuda header
// is needed. That keeps the source compilable by nvcc against any torch build's headers (a CPU
// wheel lacks c10/cuda's generated headers) and a minimal CUDA toolkit (no cuSPARSE/cuBLAS).

#include <cuda_runtime.h>
#include <torch/extension.h>

namespace {

constexpr int kThreads = 128;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename scalar_t>
__global__ void segment_sum_kernel(const scalar_t* __restrict__ grad,   // [N, D]
                                   const int64_t* __restrict__ perm,    // [N]
                                   const int64_t* __restrict__ offsets, // [U + 1]
                                   const int64_t* __restrict__ seg_ids, // [U]
                                   scalar_t* __restrict__ out,          // [V, D], zero-filled
                                   int64_t D, int64_t grad_stride, int64_t padding_idx) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t seg = blockIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  const int64_t row = seg_ids[seg];
  if (col >= D || row == padding_idx) return;
  acc_t acc = 0;
  for (int64_t i = offsets[seg]; i < offsets[seg + 1]; ++i) {
    acc += static_cast<acc_t>(grad[perm[i] * grad_stride + col]);
  }
  out[row * D + col] = static_cast<scalar_t>(acc);
}

torch::Tensor segment_sum(torch::Tensor grad, torch::Tensor perm, torch::Tensor offsets,
                          torch::Tensor seg_ids, int64_t num_embeddings, int64_t padding_idx,
                          int64_t stream_handle) {
  TORCH_CHECK(grad.is_cuda() && perm.is_cuda() && offsets.is_cuda() && seg_ids.is_cuda(),
              "embedding_backward: all tensors must be on CUDA");
  TORCH_CHECK(grad.dim() == 2 && grad.stride(1) == 1, "embedding_backward: grad must be [N, D], row-major");
  TORCH_CHECK(perm.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong &&
                  seg_ids.scalar_type() == at::kLong,
              "embedding_backward: perm, offsets and seg_ids must be int64");
  TORCH_CHECK(offsets.numel() == seg_ids.numel() + 1, "embedding_backward: offsets must have U + 1 entries");
  const int64_t D = grad.size(1);
  auto out = torch::zeros({num_embeddings, D}, grad.options());
  const int64_t U = seg_ids.numel();
  if (U == 0 || D == 0) return out;
  TORCH_CHECK(U < (int64_t{1} << 31), "embedding_backward: too many distinct ids for one grid");
  const dim3 grid(static_cast<unsigned>(U), static_cast<unsigned>((D + kThreads - 1) / kThreads));
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "segment_sum", [&] {
    segment_sum_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), perm.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
        seg_ids.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), D, grad.stride(0), padding_idx);
  });
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "embedding_backward: kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("segment_sum", &segment_sum,
        "Deterministic embedding backward: per-id segment sums of sorted token gradients "
        "(grad, perm, offsets, seg_ids, num_embeddings, padding_idx or -1, cuda stream handle)");
}
