"""The rollout commands: ``rollout deploy``, ``rollout set`` and ``rollout stop`` (protocol.md).

kamal-proxy's rollouts (internal/server/router.go ``SetRolloutTargets``, ``SetRolloutSplit``,
``StopRollout``): a service gets a second target group, the rollout group (runtime/service.py),
health-checked like the main one, and the split (core/rollout.py) sends it the requests whose
``kamal-rollout`` cookie it picks. These functions extend the router (runtime/router.py): they
take its per-service lock, run the group in its nursery, publish to the workers and save, as
``Router.deploy`` does.

OK means it happened and was saved; ERR means nothing changed: each change is made without an
await, saved at once, and put back if the save fails.
"""

from __future__ import annotations

import attrs
import trio

from kproxy.core.commands import RolloutDeploy
from kproxy.core.flag_values import format_duration
from kproxy.core.options import DeploymentOptions
from kproxy.core.rollout import RolloutSplit
from kproxy.errors import CommandError, DeployTimeout
from kproxy.runtime.router import Progress, Router, _new_targets
from kproxy.runtime.service import Service
from kproxy.runtime.target_set import TargetSet


async def deploy(router: Router, command: RolloutDeploy, progress: Progress) -> None:
    """``rollout deploy``: health-check the new group, then install it beside the main one.

    The split is kept (a second ``rollout deploy`` replaces the group, and the group it
    replaced is drained); before any ``rollout set`` the group gets no traffic.

    Raises:
        ServiceNotFound: the service is not deployed.
        DeployTimeout: a target did not become healthy within ``--deploy-timeout``; the
            service is as it was.
    """
    name = command.service
    router._get(name)  # fail fast, before any health check
    async with router._lock(name):
        service = router._get(name)  # a remove may have run while this waited for the lock
        options = attrs.evolve(
            service.options,
            targets=command.targets,
            read_targets=command.read_targets,
            deploy_timeout=command.deploy_timeout,
            drain_timeout=command.drain_timeout,
            force=False,
        )
        new = router.target_set(name, _new_targets(options, router.connector))
        router.logger.info("Deploying for rollout", service=name, targets=options.targets)
        try:
            await router.nursery.start(new.run)
            with trio.move_on_after(options.deploy_timeout) as health_wait:
                await new.wait_healthy(progress, options.deploy_timeout)
            if health_wait.cancelled_caught:
                router.logger.info(
                    "Rollout deploy failed", service=name, reason="health check timeout"
                )
                raise DeployTimeout(
                    f"rollout target failed to become healthy within configured timeout "
                    f"({format_duration(options.deploy_timeout)})"
                )
        except BaseException:
            new.close()
            raise
        old, old_options, split = service.replace_rollout(new, options, service.split)
        await _save_or_put_back(router, service, (old, old_options, split), new, options)
        router._publish()
        if old is not None:
            old.drain_nowait(command.drain_timeout)
        router.logger.info("Deployed for rollout", service=name, targets=options.targets)
        await router._sync()
        if split is None:
            await progress(
                f"{name}: rollout group {', '.join(options.targets)} ready; it gets no "
                f"traffic until `rollout set {name} --percent N` or `--list`"
            )
        else:
            await progress(f"{name}: rollout traffic now goes to {', '.join(options.targets)}")
        if old is not None:
            await router._wait_drained(old, command.drain_timeout, progress)


async def set_split(router: Router, name: str, split: RolloutSplit) -> None:
    """``rollout set``: from now on the split picks the requests for the rollout group.

    Raises:
        ServiceNotFound: the service is not deployed.
        CommandError: it has no rollout group.
    """
    service = router._get(name)
    if service.rollout is None:
        raise CommandError(
            f"service {name!r} has no rollout group (rollout target not set); "
            f"deploy one first: rollout deploy {name} --target HOST:PORT"
        )
    old = service.replace_rollout(service.rollout, service.rollout_options, split)
    await _save_or_put_back(router, service, old)
    router._publish()
    router.logger.info(
        "Set rollout split", service=name, percentage=split.percent, allowlist=split.allowlist
    )
    await router._sync()


async def stop(router: Router, name: str, progress: Progress) -> bool:
    """``rollout stop``: every request to the main group; the rollout group drains and goes.

    Returns: False if the service had no rollout group (nothing changed).

    Raises:
        ServiceNotFound: the service is not deployed.
    """
    async with router._lock(name):  # not in the middle of a rollout deploy's cutover
        service = router._get(name)
        old = service.replace_rollout(None, None)
        group, options, _split = old
        if group is None or options is None:
            return False
        await _save_or_put_back(router, service, old)
        router._publish()
        group.drain_nowait(options.drain_timeout)
        router.logger.info("Stopped rollout", service=name)
    await router._sync()
    await progress(f"{name}: all traffic goes to {', '.join(service.options.targets)}")
    await router._wait_drained(group, options.drain_timeout, progress)
    return True


async def _save_or_put_back(
    router: Router,
    service: Service,
    before: tuple[TargetSet | None, DeploymentOptions | None, RolloutSplit | None],
    new: TargetSet | None = None,
    new_options: DeploymentOptions | None = None,
) -> None:
    """Save the change just made; if that fails, put ``before`` back (and drain ``new``, which
    may have taken requests meanwhile) and raise, so the answer is ERR with nothing changed."""
    try:
        await router._save()
    except CommandError:
        service.replace_rollout(*before)
        router._publish()  # a health change of the new group may have published it
        if new is not None and new_options is not None:
            new.drain_nowait(new_options.drain_timeout)
        raise
