"""The parallel layout: topology (nodes x devices, EP groups), the process-group context, traffic counts."""
