"""The MoE layer's control flow, written once for every backend.

``parts`` (the layer's parts, built once for every shell), ``routing`` (the router: gate → probabilities →
choices, and its losses), ``capacity`` (each expert's capacity and the angle average the bound rules keep),
``dispatcher`` (the plan in named stages — capacity, admission, statistics, layout — then the exchange and the
combine), ``send_layout`` (the plan's layout stage), ``exchange`` (flat and hierarchical all-to-all), ``layer``
(one call of the layer, with the options serving changes) and ``records`` (the data classes they pass). They
compute with the op surface of ``surface.MoEOps``, which each backend provides
(``backends/<framework>/moe_ops.py``); the backend keeps its module shell (``nn.Module`` / ``nn.Cell``, which
holds the parameters) and its kernels. The numpy reference in ``locmoe.routing`` is the oracle both are tested
against.
"""
