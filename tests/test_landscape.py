"""The landscape measures: against explicit Hessians, on known functions, and on real smoke run directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conadv_repro.config import config_from_overrides
from conadv_repro.engine.run import run_training
from conadv_repro.engine.trainer import Trainer
from conadv_repro.landscape import hessian, sharpness, slices
from conadv_repro.landscape.cli import main as landscape_main
from conadv_repro.landscape.objective import Objective, main_route_parameters, main_statistics
from conadv_repro.landscape.settings import POWER_MAX_ITERATIONS, POWER_TOLERANCE
from conadv_repro.model.split_bn import THREE_WAY, SplitBatchNorm2d, bn_route
from tests.helpers import call_main

# A smoke network at width 4 on the digits' own 8x8 pixels, so that every measure of 64 examples is cheap.
SMOKE = ["scale=smoke", "steps=4", "runtime.device=cpu", "runtime.wandb=disabled", "model.width=4",
         "model.input_size=8", "runtime.threads=1"]
SMALL = ["--examples", "64", "--micro-batch", "32", "--device", "cpu"]  # two micro-batches


def quiet(_line: str) -> None:
    pass


# ----------------------------------------------------------------------------------- a tiny network
class TinyNet(nn.Module):
    """conv 1->2 (3x3, no bias) -> split BN (main, aux, aug) -> ReLU -> mean -> fc 2->3: 31 main-route
    parameters (18 + 4 + 9), few enough for torch.autograd.functional.hessian."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False)
        self.bn = SplitBatchNorm2d(2, group_size=2, branches=THREE_WAY)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def tiny_problem(seed: int = 0) -> tuple[TinyNet, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        for branch in THREE_WAY:  # branches that differ, so that picking the wrong one would show
            bn = getattr(model.bn, branch)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    inputs = torch.randn(6, 1, 5, 5)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    # Micro-batches of 4 and 2: the HVP must weight them by their share of the sample.
    return model.eval(), [(inputs[:4], targets[:4]), (inputs[4:], targets[4:])]


def explicit_hessian(model: nn.Module, batches, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hessian of the mean loss over all examples in the main-route parameters, and those flattened."""
    named = main_route_parameters(model)
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    inputs = torch.cat([x for x, _ in batches])
    targets = torch.cat([y for _, y in batches])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        values, start = {}, 0
        for name, p in named:
            values[name] = theta[start : start + p.numel()].view_as(p)
            start += p.numel()
        with bn_route(model, "main", record=False):
            logits = torch.func.functional_call(model, values, (inputs,))
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)

    return torch.autograd.functional.hessian(loss, flat), flat


def unflatten(vector: torch.Tensor, like) -> list[torch.Tensor]:
    out, start = [], 0
    for p in like:
        out.append(vector[start : start + p.numel()].view_as(p).clone())
        start += p.numel()
    return out


def test_the_perturbed_parameters_are_conv_fc_and_the_main_bn_only():
    model, _ = tiny_problem()
    chosen = {id(p) for _, p in main_route_parameters(model)}
    expected = {id(model.conv.weight), id(model.bn.main.weight), id(model.bn.main.bias), id(model.fc.weight),
                id(model.fc.bias)}
    assert chosen == expected
    assert [name for name, _ in main_statistics(model)] == ["bn.main.running_mean", "bn.main.running_var"]


def test_hvp_power_iteration_trace_and_adaptive_match_the_explicit_hessian():
    model, batches = tiny_problem()
    objective = Objective(model, [p for _, p in main_route_parameters(model)], batches, label_smoothing=0.1)
    H, flat = explicit_hessian(model, batches, 0.1)
    assert H.shape == (31, 31)
    H = (H + H.T) / 2
    v = torch.randn(31, generator=torch.Generator().manual_seed(3))
    product = torch.cat([t.reshape(-1) for t in objective.hvp(unflatten(v, objective.params))])
    torch.testing.assert_close(product, H @ v, rtol=1e-4, atol=1e-6)

    eigenvalues = torch.linalg.eigvalsh(H.double())
    top = eigenvalues[eigenvalues.abs().argmax()].item()
    found = hessian.power_iteration(objective.hvp, objective.params, torch.Generator().manual_seed(1),
                                    max_iterations=POWER_MAX_ITERATIONS, tolerance=POWER_TOLERANCE)
    assert found.iterations <= POWER_MAX_ITERATIONS
    # Krylov-Weinstein: the reported residual bounds the distance to the nearest eigenvalue.
    assert (eigenvalues - found.value).abs().min().item() <= found.residual + 1e-6
    assert found.value == pytest.approx(top, rel=10 * POWER_TOLERANCE)

    trace = H.diagonal().sum().item()
    estimate = hessian.hutchinson_trace(objective.hvp, objective.params, torch.Generator().manual_seed(2), probes=16)
    assert abs(estimate.value - trace) <= 4 * estimate.stderr
    # Many probes, on the explicit matrix: the estimator itself closes in on the trace.
    many = hessian.hutchinson_trace(lambda z: [H @ z[0]], [flat], torch.Generator().manual_seed(2), probes=4000)
    assert abs(many.value - trace) <= 4 * many.stderr and many.stderr < estimate.stderr / 4

    scale = flat.abs()
    adaptive_eigenvalues = torch.linalg.eigvalsh((scale[:, None] * H * scale[None, :]).double())
    adaptive_top = adaptive_eigenvalues[adaptive_eigenvalues.abs().argmax()].item()
    adaptive = hessian.power_iteration(sharpness.adaptive_operator(objective.hvp, objective.params),
                                       objective.params, torch.Generator().manual_seed(1),
                                       max_iterations=POWER_MAX_ITERATIONS, tolerance=POWER_TOLERANCE)
    assert adaptive.value == pytest.approx(adaptive_top, rel=10 * POWER_TOLERANCE)


def test_power_iteration_keeps_the_sign_and_hutchinson_is_exact_on_a_diagonal():
    diagonal = torch.tensor([-5.0, 2.0, 1.0, 0.5])
    matvec = lambda v: [diagonal * v[0]]  # noqa: E731
    found = hessian.power_iteration(matvec, [diagonal], torch.Generator().manual_seed(0), max_iterations=200,
                                    tolerance=1e-9)
    assert found.value == pytest.approx(-5.0, rel=1e-6) and found.converged
    trace = hessian.hutchinson_trace(matvec, [diagonal], torch.Generator().manual_seed(0), probes=8)
    assert trace.value == pytest.approx(-1.5) and trace.stderr == 0.0  # z_i^2 = 1 for Rademacher z


def test_a_known_quadratics_slice_is_that_quadratic_and_the_weights_come_back():
    generator = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(3, 2, generator=generator))
    centre = torch.randn(6, generator=generator).double()
    m = torch.randn(6, 6, generator=generator).double()
    a = m @ m.T + torch.eye(6, dtype=torch.float64)

    def f(x: torch.Tensor) -> float:
        r = x.reshape(-1).double() - centre
        return float(0.5 * r @ a @ r)

    origin = w.detach().clone()
    direction = slices.filter_normalised_direction([w], torch.Generator().manual_seed(5))[0]
    torch.testing.assert_close(direction.norm(dim=1), origin.norm(dim=1))  # per output filter (row)
    rows = slices.slice_along(lambda: {"loss": f(w.detach())}, [w], [direction])
    alphas = np.array([row["alpha"] for row in rows])
    assert len(rows) == 21 and alphas[0] == -1.0 and alphas[-1] == 1.0 and alphas[10] == 0.0
    d = direction.reshape(-1).double()
    r0 = origin.reshape(-1).double() - centre
    expected = [float(f(origin)) + al * float(d @ a @ r0) + 0.5 * al**2 * float(d @ a @ d) for al in alphas]
    np.testing.assert_allclose([row["loss"] for row in rows], expected, rtol=1e-5)
    curvature, slope, value = np.polyfit(alphas, [row["loss"] for row in rows], 2)
    assert curvature == pytest.approx(0.5 * float(d @ a @ d), rel=1e-4)
    assert torch.equal(w.detach(), origin)
    bias = nn.Parameter(torch.ones(3))
    assert not slices.filter_normalised_direction([bias], torch.Generator().manual_seed(5))[0].any()
    end = torch.zeros(3)
    between = slices.slice_between(lambda: {"sum": float(bias.detach().sum())}, [bias], [end])
    assert between[0]["sum"] == 3.0 and between[-1]["sum"] == 0.0 and torch.equal(bias.detach(), torch.ones(3))


def test_epsilon_sharpness_finds_the_corner_of_a_linear_loss_and_puts_the_weights_back():
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.0]))
    weights = torch.tensor([1.0, 2.0, -1.0])

    def value() -> float:
        return float((weights * w.detach()).sum() + 3.0)

    def value_and_grad() -> tuple[float, list[torch.Tensor]]:
        return value(), [weights.clone()]

    origin = w.detach().clone()
    found = sharpness.epsilon_sharpness(value_and_grad, value, [w], epsilon=1e-3, steps=10)
    box = 1e-3 * (origin.abs() + 1)
    best = value() + float((weights.abs() * box).sum())
    assert found.max_loss == pytest.approx(best, rel=1e-4)  # float32 steps of 2 eps (|w| + 1) / 10
    assert found.value == pytest.approx(100 * (best - value()) / (1 + value()), rel=1e-4)
    assert torch.equal(w.detach(), origin)


# ----------------------------------------------------------------------------------- run directories
def train(path: Path, *extra: str) -> Path:
    record = run_training(config_from_overrides([*SMOKE, *extra]), path, log=quiet)
    assert record["status"] == "finished"
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("landscape")
    return {"a": train(root / "a"), "b": train(root / "b", "seed=1")}


def entries(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "landscape.json").read_text())["entries"]


def test_the_command_measures_a_smoke_run_repeats_bit_for_bit_and_reuses_its_entry(runs, tmp_path, capsys):
    run = shutil.copytree(runs["a"], tmp_path / "a")
    status, out, err = call_main(landscape_main, [str(run), *SMALL], capsys)
    assert status == 0, err
    for measure in ("eigenvalue", "trace", "adaptive", "epsilon", "slice"):
        assert f"landscape: {measure}: " in err and " s\n" in err  # a progress line with its time
        assert f"  {measure}" in out
    [first] = entries(run)
    assert first["environment"]["torch"] == torch.__version__
    assert first["environment"]["threads"] == torch.get_num_threads()
    assert first["key"]["checkpoint"]["file"] == "final.pt" and first["key"]["examples"] == 64
    assert first["sample"]["examples"] == 64 and first["run"]["last_lr"] > 0
    results = first["results"]
    assert results["eigenvalue"]["iterations"] <= 20 and np.isfinite(results["eigenvalue"]["residual"])
    assert np.isfinite(results["eigenvalue"]["ce"]["value"]) and results["trace"]["probes"] == 16
    assert results["epsilon"]["value"] >= 0 and len(results["slice"]["points"]) == 21
    assert results["slice"]["points"][10]["loss"] == first["sample"]["loss"]  # alpha 0 is the network itself

    status, _, err = call_main(landscape_main, [str(run), *SMALL, "--recompute"], capsys)
    assert status == 0, err
    [second] = entries(run)
    for part in ("key", "results", "sample", "weights", "run"):
        assert second[part] == first[part], part

    status, out, err = call_main(landscape_main, [str(run), *SMALL], capsys)
    assert status == 0 and "reusing entry" in err and "(reused)" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["eigenvalue", "trace", "adaptive", "epsilon",
                                                                   "slice"]
    assert "landscape: eigenvalue" not in err and len(entries(run)) == 1


def test_an_unfinished_run_is_measured_only_when_allowed_and_its_final_checkpoint_is_a_new_entry(
        tmp_path, capsys, monkeypatch):
    cfg = config_from_overrides([*SMOKE, "runtime.checkpoint_every=2"])
    original = Trainer.train_step

    def crash(self, step, micro_batches):
        if step == 3:
            raise RuntimeError("simulated crash")
        return original(self, step, micro_batches)

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(RuntimeError):
        run_training(cfg, tmp_path / "run", log=quiet)
    monkeypatch.setattr(Trainer, "train_step", original)
    run = tmp_path / "run"
    args = [str(run), *SMALL, "--measures", "slice"]
    status, _, err = call_main(landscape_main, args, capsys)
    assert status == 2 and err.count("\n") == 1 and "has not finished (status failed" in err
    assert "--allow-unfinished" in err and not (run / "landscape.json").exists()
    assert call_main(landscape_main, [*args, "--allow-unfinished"], capsys)[0] == 0
    assert [e["key"]["checkpoint"]["file"] for e in entries(run)] == ["step-00000002.pt"]

    assert run_training(cfg, run, log=quiet)["status"] == "finished"
    status, _, err = call_main(landscape_main, [*args, "--allow-unfinished"], capsys)
    assert status == 0 and "reusing" not in err
    status, _, err = call_main(landscape_main, args, capsys)
    assert status == 0 and "reusing entry" in err
    assert [(e["key"]["checkpoint"]["file"], e["key"]["checkpoint"]["step"]) for e in entries(run)] == [
        ("step-00000002.pt", 2), ("final.pt", 4)]


def test_the_line_between_two_runs_starts_and_ends_at_them(runs, tmp_path, capsys):
    a, b = shutil.copytree(runs["a"], tmp_path / "a"), shutil.copytree(runs["b"], tmp_path / "b")
    status, out, err = call_main(landscape_main, [str(a), *SMALL, "--measures", "slice", "--between", str(b)],
                                 capsys)
    assert status == 0, err
    assert "landscape: between: distance" in err and "  between" in out
    [entry] = entries(a)
    assert entry["key"]["between"]["run_id"] == json.loads((b / "config.json").read_text())["run_id"]
    points = entry["results"]["between"]["points"]
    assert [p["alpha"] for p in points][::10] == [0.0, 0.5, 1.0]
    assert call_main(landscape_main, [str(b), *SMALL, "--measures", "slice"], capsys)[0] == 0
    [other] = entries(b)
    assert points[0]["loss"] == entry["sample"]["loss"]
    # At alpha 1 the network is run B's, its running statistics included (B's aux BN is never used).
    assert points[-1]["loss"] == pytest.approx(other["sample"]["loss"], rel=1e-6, abs=1e-7)
    assert points[-1]["top1"] == other["sample"]["top1"]


def _edit_config(run_dir: Path, **model: object) -> None:
    path = run_dir / "config.json"
    stored = json.loads(path.read_text())
    stored["config"]["model"].update(model)
    path.write_text(json.dumps(stored))


@pytest.mark.parametrize("case, fragment", [
    ("unknown measure", "unknown measure 'hessian'; allowed: eigenvalue, trace, adaptive, epsilon, slice, between"),
    ("between without --between", "measure 'between' needs --between OTHER_RUN"),
    ("too many examples", "--examples 2000 is more than the 1257 training examples of data=digits"),
    ("another architecture", "is another architecture (model resnet8 width 8"),
    ("other data", "trained on other data (data=digits at 16 px"),
    ("final.pt does not verify", "does not verify"),
    ("final.pt missing", "is recorded finished but"),
    ("no run directory", "is not a run directory (no config.json)"),
    ("a foreign landscape.json", "is not a landscape file of this release"),
    ("one probe", "argument --probes: 1 is not allowed; it must be at least 2"),
])
def test_every_refusal_is_one_line_and_writes_nothing(runs, tmp_path, capsys, case, fragment):
    run = shutil.copytree(runs["a"], tmp_path / "a")
    args = [str(run), *SMALL, "--measures", "slice"]
    if case == "unknown measure":
        args[-1] = "slice,hessian"
    elif case == "between without --between":
        args[-1] = "between"
    elif case == "too many examples":
        args[2] = "2000"
    elif case in ("another architecture", "other data"):
        other = shutil.copytree(runs["b"], tmp_path / "b")
        _edit_config(other, **({"width": 8} if case == "another architecture" else {"input_size": 16}))
        args += ["--between", str(other)]
    elif case == "final.pt does not verify":
        final = run / "checkpoints" / "final.pt"
        data = bytearray(final.read_bytes())
        data[len(data) // 2] ^= 0xFF
        final.write_bytes(bytes(data))
    elif case == "final.pt missing":
        (run / "checkpoints" / "final.pt").unlink()
    elif case == "no run directory":
        args[0] = str(tmp_path)
    elif case == "a foreign landscape.json":
        (run / "landscape.json").write_text("[]")
    elif case == "one probe":
        args += ["--probes", "1"]
    status, _, err = call_main(landscape_main, args, capsys)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert not (run / "landscape.json").exists() or (run / "landscape.json").read_text() == "[]"
