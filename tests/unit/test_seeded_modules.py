"""Modules on the seeded path (SeededChain): masks confine the perturbation and the update,
scalars modules edit the logged scalars, update rules keep per-parameter buffers that replay
rebuilds bit for bit, and every other module is refused before anything runs."""

import math

import pytest
import torch
from test_seeded import (
    assert_bit_identical,
    lm_loss,
    mlp,
    mse_loss,
    regression,
    snapshot,
    tiny_gpt2,
    token_batch,
)

from bbzo.blackbox.zo import noise
from bbzo.blackbox.zo.modules import (
    antithetic,
    blockwise,
    clip_scalars,
    history_subspace,
    hizoo,
    low_rank,
    magnitude_mask,
    orthogonal,
    random_mask,
)
from bbzo.blackbox.zo.noise import chunk_noise, seeded_normal
from bbzo.blackbox.zo.seeded import SeededChain, SeededPerturbation, SeededZO, replay, zo_step
from bbzo.blackbox.zo.transforms import Module
from bbzo.blackbox.zo.update import adam, momentum, sign
from bbzo.errors import InputError


class Doubled(Module):
    """A scalars-only module the seeded path knows nothing about."""

    def scalars(self, s, state, ctx):
        return 2 * s, state


class SignOfDifference(Module):
    """Fitness-shaping-like: reads the probe's values at ``observe``, rebuilds the scalars."""

    def observe(self, probe, state, ctx):
        return probe

    def scalars(self, s, state, ctx):
        return (state.f_plus - state.f_minus).sign() / (2 * ctx.mu), state


class Centred(Module):
    """Subtracts the mean: any single scalar becomes 0 (like rank shaping)."""

    def scalars(self, s, state, ctx):
        return s - s.mean(), state


def params(pert):
    return {i: p.detach().clone() for i, _, p in pert.entries}


# --- masks -------------------------------------------------------------------------------

def test_random_mask_confines_update_and_perturbed_read():
    model, ids = tiny_gpt2(), token_batch()
    pert = SeededPerturbation(model)
    steps = SeededChain(pert, random_mask(0.25))
    before = params(pert)
    zo_step(pert, lm_loss(model, ids), lr=1e-2, rng=0, modules=steps)
    masks = steps.masks
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert abs(kept - 0.25) < 0.02                       # 39,168 Bernoulli(0.25) entries
    for i, _, p in pert.entries:
        changed = (p.detach() != before[i]).view(-1)
        assert not (changed & ~masks[i]).any()           # nothing moved outside the mask
        assert changed.sum() >= 0.9 * masks[i].sum()     # and (almost) everything inside
    # the perturbed read differs from θ exactly on the mask
    reads = {}
    with torch.no_grad(), pert.perturbed(5, 1e-2, masks):
        for i, name, _ in pert.entries:
            module_name, _, attr = name.rpartition(".")
            reads[i] = getattr(model.get_submodule(module_name), attr).detach().clone()
    for i, _, p in pert.entries:
        assert torch.equal((reads[i] != p.detach()).view(-1), masks[i])


def test_random_mask_is_redrawn_every_k_steps_and_replays():
    model, ids = tiny_gpt2(), token_batch()
    start = snapshot(model)
    opt = SeededZO(model, lr=1e-2, seed=3, modules=random_mask(0.1, every=2))
    drawn = []
    for _ in range(3):
        opt.step(lm_loss(model, ids))
        drawn.append({i: m.clone() for i, m in opt.chain.masks.items()})
    assert all(torch.equal(drawn[0][i], drawn[1][i]) for i in drawn[0])
    assert not all(torch.equal(drawn[0][i], drawn[2][i]) for i in drawn[0])
    other = tiny_gpt2()
    other.load_state_dict(start)
    replay(other, opt.log, random_mask(0.1, every=2))
    assert_bit_identical(other, snapshot(model))


def test_magnitude_mask_moves_only_the_smallest_entries():
    model, ids = tiny_gpt2(), token_batch()
    pert = SeededPerturbation(model, include=lambda name, p: p.ndim == 2)
    before = params(pert)
    zo_step(pert, lm_loss(model, ids), lr=1e-2, rng=1, modules=magnitude_mask(0.1))
    for i, _, p in pert.entries:
        flat = before[i].view(-1).abs()
        k = round(0.1 * flat.numel())
        threshold = flat.kthvalue(k).values
        changed = (p.detach() != before[i]).view(-1)
        assert changed.sum() > 0.9 * k
        assert (flat[changed] <= threshold).all()


