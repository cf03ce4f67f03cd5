"""The one keep-alive helper for DistributedDataParallel.

DistributedDataParallel expects every parameter to receive a gradient on every iteration of
every rank. A part of the model that a batch does not use (a head's classifier when nothing is
masked, BERT's pooler under a head that does not read it, pre-training's text-only vector in a
batch without text) stays in the graph through a zero term that depends on it:
:func:`keep_alive`. The term is exactly zero, so losses and gradients are unchanged.
"""

__all__ = ["keep_alive"]


def keep_alive(*tensors):
    """A zero scalar that depends on every tensor of ``tensors`` (each ``t.sum() * 0.0``): added
    to a loss, it gives every parameter behind them a (zero) gradient."""
    if not tensors:
        raise ValueError("keep_alive needs at least one tensor")
    zero = tensors[0].sum() * 0.0
    for t in tensors[1:]:
        zero = zero + t.sum() * 0.0
    return zero
