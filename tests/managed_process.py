"""The `with` protocol shared by the test helpers that run a process of their own."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ManagedProcess:
    """Started on entering `with` (stopped again if starting fails), stopped on leaving."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
