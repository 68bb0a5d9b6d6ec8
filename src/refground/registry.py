"""Name -> factory registries, so methods and proposers are chosen by name, not by if-chains."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from refground.errors import UnknownNameError

T = TypeVar("T")


def package_modules(package: str) -> list[str]:
    """The importable modules of ``package`` (not its private ``_name`` ones), sorted."""
    path = importlib.import_module(package).__path__
    return sorted(f"{package}.{info.name}" for info in pkgutil.iter_modules(path)
                  if not info.name.startswith("_"))


class Registry(Generic[T]):
    """A mapping from names to factories, filled by the ``@registry.register("name")`` decorator.

    Factories register when their module is imported. On first lookup every module of
    ``packages`` is imported (those whose name starts with ``_`` excepted), so adding a method
    or a proposer is writing its file: no list to keep. Modules keep heavy optional imports
    inside their factories, so importing them all stays cheap.
    """

    def __init__(self, kind: str, packages: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._packages = packages
        self._factories: dict[str, Callable[..., T]] = {}
        self._imported = False

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def _import_modules(self) -> None:
        if not self._imported:
            self._imported = True
            for package in self._packages:
                for module in package_modules(package):
                    importlib.import_module(module)

    def names(self) -> list[str]:
        self._import_modules()
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        self._import_modules()
        try:
            return self._factories[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._factories, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, **options: object) -> T:
        return self.get(name)(**options)
