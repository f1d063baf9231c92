"""fastmtl inside other libraries' training code. Each submodule imports its library only when used.

* :mod:`fastmtl.integrations.torchjd` — fastmtl methods as TorchJD ``Aggregator`` / ``Weighting``
  objects, and any TorchJD Gramian ``Weighting`` as a fastmtl method;
* :mod:`fastmtl.integrations.libmtl` — a LibMTL ``AbsWeighting``-compatible class for any fastmtl
  method;
* :mod:`fastmtl.integrations.lightning` — a Lightning callback for manual optimisation that calls
  :func:`fastmtl.backward` and keeps the method's state in Lightning checkpoints;
* :mod:`fastmtl.integrations.logging` — :class:`fastmtl.CombineInfo` as a flat dict of scalars for
  TensorBoard / W&B;
* :mod:`fastmtl.integrations.peer_names` — TorchJD's and LibMTL's names for fastmtl's methods.

``import fastmtl.integrations`` imports none of these libraries.
"""
