"""LocMoE: Mixture-of-Experts training and serving whose router keeps tokens close to home.

``locmoe`` itself is framework-free (numpy + scipy): config, topology, the routing reference, capacity
bound, placement and planning, the export format and the CLI. The PyTorch and MindSpore implementations
live in the top-level ``backends`` package, the model in ``models``.
"""
__version__ = "0.1.0"
