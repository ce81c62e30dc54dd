"""The PanGu-Sigma-style decoder: ``pangu_sigma_torch`` and ``pangu_sigma_mindspore`` build it with the same
parameter names, those of the framework-free contract ``locmoe.model_spec`` (layer pattern, names, shapes)."""
