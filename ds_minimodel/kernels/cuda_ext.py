"""Optional CUDA C++ embedding backward (`csrc/embedding_backward.cu`), built on first use.

The same deterministic sort + segment-sum as the Triton kernel, for machines where a compiled
extension is preferred (no Triton JIT at start-up, or to compare the two). It is JIT-built with
`torch.utils.cpp_extension.load` into TORCH_EXTENSIONS_DIR the first time it is called, so it
needs nvcc and a CUDA build of torch; `kernels.embedding(..., impl="cuda")` is the only caller.
"""

from pathlib import Path

import torch

_SOURCE = Path(__file__).resolve().parent / "csrc" / "embedding_backward.cu"
_MODULE = None


def load():
    """The compiled extension module (built once per process, cached on disk by torch)."""
    global _MODULE
    if _MODULE is None:
        if not torch.cuda.is_available():
            raise RuntimeError("cuda_ext: the C++ embedding backward needs a CUDA build of torch and a GPU")
        from torch.utils.cpp_extension import load as load_extension

        _MODULE = load_extension(name="ds_minimodel_embedding_backward", sources=[str(_SOURCE)],
                                 extra_cuda_cflags=["-O3"], verbose=False)
    return _MODULE


def embedding_backward(grad_output, input_ids, num_embeddings, padding_idx=None):
    from ds_minimodel.kernels.triton_embedding import sorted_segments

    d = grad_output.shape[-1]
    grad = grad_output.reshape(-1, d).contiguous()
    perm, offsets, seg_ids = sorted_segments(input_ids.reshape(-1))
    module = load()
    # The extension takes torch's current stream as a handle (see the .cu for why).
    with torch.cuda.device(grad.device):
        stream = torch.cuda.current_stream(grad.device).cuda_stream
        return module.segment_sum(grad, perm, offsets, seg_ids, num_embeddings,
                                  -1 if padding_idx is None else padding_idx, stream)
