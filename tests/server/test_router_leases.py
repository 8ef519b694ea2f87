"""A router's leases through its life (start, lease lost, reload), in process, on the test's own Redis prefix:
no member ever starts (the binary is /bin/false), so what is leased is all there is to see."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from council.cluster.redis_store import RedisState
from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.server.router import LocalRole, ReloadError, Router
from tests.server.test_app import _router
from tests.servers import free_port, until, wait_for

pytestmark = pytest.mark.anyio
MiB, GiB = 1 << 20, 1 << 30


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


def _leasing(tmp_path: Path, redis_url: str, prefix: str) -> Router:
    """`_router`'s council `c` (2 slots, 512 MiB of a 1 GiB `cpu`), leasing in the test's Redis prefix."""
    router = _router(tmp_path)
    router.state = router.leases.state = RedisState(redis_url, prefix=prefix)
    return router


def _add_council_d(router: Router) -> None:
    """The operator adds council `d` (2 more slots: the plan still fits the GPU)."""
    text = router.policy_path.read_text()
    assert "councils:\n  c:" in text
    router.policy_path.write_text(text.replace("councils:\n  c:", "councils:\n  d:\n    members:\n    - model: m\n"
                                               "    - model: m\n  c:"))


async def test_a_council_whose_lease_was_lost_runs_again_once_its_slots_are_free_not_on_a_refused_reload(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    """A council whose lease was lost stays stopped while its slots are held elsewhere. A refused reload re-leased
    its memory (and the renewal loop kept it for good), withholding it from every other router for a council that
    runs nothing. And once the slots were free again it stayed stopped until someone reloaded: a renewal round now
    leases them and the council runs again."""
    router = _leasing(tmp_path, redis_url, prefix)
    other = RedisState(redis_url, prefix=prefix)
    gpu = f"{router.leases.host}/cpu"
    try:
        router.plan = await router.leases.admit(router.plan)
        assert router.plan.all_admitted
        # Our lease lapses (a long stall) and another router takes the whole GPU: council c is lost.
        redis.Redis.from_url(redis_url).delete(f"{prefix}gpu:{gpu}:leases")
        whole = await other.acquire(gpu, GiB, "b:2", GiB, 30.0)
        assert whole is not None
        await router.leases.renew_once()
        assert list(router.lost) == ["c"]
        await until(lambda: not router.processes, 5, "council c's processes stopped")
        await router.leases.renew_once()  # asked again: still held elsewhere
        assert list(router.lost) == ["c"] and router.leases.leases == {}
        await other.release(whole)
        third = await other.acquire(gpu, GiB, "c:3", 768 * MiB, 30.0)  # a third router: more than half
        assert third is not None
        _add_council_d(router)
        with pytest.raises(ReloadError, match="are leased elsewhere"):
            await router.reload()
        await router.leases.renew_once()
        assert router.leases.leases == {} and await other.holders(gpu) == {"c:3": 768 * MiB}
        ready, reasons = router.readiness()
        assert not ready and reasons[0].startswith("council c is stopped: lease lost")

        # The third router stops: the next round leases c's slots and c runs again.
        await other.release(third)
        await router.leases.renew_once()
        assert list(router.leases.leases) == ["c"] and await other.holders(gpu) == {router.leases.holder: 512 * MiB}
        await until(lambda: sorted(router.processes) == ["c/0", "c/1"], 5, "council c's processes started again")
        assert router.lost == {} and "c" in router.engines
        assert not any("stopped" in reason for reason in router.readiness()[1])
    finally:
        await router.stop()
        await other.close()


@pytest.mark.parametrize("refused", [False, True], ids=["same-policy", "refused"])
async def test_a_reload_never_frees_memory_its_running_processes_use(tmp_path: Path, redis_url: str, prefix: str,
                                                                     refused: bool) -> None:
    """A reload gave back every lease before leasing the new plan: another router acquiring in between was granted
    memory our unchanged processes still used, and a refused reload then could not take it back (the next renewal
    round stopped the council). Another router now asks for that memory after each of the reload's store calls and
    never gets it; a refused reload leaves our lease held, the same token."""
    router = _leasing(tmp_path, redis_url, prefix)
    other = RedisState(redis_url, prefix=prefix)
    gpu = f"{router.leases.host}/cpu"
    granted: list[bool] = []
    try:
        router.plan = await router.leases.admit(router.plan)
        [[ours]] = router.leases.leases.values()
        assert await other.acquire(gpu, GiB, "c:3", 256 * MiB, 30.0) is not None  # a third router: a quarter
        state = router.leases.state
        calls = {name: getattr(state, name) for name in ("acquire", "release")}

        def probing(name: str) -> object:
            async def call(*args: object, **kwargs: object) -> object:
                result = await calls[name](*args, **kwargs)
                probe = await other.acquire(gpu, GiB, "b:2", 512 * MiB, 30.0)
                granted.append(probe is not None)
                return result
            return call

        for name in calls:
            setattr(state, name, probing(name))
        if refused:
            _add_council_d(router)  # 1 GiB in all: refused while the third router holds its quarter
            with pytest.raises(ReloadError, match="are leased elsewhere"):
                await router.reload()
        else:
            await router.reload()
        for name in calls:
            delattr(state, name)
        assert granted and not any(granted)
        [[held]] = router.leases.leases.values()
        assert (held.token == ours.token) is refused and await other.check_fence(gpu, held.token)
        assert await other.holders(gpu) == {router.leases.holder: 512 * MiB, "c:3": 256 * MiB}
        await router.leases.renew_once()
        assert router.lost == {} and list(router.leases.leases) == ["c"]
    finally:
        await router.leases.release_all()
        await router.state.close()
        await other.close()


@pytest.mark.parametrize("why", ["crashed-predecessor", "redis-away"])
async def test_a_council_refused_at_start_runs_once_its_slots_can_be_leased(tmp_path: Path, redis_url: str,
                                                                           prefix: str, why: str) -> None:
    """A router restarted after a crash is refused by its predecessor's leases until they expire; one started
    while Redis is away is refused until it returns. Either way its council never ran afterwards (nothing asked
    again), /readyz stayed 503 until someone reloaded. A renewal round now leases it and the council starts."""
    redis_server: subprocess.Popen[bytes] | None = None
    if why == "redis-away":
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
    else:
        url = redis_url
    router = _router(tmp_path)
    router.role = LocalRole(LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=("draft-mtp",)),
                            LifeConfig(run_dir=tmp_path / "run"))
    router.state = router.leases.state = RedisState(url, prefix=prefix)
    router.leases.ttl = 1.5  # a renewal round every 0.5 s
    gpu = f"{router.leases.host}/cpu"
    other = RedisState(url, prefix=prefix)
    try:
        if why == "crashed-predecessor":  # its leases live on for their TTL
            assert await other.acquire(gpu, GiB, f"{router.leases.host}:1", GiB, 1.0) is not None
        await router.start()
        ready, reasons = router.readiness()
        assert not ready and router.processes == {}
        assert reasons == [f"council c is not running: {router.plan.refused['c']}"]
        assert ("unreachable" if why == "redis-away" else "leased elsewhere") in reasons[0]
        if why == "redis-away":
            redis_server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
            wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                            text=True).stdout.strip() == "PONG", "redis-server")
        await until(lambda: sorted(router.processes) == ["c/0", "c/1"], 10, "council c's processes started")
        assert router.refused == {} and "c" in router.engines
        assert not any("not running" in reason for reason in router.readiness()[1])
        assert await other.holders(gpu) == {router.leases.holder: 512 * MiB}
    finally:
        await router.stop()
        await other.close()
        if redis_server is not None:
            redis_server.kill()
            redis_server.wait(timeout=10)
