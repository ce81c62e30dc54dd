"""The PanGu-Sigma-style decoder: ``pangu_sigma_torch`` and ``pangu_sigma_mindspore`` build it with the same
parameter names, those of the framework-free contract ``locmoe.model_spec`` (layer pattern, names, shapes).

A model imports no backend: the backend that builds one hands it its MoE layer class and the expert-parallel
handle (``PanGuSigma(cfg, ep, MoELayer)``), as torchtitan applies parallelism to a plain model from outside."""
