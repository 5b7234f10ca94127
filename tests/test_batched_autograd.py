"""The vectorised backward of many outputs against one plain backward per output, and its
fallback for Functions that autograd cannot batch (as mmcv's C++/CUDA ops)."""
import pytest
import torch

from odamtrain.explain.batched_autograd import batched_vjps


class StorageSquare(torch.autograd.Function):
    """x ** 2 whose backward reads the gradient's storage, as a C++/CUDA kernel does (a
    vmapped backward has none); counts its backward calls."""
    calls = 0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        StorageSquare.calls += 1
        grad.data_ptr()  # raises on a batched tensor
        x, = ctx.saved_tensors
        return 2 * x * grad


class VmapSquare(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return 2 * x * grad


def graph(square):
    """y (5,) from two inputs through ``square``, with a mix of both inputs per output."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    return (square(a) * b.sin()).sum(1) + a[:, 0] * b[1], [a, b]


def per_output(y, inputs):
    return [torch.autograd.grad(y[i], inputs, retain_graph=True) for i in range(len(y))]


def assert_equal_to(got, want):
    seen = []
    for idx, grads in got:
        for j, i in enumerate(idx.tolist()):
            seen.append(i)
            for g, w in zip(grads, want[i]):
                torch.testing.assert_close(g[j], w)
    assert seen == list(range(len(want)))


SQUARES = {'native': lambda x: x * x, 'vmap-rule': VmapSquare.apply,
           'storage': StorageSquare.apply}


@pytest.mark.parametrize('square', list(SQUARES))
def test_vjps_equal_one_backward_per_output_in_any_grad_mode(square, monkeypatch):
    """Batched where autograd can batch; a backward that needs storage (as mmcv's C++/CUDA
    kernels) falls back to one backward per output, with one log line. The consumers iterate
    under no_grad (the explainers): the fallback must not need a graph of its own."""
    import odamtrain.explain.batched_autograd as module
    logged = []
    monkeypatch.setattr(module, 'print_log', lambda msg, **kw: logged.append(msg))
    y, inputs = graph(SQUARES[square])
    want = per_output(y, inputs)
    StorageSquare.calls = 0
    with torch.no_grad():
        got = list(batched_vjps(y, inputs, chunk=2, owner='toy'))
    assert_equal_to(got, want)
    if square == 'storage':
        assert len(logged) == 1 and 'toy' in logged[0] and 'one backward per' in logged[0]
        assert StorageSquare.calls == 1 + len(y)  # the batched try, then one per output
    else:
        assert logged == []
