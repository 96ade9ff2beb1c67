"""What a careloop process runs with, built from settings: rules, channels and a dispatcher.

A web app keeps its runtime on ``app.extensions["careloop"]``; a worker process keeps one
for the jobs it runs. ``careloop.workers.build_runtime`` is the one place a runtime is
built (it supplies the job functions); nothing here is a process-wide global.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property

from careloop.config.settings import Settings
from careloop.db import session_scope
from careloop.dispatch import InProcessDispatcher, Jobs, RQDispatcher
from careloop.integrations import build_channels
from careloop.integrations.base import Channel
from careloop.integrations.webhooks_out import WebhookSender
from careloop.links import MemberLinks, stored_secret
from careloop.policy import Policy, load_policy
from careloop.rules import Rules, load_rules

JOB_TIMEOUT_MARGIN = 5
"""Seconds between RQ's job timeout and careloop's claim timeout: RQ must stop a stuck
work horse before its claim looks abandoned, or a live send could be checked as stale."""


class ConfigurationError(RuntimeError):
    """Settings that cannot work together; the message names the setting."""


class Runtime:
    """Settings and what is built from them, once per process (web app or worker).

    Args:
        settings: the validated settings.
        jobs: the job functions the dispatcher hands work to.

    Raises:
        ConfigurationError: when the claim timeout is too short for the provider timeout.
    """

    def __init__(self, settings: Settings, jobs: Jobs):
        if settings.claim_timeout < 3 * settings.provider_timeout + JOB_TIMEOUT_MARGIN * 2:
            raise ConfigurationError(
                "CARELOOP_CLAIM_TIMEOUT must be at least 3 × CARELOOP_PROVIDER_TIMEOUT + 10 seconds, "
                "so a send still in progress is never mistaken for an abandoned one"
            )
        self.settings = settings
        self.jobs = jobs

    @cached_property
    def rules(self) -> Rules:
        return load_rules(self.settings.rules_file)

    @cached_property
    def policy(self) -> Policy:
        return load_policy(self.settings.policy_file)

    @cached_property
    def secret(self) -> str:
        """The instance secret: CARELOOP_SECRET_KEY, or the key kept in the database (read or
        made on first use, so only once the schema is there)."""
        if self.settings.secret_key is not None:
            return self.settings.secret_key.get_secret_value()
        with session_scope(self.database_url) as session:
            return stored_secret(session)

    @cached_property
    def links(self) -> MemberLinks:
        """Member-link tokens, signed with :attr:`secret`."""
        return MemberLinks(self.secret, timedelta(days=self.settings.link_ttl_days))

    @cached_property
    def channels(self) -> dict[str, Channel]:
        return build_channels(self.settings)

    @cached_property
    def webhook_sender(self) -> WebhookSender:
        settings = self.settings
        return WebhookSender(timeout=settings.provider_timeout, allow_private=settings.allow_private_webhooks)

    def check(self) -> None:
        """Load what can be wrong at start (the rules and policy files); raises RulesError or
        PolicyError with the checker's message."""
        _ = self.rules
        _ = self.policy

    @property
    def job_timeout(self) -> int:
        return max(1, int(self.settings.claim_timeout) - JOB_TIMEOUT_MARGIN)

    @cached_property
    def dispatcher(self) -> RQDispatcher | InProcessDispatcher:
        if self.settings.redis_url:
            settings = self.settings
            return RQDispatcher(settings.redis_url, settings.queue_prefix, self.job_timeout, self.jobs)
        return InProcessDispatcher(self.jobs, context=self, sweep_interval=self.settings.relay_interval)

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    def close(self) -> None:
        """Stop the in-process queue (waiting for the job in hand) and drop queue connections."""
        if "dispatcher" in self.__dict__:
            self.dispatcher.close()
