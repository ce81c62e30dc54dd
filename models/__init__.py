"""The PanGu-Sigma-style decoder: ``spec`` is framework-free (layer pattern, parameter names and shapes);
``pangu_sigma_torch`` and ``pangu_sigma_mindspore`` build it with the same parameter names."""
