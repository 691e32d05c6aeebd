"""The shared noise table on the seeded path: chunks are slices of one table of normals at
hashed offsets (no noise made per step), with the statistics, estimator law, exact restore and
bit-identical replay of the generator path, and logs that refuse the other source."""

import json
import math

import numpy as np
import pytest
import torch
from test_seeded import (
    assert_bit_identical,
    directional_derivative,
    lm_loss,
    mlp,
    mse_loss,
    projected_gradient,
    regression,
    snapshot,
    tiny_gpt2,
    token_batch,
)

from bbzo.blackbox.zo import noise as noise_module
from bbzo.blackbox.zo.modules import clip_scalars, random_mask
from bbzo.blackbox.zo.noise import CHUNK, NoiseGenerator, NoiseTable, noise_source
from bbzo.blackbox.zo.seeded import (
    SeededChain,
    SeededPerturbation,
    SeededZO,
    replay,
    seeded_normal,
    zo_step,
)
from bbzo.blackbox.zo.update import adam
from bbzo.errors import InputError

TABLE = NoiseTable(size=1 << 20, seed=5)          # 4 MiB: small and fast for tests


def moments_within(z):
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)


# --- the table and its slices ------------------------------------------------------------

def test_table_is_standard_normal_and_cached():
    values = TABLE.values().double()
    assert values.shape == (TABLE.size,)
    moments_within(values)
    assert TABLE.values() is TABLE.values()                      # made once
    # another seed, another table (float32 normals coincide at ~1 position in 10⁷)
    assert NoiseTable(size=TABLE.size, seed=6).values().eq(TABLE.values()).sum() < 10


def test_a_chunk_is_a_view_of_the_table_at_its_hashed_offset():
    n = 2 * CHUNK + 1001                                         # three chunks, last short
    z = seeded_normal(7, 3, n, noise=TABLE)
    table = TABLE.values()
    for c, start in enumerate(range(0, n, CHUNK)):
        length = min(CHUNK, n - start)
        o = TABLE.offset(7, 3, c, length)
        assert 0 <= o <= TABLE.size - length
        assert torch.equal(z[start:start + length], table[o:o + length])
        view = TABLE.chunk(7, 3, c, length, "cpu")
        assert view.data_ptr() == table[o:].data_ptr()           # no copy: a view
    assert torch.equal(seeded_normal(7, 3, n, noise=TABLE, dtype=torch.float64), z.double())


def test_table_slices_of_tensors_and_seeds_are_nearly_uncorrelated():
    n = 1 << 17
    streams = torch.stack([seeded_normal(s, t, n, noise=TABLE, dtype=torch.float64)
                           for s, t in [(0, 0), (0, 1), (1, 0), (1, 1), (2**40 + 1, 0)]])
    for z in streams:
        moments_within(z)
    off = torch.corrcoef(streams)[~torch.eye(len(streams), dtype=torch.bool)]
    assert off.abs().max() < 5 / math.sqrt(n)
    assert not torch.equal(streams[0], streams[1])


def test_rge_cosine_law_holds_for_table_directions():
    # As test_estimators.test_rge_quality_law: on a quadratic the central difference is exact,
    # pgᵢ = zᵢ·∇f, so the RMS cosine of ĝ = Σ pgᵢ zᵢ / q with ∇f is √(q/(q+d)) for i.i.d.
    # N(0, 1) z; here z are the table slices a SeededPerturbation of a d-vector reads.
    d = 1000
    gen = torch.Generator().manual_seed(0)
    holder = torch.nn.Module()
    holder.x = torch.nn.Parameter(torch.randn(d, generator=gen, dtype=torch.float64))
    g = (1 + 9 * torch.rand(d, generator=gen, dtype=torch.float64)) * holder.x.detach()
    pert = SeededPerturbation(holder, noise=TABLE)
    for q, trials in [(1, 1500), (16, 300)]:
        cos = []
        for t in range(trials):
            z = [pert.noise(t * q + i, 0) for i in range(q)]
            est = sum(float(zi @ g) * zi for zi in z) / q
            cos.append(float(torch.nn.functional.cosine_similarity(est, g, dim=0)))
        assert math.sqrt(np.mean(np.square(cos))) == pytest.approx(math.sqrt(q / (q + d)),
                                                                   rel=0.12)


