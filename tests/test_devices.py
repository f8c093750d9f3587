"""The test harness gives 8 CPU devices, and sharded computation over them is correct."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def test_eight_cpu_devices():
    devices = jax.devices()
    assert len(devices) == 8
    assert {d.platform for d in devices} == {"cpu"}


def test_matmul_sharded_over_2x4_mesh():
    mesh = jax.make_mesh((2, 4), ("data", "tensor"))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 32), dtype=np.float32)
    b = rng.standard_normal((32, 16), dtype=np.float32)
    a_sh = jax.device_put(a, NamedSharding(mesh, P("data", None)))
    b_sh = jax.device_put(b, NamedSharding(mesh, P(None, "tensor")))
    out = jax.jit(jnp.matmul, out_shardings=NamedSharding(mesh, P("data", "tensor")))(a_sh, b_sh)
    assert out.sharding.spec == P("data", "tensor")
    assert len(out.addressable_shards) == 8
    assert out.addressable_shards[0].data.shape == (32, 4)
    np.testing.assert_allclose(np.asarray(out), a @ b, rtol=1e-5, atol=1e-5)
