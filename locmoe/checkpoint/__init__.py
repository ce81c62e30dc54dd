"""Checkpoints: the directory layout, its sealing (a ``.tmp`` folder, a manifest, a rename) and pruning, each
rank's files, sharded weights read with numpy, and conversion between the backends' files."""
