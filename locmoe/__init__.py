"""LocMoE: Mixture-of-Experts training and serving whose router keeps tokens close to home.

``locmoe`` itself is framework-free (numpy + scipy): config, topology, the routing reference, capacity
bound, placement and planning, the model's parameter contract (``model_spec``), the checkpoint and export
formats, and the contract a framework backend keeps (``backend_api``). The PyTorch and MindSpore
implementations live in the top-level ``backends`` package, the model in ``models``; only the command line,
``locmoe.cli``, imports them (``.importlinter`` holds the layering).
"""

__version__ = "0.1.0"