# --- the seeded path with the table -------------------------------------------------------

def test_table_projected_gradient_matches_autograd_directional_derivative():
    model = mlp()
    loss_fn = mse_loss(model, *regression())
    pert = SeededPerturbation(model, noise=TABLE)
    for seed in range(5):
        exact = directional_derivative(model, loss_fn, pert, seed)
        assert projected_gradient(pert, loss_fn, seed, 1e-4) == pytest.approx(exact, rel=1e-6)


def test_table_perturbations_restore_exactly_and_read_theta_plus_mu_z():
    model, ids = tiny_gpt2(), token_batch()
    snap = snapshot(model)
    assert SeededPerturbation(model, noise="table").source == NoiseTable(size=2**25, seed=0)
    pert = SeededPerturbation(model, noise=TABLE)
    with torch.no_grad():
        base = model(ids).logits
        with pert.perturbed(3, 1e-2):
            got = model(ids).logits
            for index, _, p in pert.entries:        # each read is θ + μ·(table slice)
                torch.testing.assert_close(pert._read(index, p), p + 1e-2 * pert.noise(3, index),
                                           rtol=1e-6, atol=1e-7)     # up to a fused add
        assert not torch.equal(got, base)
        assert torch.equal(model(ids).logits, base)
    assert_bit_identical(model, snap)


@pytest.mark.parametrize("source, makes_noise", [(TABLE, False), ("generator", True)])
def test_a_table_step_generates_no_noise(monkeypatch, source, makes_noise):
    model, ids = tiny_gpt2(), token_batch()
    pert = SeededPerturbation(model, noise=source)
    pert.noise(0, 0)                                   # the table is made before the step
    made, chunk_noise = [], noise_module.chunk_noise

    def counting(*args, **kwargs):
        made.append(args[0])
        return chunk_noise(*args, **kwargs)

    monkeypatch.setattr(noise_module, "chunk_noise", counting)
    zo_step(pert, lm_loss(model, ids), lr=1e-3, q=2, rng=0)
    assert bool(made) == makes_noise
    assert set(made) <= {"normal"}


def test_table_masks_confine_the_read_and_the_update():
    model, ids = tiny_gpt2(), token_batch()
    pert = SeededPerturbation(model, noise=TABLE)
    steps = SeededChain(pert, random_mask(0.25))
    before = {i: p.detach().clone() for i, _, p in pert.entries}
    record = zo_step(pert, lm_loss(model, ids), lr=1e-2, rng=0, modules=steps)
    moved = [(p.detach() != before[i]).view(-1) for i, _, p in pert.entries]
    assert sum(int(m.sum()) for m in moved) > 0.2 * sum(m.numel() for m in moved)
    for (i, _, _), changed in zip(pert.entries, moved, strict=True):
        assert not (changed & ~steps.masks[i]).any()         # nothing moved outside the mask
    fresh = SeededPerturbation(tiny_gpt2(), noise=TABLE)
    with torch.no_grad(), fresh.perturbed(record.seeds[0], 1e-2, steps.masks):
        for i, _, p in fresh.entries:
            shifted = (fresh._read(i, p) != p).view(-1)
            assert shifted.any() and not (shifted & ~steps.masks[i]).any()


def test_table_update_is_the_mean_of_the_seeds_views():
    model = mlp()
    pert = SeededPerturbation(model, noise=TABLE)
    before = [p.detach().clone() for _, _, p in pert.entries]
    pert.apply_update([3, 8], [0.5, -0.25], lr=0.1, weight_decay=0.2)
    for (index, _, p), p0 in zip(pert.entries, before, strict=True):
        step = (0.5 * pert.noise(3, index) - 0.25 * pert.noise(8, index)) / 2
        want = p0 * (1 - 0.1 * 0.2) - 0.1 * step
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-15)
        assert not torch.equal(pert.noise(3, index), seeded_normal(3, index, p.numel(),
                                                                   dtype=p.dtype).view_as(p))


