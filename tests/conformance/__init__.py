"""Cross-backend conformance: the numpy reference, torch and MindSpore on identical inputs and weights.

- ``test_moe_layer_conformance.py``: one MoE layer, every router and capacity mode, decisions exact and
  outputs, losses and gradients within stated fp32 tolerances (``runners.py`` runs each backend).
- ``test_model_conformance.py``: the whole model; the same seed gives the same weights in both frameworks, and
  a torch checkpoint loaded in MindSpore gives the same logits, and back.
"""