# --- scalars -----------------------------------------------------------------------------

def test_clipping_clips_the_logged_scalars():
    x, y = regression()
    plain_model, clip_model = mlp(), mlp()
    plain = zo_step(plain_model, mse_loss(plain_model, x, y), lr=1e-2, q=4, rng=7)
    threshold = 0.5 * min(abs(s) for s in plain.scalars)
    clipped = zo_step(clip_model, mse_loss(clip_model, x, y), lr=1e-2, q=4, rng=7,
                      modules=clip_scalars(threshold))
    assert clipped.seeds == plain.seeds and clipped.loss_plus == plain.loss_plus
    assert clipped.scalars == tuple(max(-threshold, min(threshold, s)) for s in plain.scalars)
    assert all(abs(s) == threshold for s in clipped.scalars)
    # the update used the clipped scalars: replaying them on the start weights agrees
    check = mlp()
    replay(check, [clipped])
    assert_bit_identical(check, snapshot(clip_model))


def test_any_scalars_only_module_acts_and_one_that_zeroes_single_scalars_needs_q2():
    x, y = regression()
    model = mlp()
    start = mlp()
    plain = zo_step(start, mse_loss(start, x, y), q=2, rng=0)
    doubled = zo_step(model, mse_loss(model, x, y), q=2, rng=0, modules=Doubled())
    assert doubled.scalars == tuple(2 * s for s in plain.scalars)
    centred = zo_step(model, mse_loss(model, x, y), q=2, rng=0, modules=Centred())
    assert centred.scalars[0] == pytest.approx(-centred.scalars[1])
    assert centred.scalars[0] != 0
    snap = snapshot(model)
    calls = []
    with pytest.raises(InputError, match="q >= 2"):
        zo_step(model, lambda: calls.append(1) or 0.0, q=1, modules=Centred())
    with pytest.raises(InputError, match="q >= 2"):
        SeededZO(model, q=1, modules=Centred())
    assert not calls
    assert_bit_identical(model, snap)


def test_a_module_reading_the_probe_values_acts():
    x, y = regression()
    start, model = mlp(), mlp()
    plain = zo_step(start, mse_loss(start, x, y), q=3, rng=5, mu=1e-3)
    shaped = zo_step(model, mse_loss(model, x, y), q=3, rng=5, mu=1e-3,
                     modules=SignOfDifference())
    assert shaped.scalars == tuple(math.copysign(500.0, s) for s in plain.scalars)
    check = mlp()
    replay(check, [shaped])
    assert_bit_identical(check, snapshot(model))


def test_antithetic_is_the_central_form_already():
    x, y = regression()
    a, b = mlp(), mlp()
    ra = zo_step(a, mse_loss(a, x, y), lr=1e-2, q=2, rng=4)
    rb = zo_step(b, mse_loss(b, x, y), lr=1e-2, q=2, rng=4, modules=antithetic())
    assert ra.scalars == rb.scalars
    assert_bit_identical(b, snapshot(a))


def test_a_chain_acts_only_on_its_own_perturbation():
    model = mlp()
    steps = SeededChain(SeededPerturbation(model), momentum())
    with pytest.raises(InputError, match="another SeededPerturbation"):
        zo_step(SeededPerturbation(model), mse_loss(model, *regression()), modules=steps)


def test_bad_masks_raise_before_anything_moves():
    model = mlp()
    pert = SeededPerturbation(model)
    snap = snapshot(model)
    index, _, p = pert.entries[0]
    for masks in ({index: torch.ones(p.numel())}, {index: torch.ones(3, dtype=torch.bool)},
                  {99: torch.ones(p.numel(), dtype=torch.bool)}):
        with pytest.raises(InputError):
            pert.apply_update([1], [1.0], lr=1e-2, masks=masks)
        with pytest.raises(InputError), pert.perturbed(1, 1e-3, masks):
            pass
    assert_bit_identical(model, snap)


# --- update rules ------------------------------------------------------------------------

def estimate(pert, record, index):
    return sum(s * pert.noise(seed, index) for seed, s in zip(record.seeds, record.scalars,
                                                               strict=True)) / len(record.seeds)