def test_table_update_does_not_depend_on_threads():
    results, threads = [], torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            layer = torch.nn.Linear(700, 601)                    # 420,700 > CHUNK weights
            pert = SeededPerturbation(layer, noise=TABLE)
            pert.apply_update([1, 2, 3], [0.5, -1.0, 2.0], lr=1e-2, weight_decay=0.1)
            results.append(layer.weight.detach().clone())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_table_replay_is_bit_identical_with_a_module_chain(tmp_path):
    model, ids = tiny_gpt2(), token_batch()
    start = snapshot(model)
    modules = [clip_scalars(5.0), adam()]
    opt = SeededZO(model, lr=1e-3, q=2, seed=4, noise=TABLE, modules=modules)
    for _ in range(3):
        opt.step(lm_loss(model, ids))
    opt.save(tmp_path / "run.json")
    assert json.loads((tmp_path / "run.json").read_text())["noise"] == {
        "source": "table", "size": TABLE.size, "seed": TABLE.seed}

    fresh = tiny_gpt2()
    fresh.load_state_dict(start)
    resumed = SeededZO.load(tmp_path / "run.json", fresh, modules=[clip_scalars(5.0), adam()])
    assert resumed.perturbation.source == TABLE
    assert_bit_identical(fresh, snapshot(model))

    other = tiny_gpt2()
    other.load_state_dict(start)
    replay(other, opt.log, [clip_scalars(5.0), adam()], noise=TABLE)
    assert_bit_identical(other, snapshot(model))

    generated = tiny_gpt2()                      # the same log with the generator's noise
    generated.load_state_dict(start)
    replay(generated, opt.log, [clip_scalars(5.0), adam()])
    assert any(not torch.equal(generated.state_dict()[k], v)
               for k, v in snapshot(model).items())


def test_a_log_replays_only_with_its_own_noise_source(tmp_path):
    model = mlp()
    loss_fn = mse_loss(model, *regression())
    for noise, other in [(TABLE, "generator"), ("generator", TABLE),
                         (TABLE, NoiseTable(size=TABLE.size, seed=6))]:
        opt = SeededZO(model, lr=1e-3, noise=noise)
        opt.step(loss_fn)
        opt.save(tmp_path / "run.json")
        with pytest.raises(InputError, match="recorded with noise"):
            SeededZO.load(tmp_path / "run.json", mlp(), noise=other)
        with pytest.raises(InputError, match="differs from this SeededPerturbation"):
            replay(opt.perturbation, opt.log, noise=other)
        with pytest.raises(InputError, match="differs from this SeededPerturbation"):
            zo_step(opt.perturbation, loss_fn, noise=other)


def test_an_old_generator_log_without_a_noise_field_still_replays(tmp_path):
    model, ids = tiny_gpt2(), token_batch()
    start = snapshot(model)
    opt = SeededZO(model, lr=1e-3, q=2, seed=1)
    for _ in range(2):
        opt.step(lm_loss(model, ids))
    opt.save(tmp_path / "run.json")
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc.pop("noise") == {"source": "generator"}
    (tmp_path / "old.json").write_text(json.dumps(doc))
    fresh = tiny_gpt2()
    fresh.load_state_dict(start)
    resumed = SeededZO.load(tmp_path / "old.json", fresh)
    assert resumed.perturbation.source == NoiseGenerator()
    assert_bit_identical(fresh, snapshot(model))


@pytest.mark.parametrize("noise", ["tabel", None, 3, {"source": "table"},
                                   {"source": "table", "size": 1 << 20, "seed": 0, "x": 1}])
def test_bad_noise_is_refused_before_anything_runs(noise):
    model = mlp()
    snap = snapshot(model)
    with pytest.raises(InputError, match="noise must be"):
        SeededZO(model, noise=noise)
    with pytest.raises(InputError, match="noise must be"):
        seeded_normal(0, 0, 4, noise=noise)
    assert_bit_identical(model, snap)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


@pytest.mark.parametrize("kwargs", [{"size": CHUNK - 1}, {"size": 2.0**20}, {"seed": -1},
                                    {"seed": 2**64}])
def test_bad_table_parameters_raise_input_error(kwargs):
    with pytest.raises(InputError):
        NoiseTable(**kwargs)


def test_noise_source_reads_its_own_config():
    for source in (NoiseGenerator(), TABLE):
        assert noise_source(source.config) == source
