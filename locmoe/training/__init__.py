"""The training loop of ``locmoe train``, written once for every backend: ``loop.run`` drives a backend's
:class:`locmoe.backend_api.Trainer`."""