def test_momentum_keeps_a_buffer_per_parameter():
    x, y = regression()
    model = mlp()
    pert = SeededPerturbation(model)
    start = params(pert)
    steps = SeededChain(pert, momentum(0.9))
    records = [zo_step(pert, mse_loss(model, x, y), lr=1e-2, q=2, rng=r, modules=steps)
               for r in range(2)]
    for i, _, p in pert.entries:
        m1 = estimate(pert, records[0], i)
        m2 = 0.9 * m1 + estimate(pert, records[1], i)
        torch.testing.assert_close(p.detach(), start[i] - 1e-2 * m1 - 1e-2 * m2,
                                   rtol=0, atol=1e-14)


def test_adam_first_step_moves_every_entry_by_lr():
    x, y = regression()
    model = mlp()
    pert = SeededPerturbation(model)
    start = params(pert)
    zo_step(pert, mse_loss(model, x, y), lr=1e-3, rng=2, modules=adam())
    for i, _, p in pert.entries:
        # m̂/√v̂ = g/|g| at t = 1 (up to eps = 1e-8 against |g| ≳ 1e-4)
        torch.testing.assert_close((p.detach() - start[i]).abs(),
                                   torch.full_like(p, 1e-3), rtol=1e-3, atol=0)


@pytest.mark.parametrize("rules", [[momentum(0.9)], [adam()], [sign()]],
                         ids=["momentum", "adam", "sign"])
def test_update_rules_replay_bit_identically(rules, tmp_path):
    model, ids = tiny_gpt2(), token_batch()
    start = snapshot(model)
    modules = [random_mask(0.5), clip_scalars(50.0), *rules]
    opt = SeededZO(model, lr=1e-3, q=2, seed=9, modules=modules)
    for _ in range(3):
        opt.step(lm_loss(model, ids))
    opt.save(tmp_path / "run.json")
    fresh = tiny_gpt2()
    fresh.load_state_dict(start)
    resumed = SeededZO.load(tmp_path / "run.json", fresh, modules=modules)
    assert_bit_identical(fresh, snapshot(model))
    # the buffers were rebuilt too: the next steps agree
    a, b = opt.step(lm_loss(model, ids)), resumed.step(lm_loss(fresh, ids))
    assert a.scalars == b.scalars
    assert_bit_identical(fresh, snapshot(model))
    other = tiny_gpt2()
    other.load_state_dict(start)
    with pytest.raises(InputError, match="modules"):
        SeededZO.load(tmp_path / "run.json", other, modules=modules[:2])


# --- refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize("module", [orthogonal(), low_rank((4, 4)), hizoo(), blockwise(8),
                                    history_subspace()],
                         ids=["orthogonal", "low_rank", "hizoo", "blockwise", "history"])
def test_other_modules_cannot_act_on_the_seeded_path(module):
    model = mlp()
    snap = snapshot(model)
    calls = []
    with pytest.raises(InputError, match=f"{type(module).__name__}.*cannot act on the seeded"):
        zo_step(model, lambda: calls.append(1) or 0.0, modules=[clip_scalars(1.0), module])
    with pytest.raises(InputError, match="cannot act on the seeded path"):
        SeededZO(model, modules=module)
    assert not calls
    assert_bit_identical(model, snap)


# --- the noise -----------------------------------------------------------------------------

def test_noise_does_not_depend_on_threads_or_dtype():
    n = 3 * (1 << 18) + 77
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = seeded_normal(11, 5, n)
        torch.set_num_threads(3)
        three = seeded_normal(11, 5, n)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)
    assert torch.equal(seeded_normal(11, 5, n, dtype=torch.float64), one.double())
    assert torch.equal(seeded_normal(11, 5, n, dtype=torch.bfloat16), one.bfloat16())


def test_tied_weights_are_made_once_per_perturbation(monkeypatch):
    model, ids = tiny_gpt2(), token_batch()
    pert = SeededPerturbation(model)
    made = []

    def counting(kind, seed, index, chunk, length, device, out=None):
        made.append(index)
        return chunk_noise(kind, seed, index, chunk, length, device, out)

    monkeypatch.setattr(noise, "chunk_noise", counting)
    with torch.no_grad(), pert.perturbed(1, 1e-3):
        model(ids)
    tied = [i for i, name, _ in pert.entries if name == "transformer.wte.weight"]
    assert made.count(tied[0]) == 1            # read by the embedding and by lm_head
    assert sorted(set(made)) == [i for i, _, _ in pert.entries]
    assert not pert._reads                     # the shared read is dropped after the block
