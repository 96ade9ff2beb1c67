"""The process-wide pieces built from settings: rules, channels and the dispatcher.

Web and worker processes build one Runtime at start (a bad rules file stops start-up here);
RQ jobs, which run in forked work horses, reach it through :func:`get_runtime`.
"""

from __future__ import annotations

import threading
from functools import cached_property

from careloop.config.settings import Settings, get_settings
from careloop.dispatch import InProcessDispatcher, RQDispatcher
from careloop.integrations.base import Channel
from careloop.rules import Rules, load_rules

JOB_TIMEOUT_MARGIN = 5
"""Seconds between RQ's job timeout and careloop's claim timeout: RQ must stop a stuck
work horse before its claim looks abandoned, or a live send could be checked as stale."""


class ConfigurationError(RuntimeError):
    """Settings that cannot work together; the message names the setting."""


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        if settings.claim_timeout < 3 * settings.provider_timeout + JOB_TIMEOUT_MARGIN * 2:
            raise ConfigurationError(
                "CARELOOP_CLAIM_TIMEOUT must be at least 3 × CARELOOP_PROVIDER_TIMEOUT + 10 seconds, "
                "so a send still in progress is never mistaken for an abandoned one"
            )
        self._lock = threading.Lock()

    @cached_property
    def rules(self) -> Rules:
        return load_rules(self.settings.rules_file)

    @cached_property
    def channels(self) -> dict[str, Channel]:
        from careloop.integrations import build_channels

        return build_channels(self.settings)

    def check(self) -> None:
        """Load what can be wrong at start (the rules file); raises RulesError."""
        _ = self.rules

    @property
    def job_timeout(self) -> int:
        return max(1, int(self.settings.claim_timeout) - JOB_TIMEOUT_MARGIN)

    @cached_property
    def dispatcher(self) -> RQDispatcher | InProcessDispatcher:
        if self.settings.redis_url:
            return RQDispatcher(self.settings.redis_url, self.settings.queue_prefix, self.job_timeout)
        from careloop.workers.relay import relay_once

        return InProcessDispatcher(
            idle_sweep=lambda: relay_once(self), sweep_interval=self.settings.relay_interval
        )

    @property
    def database_url(self) -> str:
        return self.settings.database_url


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install the runtime this process uses (the app factory, the CLI and tests)."""
    global _runtime
    with _runtime_lock:
        old = _runtime
        _runtime = runtime
    if old is not None and old is not runtime and "dispatcher" in old.__dict__:
        stop = getattr(old.dispatcher, "stop", None)
        if stop:
            stop()
