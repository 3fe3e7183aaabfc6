"""A mypy plugin for the one Amaranth idiom mypy cannot follow: members made from a signature.

An ``amaranth.lib.wiring.Component`` gets its ports (``core.bus``, ``core.irq`` ...) as
attributes when it is constructed, from its signature: they are declared as annotations
(``bus: In(WishboneSignature)``) or built in ``__init__`` from parameters, never assigned in a
way mypy sees.  Every ``core.bus`` would be "has no attribute".  The same holds for the other
objects Amaranth builds from a signature: an interface (``wiring.PureInterface``, what
``signature.create()`` and ``wiring.flipped`` give: ``link.busy``) and a memory's ports
(``memory.ReadPort``/``WritePort``: ``port.addr``, ``port.en``).  This plugin gives each of
these classes a ``__getattr__`` that returns ``Any``, which is what the run time does: any
member of the signature, typed as Amaranth types it (not at all).  Attributes the class does
declare keep their types.

Registered in ``[tool.mypy] plugins`` (pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable

from mypy.nodes import ARG_POS, Argument, Var
from mypy.plugin import ClassDefContext, Plugin
from mypy.plugins.common import add_method_to_class
from mypy.types import AnyType, TypeOfAny

#: the classes (and their subclasses) whose members come from a signature
FROM_SIGNATURE = (
    "amaranth.lib.wiring.Component",
    "amaranth.lib.wiring.PureInterface",
    "amaranth.lib.memory.ReadPort",
    "amaranth.lib.memory.WritePort",
)


def _ports_are_any(ctx: ClassDefContext) -> None:
    info = ctx.cls.info
    if not any(info.has_base(name) for name in FROM_SIGNATURE) or "__getattr__" in info.names:
        return
    name = Argument(Var("name"), ctx.api.named_type("builtins.str"), None, ARG_POS)
    add_method_to_class(ctx.api, ctx.cls, "__getattr__", [name], AnyType(TypeOfAny.special_form))


class AmaranthPlugin(Plugin):
    def get_base_class_hook(self, fullname: str) -> Callable[[ClassDefContext], None] | None:
        # called once per base of every class; the hook itself checks for Component in the MRO
        return _ports_are_any

    def get_customize_class_mro_hook(
        self, fullname: str
    ) -> Callable[[ClassDefContext], None] | None:
        # called for every class, also one without bases (PureInterface, the memory ports),
        # for which the hook above is never called
        return _ports_are_any if fullname in FROM_SIGNATURE else None


def plugin(version: str) -> type[Plugin]:
    return AmaranthPlugin
