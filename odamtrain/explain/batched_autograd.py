"""One vector-Jacobian product per prediction, vectorised: the exact gradient of many outputs
at once, for heads whose internals the explicit backwards do not cover."""
from __future__ import annotations

import torch
from mmengine.logging import print_log

__all__ = ['batched_vjps']


def batched_vjps(y: torch.Tensor, inputs: list, chunk: int, owner: str):
    """Yield (indices, grads): for chunks of ``chunk`` outputs of ``y`` (n,), their gradients
    w.r.t. each of ``inputs``, a tuple of ``(c, *input.shape)`` tensors, by autograd with
    ``is_grads_batched`` (one vectorised backward per chunk; the graph is kept). Works in
    any grad mode (the graph of ``y`` is recorded by the caller).

    An op without a batching rule (e.g. mmcv's deformable convolution, or its multi-scale
    deformable attention on CUDA, whose backwards call C++/CUDA kernels) makes it fall back
    to one backward per output, with one log line naming ``owner``."""
    eye = torch.eye(len(y), dtype=y.dtype, device=y.device)
    batched = True
    for start in range(0, len(y), chunk):
        idx = torch.arange(start, min(start + chunk, len(y)), device=y.device)
        if batched:
            try:
                yield idx, torch.autograd.grad(y, inputs, grad_outputs=eye[idx],
                                               is_grads_batched=True, retain_graph=True,
                                               allow_unused=True)
                continue
            except RuntimeError as e:
                print_log(f'ODAM exact: {owner} has an op that autograd cannot batch '
                          f'({str(e).splitlines()[0][:80]}); one backward per prediction',
                          logger='current')
                batched = False
        # a one-hot vector on y itself, not y[i]: indexing under no_grad records no graph
        per_output = [torch.autograd.grad(y, inputs, grad_outputs=eye[i], retain_graph=True,
                                          allow_unused=True) for i in idx.tolist()]
        yield idx, tuple(None if g[0] is None else torch.stack(g) for g in zip(*per_output))
