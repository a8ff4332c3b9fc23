"""The rollout commands: ``rollout deploy``, ``rollout set`` and ``rollout stop`` (protocol.md).

kamal-proxy's rollouts (internal/server/router.go ``SetRolloutTargets``, ``SetRolloutSplit``,
``StopRollout``): a service gets a second target group, the rollout group (runtime/service.py),
health-checked like the main one, and the split (core/rollout.py) sends it the requests whose
``kamal-rollout`` cookie it picks. These functions extend the router (runtime/router.py): they
take its per-service lock, run the group in its nursery, publish to the workers and save, as
``Router.deploy`` does.

OK means it happened and was saved; ERR means nothing changed: each change is saved first and
made after, with no await between (``Router.saver``, runtime/state_saver.py).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from kproxy.core.commands import RolloutDeploy
from kproxy.core.options import DeploymentOptions
from kproxy.core.rollout import RolloutSplit
from kproxy.core.snapshot import RolloutRecord, ServiceRecord
from kproxy.errors import CommandError, ServiceNotFound
from kproxy.runtime.router import Progress, Router
from kproxy.runtime.routing import new_targets
from kproxy.runtime.service import Service
from kproxy.runtime.target_set import TargetSet

# A service's rollout group, what its ``rollout deploy`` said, and its split (None: none).
Rollout = tuple[TargetSet | None, DeploymentOptions | None, RolloutSplit | None]


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
    router.get(name)  # fail fast, before any health check
    deadline = trio.current_time() + command.deploy_timeout  # a queued command's wait counts
    what = f"rollout deploy to {', '.join(command.targets)}"
    async with router.locks.hold(name, what, progress, deadline):
        service = router.get(name)  # a remove may have run while this waited for the lock
        options = attrs.evolve(
            service.options,
            targets=command.targets,
            read_targets=command.read_targets,
            deploy_timeout=command.deploy_timeout,
            drain_timeout=command.drain_timeout,
            force=False,
        )
        new = router.target_set(name, new_targets(options, router.connector))
        router.logger.info("Deploying for rollout", service=name, targets=options.targets)
        try:
            await router.nursery.start(new.run)
            await new.healthy_by(deadline, options.deploy_timeout, progress, what="rollout")
            # The split is read as the change is saved: a ``rollout set`` (which waits for no
            # service lock) committed meanwhile is kept, not overwritten.
            (old, _, _), (_, _, split) = await _commit(
                router, service, lambda now: (new, options, now[2])
            )
        except BaseException:
            new.close()
            raise
        if old is not None:
            old.drain_nowait(command.drain_timeout)
        router.logger.info("Deployed for rollout", service=name, targets=options.targets)
        await router.sync()
        if split is None:
            await progress(
                f"{name}: rollout group {', '.join(options.targets)} ready; it gets no "
                f"traffic until `rollout set {name} --percent N` or `--list`"
            )
        else:
            await progress(f"{name}: rollout traffic now goes to {', '.join(options.targets)}")
        if old is not None:
            await router.wait_drained(old, command.drain_timeout, progress)


async def set_split(router: Router, name: str, split: RolloutSplit) -> None:
    """``rollout set``: from now on the split picks the requests for the rollout group.

    Raises:
        ServiceNotFound: the service is not deployed.
        CommandError: it has no rollout group.
    """
    service = router.get(name)

    def with_split(now: Rollout) -> Rollout:
        # The group as it is when the change is saved: a rollout deploy or stop that was
        # saved meanwhile is kept (this command takes no service lock: it waits for nothing).
        group, options, _ = now
        if group is None:
            raise CommandError(
                f"service {name!r} has no rollout group (rollout target not set); "
                f"deploy one first: rollout deploy {name} --target HOST:PORT"
            )
        return group, options, split

    await _commit(router, service, with_split)
    router.logger.info(
        "Set rollout split", service=name, percentage=split.percent, allowlist=split.allowlist
    )
    await router.sync()


async def stop(router: Router, name: str, progress: Progress) -> bool:
    """``rollout stop``: every request to the main group; the rollout group drains and goes.

    Returns: False if the service had no rollout group (nothing changed).

    Raises:
        ServiceNotFound: the service is not deployed.
    """
    async with router.locks.hold(name, "rollout stop", progress):
        service = router.get(name)
        if service.rollout is None:
            return False
        (group, options, _split), _ = await _commit(router, service, lambda _: (None, None, None))
        if group is None or options is None:  # a rollout stop that ran meanwhile
            return False
        group.drain_nowait(options.drain_timeout)
        router.logger.info("Stopped rollout", service=name)
    await router.sync()
    await progress(f"{name}: all traffic goes to {', '.join(service.options.targets)}")
    await router.wait_drained(group, options.drain_timeout, progress)
    return True


async def _commit(
    router: Router, service: Service, change: Callable[[Rollout], Rollout]
) -> tuple[Rollout, Rollout]:
    """Save the service with the rollout group, its options and split that ``change`` makes of
    the current ones, then install them and publish; returns what it replaced and what it
    installed. ``change`` runs once earlier saves are done, so it sees what they made; it may
    raise to refuse (nothing changes). ERR (CommandError) with nothing changed when the state
    cannot be saved."""
    chosen: list[Rollout] = []

    def prospective() -> list[ServiceRecord]:
        if router.services.get(service.name) is not service:
            raise ServiceNotFound(f"service {service.name!r} was removed meanwhile")
        chosen.append(change((service.rollout, service.rollout_options, service.split)))
        group, options, split = chosen[-1]
        rollout = None
        if group is not None and options is not None:
            rollout = RolloutRecord.of(options, split)
        return router.records_with(service.name, attrs.evolve(service.record(), rollout=rollout))

    def switch() -> tuple[Rollout, Rollout]:
        old = service.replace_rollout(*chosen[-1])
        router.publish()
        return old, chosen[-1]

    return await router.saver.commit(prospective, switch)
