"""ptynb.learn.train: the one training loop (checkpoints, resume, cancel, weights files)."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptynb.data import ValidationError  # noqa: E402
from ptynb.learn import TrainOptions, load_weights, save_weights, train  # noqa: E402


def _problem(seed=0):
    """A small regression with dropout (uses torch's global RNG) and sampled batches."""
    g = torch.Generator().manual_seed(123)
    X = torch.randn(64, 8, generator=g)
    w_true = torch.randn(8, 1, generator=g)
    Y = X @ w_true + 0.01 * torch.randn(64, 1, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))

    def loss_fn(m, ctx):
        idx = torch.as_tensor(ctx.rng.choice(64, 16, replace=False))
        noise = 1e-3 * torch.randn(16, 1, generator=ctx.generator)
        loss = ((m(X[idx].to(ctx.device)) - Y[idx] - noise) ** 2).mean()
        return loss, {"batch0": float(idx[0])}

    return model, loss_fn


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


def test_loss_falls_and_history():
    model, loss_fn = _problem()
    r = train(model, loss_fn, TrainOptions(iterations=200, learning_rate=1e-2), progress=False)
    h = r.history
    assert r.status == "complete" and r.iterations_done == 200
    assert list(h["iteration"][:3]) == [1, 2, 3] and len(h["loss"]) == 200
    assert np.median(h["loss"][-20:]) < 0.1 * np.median(h["loss"][:20])
    assert "batch0" in h and "lr" in h


def test_resume_after_cancel_is_bit_exact(tmp_path):
    opts = TrainOptions(iterations=60, learning_rate=5e-3, schedule="step", step_every=20,
                        checkpoint_every=7)
    model, loss_fn = _problem()
    full = train(model, loss_fn, opts, progress=False)
    w_full = _weights(full.model)

    ck = tmp_path / "run.ckpt"
    ev = threading.Event()
    model2, loss_fn2 = _problem()

    def stop_at_25(m, ctx, hist):
        if ctx.iteration + 1 >= 25:
            ev.set()

    part = train(model2, loss_fn2, opts, checkpoint=ck, cancel=ev, callback=stop_at_25,
                 callback_every=1, progress=False)
    assert part.status == "cancelled" and part.iterations_done == 25 and ck.exists()

    model3, loss_fn3 = _problem(seed=99)  # other initial weights: the checkpoint must win
    rest = train(model3, loss_fn3, opts, checkpoint=ck, progress=False)
    assert rest.resumed_from == 25 and rest.status == "complete"
    assert torch.equal(_weights(rest.model), w_full)
    np.testing.assert_array_equal(rest.history["loss"], full.history["loss"])
    np.testing.assert_array_equal(rest.history["lr"], full.history["lr"])


def test_caller_rng_and_determinism_flags_untouched():
    torch.manual_seed(5)
    before = torch.get_rng_state().clone()
    model, loss_fn = _problem()
    torch.set_rng_state(before)
    flags = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    train(model, loss_fn, TrainOptions(iterations=3), progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled()) == flags


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ck = tmp_path / "a.ckpt"
    model, loss_fn = _problem()
    train(model, loss_fn, TrainOptions(iterations=5, learning_rate=1e-3), checkpoint=ck, progress=False)
    model, loss_fn = _problem()
    with pytest.raises(ValidationError, match="learning_rate"):
        train(model, loss_fn, TrainOptions(iterations=5, learning_rate=2e-3), checkpoint=ck,
              progress=False)
    with pytest.raises(ValidationError, match="fingerprint"):
        train(model, loss_fn, TrainOptions(iterations=5, learning_rate=1e-3), checkpoint=ck,
              fingerprint="other data", progress=False)
    # resume=False starts afresh and overwrites
    r = train(model, loss_fn, TrainOptions(iterations=5, learning_rate=2e-3), checkpoint=ck,
              resume=False, progress=False)
    assert r.resumed_from == 0


def test_foreign_checkpoint_file(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_text("not a checkpoint")
    model, loss_fn = _problem()
    with pytest.raises(ValidationError, match="not a ptynb training checkpoint"):
        train(model, loss_fn, TrainOptions(iterations=2), checkpoint=bad, progress=False)


def test_nonfinite_loss_names_iteration():
    model, _ = _problem()

    def bad(m, ctx):
        return m(torch.ones(1, 8)).sum() * (float("nan") if ctx.iteration == 3 else 1.0)

    with pytest.raises(FloatingPointError, match="iteration 4"):
        train(model, bad, TrainOptions(iterations=10), progress=False)


def test_bad_options():
    with pytest.raises(ValidationError):
        TrainOptions(iterations=0)
    with pytest.raises(ValidationError):
        TrainOptions(learning_rate=0)
    with pytest.raises(ValidationError, match="betas"):
        TrainOptions(betas=(0.9, 1.5))


def test_poly_schedule_reaches_zero():
    model, loss_fn = _problem()
    r = train(model, loss_fn, TrainOptions(iterations=10, learning_rate=1e-3, schedule="poly",
                                           poly_power=1.0), progress=False)
    np.testing.assert_allclose(r.history["lr"], 1e-3 * (1 - np.arange(10) / 10), rtol=1e-6)


def test_weights_roundtrip_and_architecture_check(tmp_path):
    model, _ = _problem()
    arch = {"kind": "mlp", "width": 16, "patch": 32}
    p = save_weights(tmp_path / "w.pt", model, arch, meta={"command": "test"})
    payload = load_weights(p, architecture=arch)
    assert payload["meta"]["command"] == "test"
    m2, _ = _problem(seed=7)
    m2.load_state_dict(payload["state_dict"])
    assert torch.equal(_weights(m2), _weights(model))
    with pytest.raises(ValidationError, match="patch: 32 in the file, 64 expected"):
        load_weights(p, architecture={**arch, "patch": 64})
    with pytest.raises(ValidationError, match="does not exist"):
        load_weights(tmp_path / "none.pt")


def test_import_learn_does_not_import_torch():
    code = "import ptynb, ptynb.learn, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
