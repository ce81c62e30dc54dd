"""Each backend's op surface satisfies ``locmoe.moe.surface.MoEOps``: every member of the protocol is present
and callable with the protocol's parameters (same names, same kinds, same order, the same defaults).

A member missing or spelled differently fails at import of this test, not in the middle of a layer call
that happens to reach it.
"""

import inspect

import pytest

from backends.mindspore.moe_ops import MindSporeOps
from backends.torch.moe_ops import TorchOps
from locmoe.moe.surface import MoEOps

SURFACES = {"torch": TorchOps, "mindspore": MindSporeOps}


def protocol_members() -> list[str]:
    """The methods ``MoEOps`` declares (its own, not ``Protocol``'s or ``object``'s)."""
    members = vars(MoEOps).items()
    return sorted(name for name, value in members if inspect.isfunction(value) and not name.startswith("_"))


def parameters(fn) -> list[tuple]:
    """(name, kind, default) of each parameter; annotations are the protocol's documentation only."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_the_protocol_has_members():
    assert len(protocol_members()) > 50  # guards the members' lookup itself (MoEOps has ~75)


@pytest.mark.parametrize("backend", sorted(SURFACES))
def test_every_member_is_present(backend):
    surface = SURFACES[backend]
    missing = [name for name in protocol_members() if not callable(getattr(surface, name, None))]
    assert missing == [], f"{surface.__name__} lacks {missing}"


@pytest.mark.parametrize("backend", sorted(SURFACES))
@pytest.mark.parametrize("name", protocol_members())
def test_signature_matches(backend, name):
    surface = SURFACES[backend]
    assert parameters(getattr(surface, name)) == parameters(getattr(MoEOps, name)), (
        f"{surface.__name__}.{name}{inspect.signature(getattr(surface, name))} differs from "
        f"MoEOps.{name}{inspect.signature(getattr(MoEOps, name))}"
    )
