"""Self-normalizing networks (Klambauer et al. 2017), measured on MNIST.

Four parts, each a set of resumable cells:

(a) `moments`: mean and variance of every layer's activations in 32- and 64-layer
    fully connected nets on a real, standardised MNIST batch, at initialisation and after
    a short training run, for SELU + LeCun-normal against ReLU + He, ReLU + PyTorch's
    default init, tanh, ELU and sigmoid (one width for all).
(b) `moment_map`: the paper's map g: (mu, nu) -> (mu~, nu~) of the mean and variance of
    SELU(z), z ~ N(mu * omega, nu * tau) (Eq. 4 and 5, implemented here from the closed
    form and checked against quadrature and Monte Carlo), iterated from a grid of
    starting points; its Jacobian at (0, 1) by finite differences against the paper's
    spectral norm 0.7877; alpha and lambda solved from g(0, 1) = (0, 1) against the
    published constants and torch's nn.SELU.
(c) `fig1`: the paper's Fig. 1 on MNIST: training loss against steps of 8-, 16- and
    32-layer SNNs and BatchNorm-ReLU nets of the same shape, same optimizer, learning rate
    and steps for both, over seeds.
(d) `dropout`: AlphaDropout against ordinary Dropout in a SELU net: (mean, variance) of
    every layer in train mode.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from zoo.experiments.base import Context, rounded
from zoo.experiments.callbacks import LossEvery
from zoo.fit import fit
from zoo.models import TrainRecipe
from zoo.models.layers import Normalize

log = logging.getLogger(__name__)

CLAIM = (
    "SELU activations with LeCun-normal weights keep every layer's activations near zero "
    "mean and unit variance (a stable, attracting fixed point of the moment map), so deep "
    "plain nets train as smoothly as or better than BatchNorm nets, and AlphaDropout keeps "
    "that property where ordinary Dropout does not."
)
SOURCE = (
    "Klambauer, Unterthiner, Mayr, Hochreiter 2017, 'Self-Normalizing Neural Networks' "
    "(NeurIPS), Sec. 2-3 (moment map, Eq. 4-5, Theorem 1, alpha-dropout), Fig. 1 (MNIST)"
)

# Klambauer et al. 2017, Eq. 14: alpha_01 and lambda_01, the SELU constants for which
# (0, 1) is the fixed point of the moment map with normalised weights (omega=0, tau=1).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946
# Klambauer et al. 2017, Sec. 3 ("Stable and attracting fixed point (0, 1) for normalized
# weights"): the spectral norm of the Jacobian of g at (0, 1), omega=0, tau=1.
PAPER_JACOBIAN_NORM = 0.7877

Activation = Literal["selu", "relu_he", "relu_default", "tanh", "elu", "sigmoid"]
ACTIVATIONS: tuple[Activation, ...] = (
    "selu",
    "relu_he",
    "relu_default",
    "tanh",
    "elu",
    "sigmoid",
)
LABELS = {
    "selu": "SELU + LeCun normal",
    "relu_he": "ReLU + He normal",
    "relu_default": "ReLU + PyTorch default",
    "tanh": "tanh + LeCun normal",
    "elu": "ELU + LeCun normal",
    "sigmoid": "sigmoid + LeCun normal",
}
# "Near (0, 1)": the band a verdict asks a layer's (mean, variance) to stay in.
MEAN_BAND, VAR_BAND = 0.25, (0.5, 2.0)


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: int = Field(3, ge=1, description="seeds of (c) and (d); (a) uses seed 0")
    width: int = Field(256, description="hidden width of every net (paper's Fig. 1: 784)")
    batch_size: int = 128
    # One recipe for every trained net, as in the paper's Fig. 1: plain SGD, constant lr.
    # The paper's lr 1e-5 moves nothing in a few hundred steps; 0.01 is plain SGD's
    # usual start, chosen once, not tuned.
    lr: float = 0.01
    probe_images: int = Field(1000, description="MNIST training images the moments are over")
    # (a)
    moment_depths: tuple[int, ...] = (32, 64)
    moment_steps: int = Field(200, description="the 'short training' of (a)")
    # (b)
    map_mu0: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    map_nu0: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 3.0)
    map_iterations: int = 60
    monte_carlo_samples: int = 2_000_000
    # (c)
    fig1_depths: tuple[int, ...] = (8, 16, 32)
    fig1_steps: int = 1000
    loss_every: int = 10
    # (d)
    dropout_depth: int = 32
    dropout_rates: tuple[float, ...] = (0.05, 0.1, 0.2)


def make_config(quick: bool, seeds: int | None) -> Config:
    if quick:
        config = Config(
            seeds=1,
            width=64,
            probe_images=256,
            moment_depths=(32,),
            moment_steps=10,
            monte_carlo_samples=200_000,
            fig1_depths=(8, 16),
            fig1_steps=30,
            loss_every=5,
            dropout_depth=16,
            dropout_rates=(0.1,),
        )
    else:
        config = Config()
    return config.model_copy(update={"seeds": seeds}) if seeds else config


# ----------------------------------------------------------------------------- (b) theory


def moment_map(
    mu: float, nu: float, omega: float = 0.0, tau: float = 1.0, alpha: float = SELU_ALPHA
) -> tuple[float, float, float]:
    """(mean, variance, second moment) of SELU(z) with z ~ N(mu * omega, nu * tau).

    Klambauer et al. 2017, Eq. 4 (mu~) and Eq. 5 (xi~, the second moment; nu~ = xi~ -
    mu~^2), with lambda = 1 scaled out: the result is for lambda = SELU_LAMBDA.
    """
    lam = SELU_LAMBDA
    m, v = mu * omega, nu * tau  # the pre-activation's mean and variance
    s = math.sqrt(2 * v)
    gauss = math.sqrt(2 / math.pi) * math.sqrt(v) * math.exp(-m * m / (2 * v))
    mean = (
        0.5
        * lam
        * (
            m * math.erf(m / s)
            + alpha * math.exp(m + v / 2) * math.erfc((m + v) / s)
            - alpha * math.erfc(m / s)
            + gauss
            + m
        )
    )
    second = (
        0.5
        * lam**2
        * (
            (m * m + v) * (2 - math.erfc(m / s))
            + alpha**2
            * (
                -2 * math.exp(m + v / 2) * math.erfc((m + v) / s)
                + math.exp(2 * (m + v)) * math.erfc((m + 2 * v) / s)
                + math.erfc(m / s)
            )
            + m * gauss
        )
    )
    return mean, second - mean * mean, second


def selu(x: torch.Tensor) -> torch.Tensor:
    return SELU_LAMBDA * F.elu(x, alpha=SELU_ALPHA)


def moment_map_quadrature(mu: float, nu: float, omega: float = 0.0, tau: float = 1.0) -> tuple:
    """The same moments by numerical integration (trapezoid on +-12 sd, float64)."""
    m, sd = mu * omega, math.sqrt(nu * tau)
    z = np.linspace(m - 12 * sd, m + 12 * sd, 200_001)
    density = np.exp(-((z - m) ** 2) / (2 * sd * sd)) / (sd * math.sqrt(2 * math.pi))
    y = SELU_LAMBDA * np.where(z > 0, z, SELU_ALPHA * np.expm1(np.minimum(z, 0)))
    dz = z[1] - z[0]

    def integral(f: np.ndarray) -> float:  # the trapezoid rule
        return float((f.sum() - (f[0] + f[-1]) / 2) * dz)

    mean, second = integral(y * density), integral(y * y * density)
    return mean, second - mean * mean, second


def moment_map_monte_carlo(
    mu: float, nu: float, omega: float = 0.0, tau: float = 1.0, samples: int = 1_000_000
) -> tuple[float, float, float]:
    """The same moments from `samples` draws (float64, seeded)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(samples, generator=gen, dtype=torch.float64) * math.sqrt(nu * tau)
    y = selu(z + mu * omega)
    mean, second = float(y.mean()), float((y * y).mean())
    return mean, second - mean * mean, second


def jacobian(mu: float = 0.0, nu: float = 1.0, h: float = 1e-5, **kw: float) -> np.ndarray:
    """d(mu~, nu~)/d(mu, nu) by central differences (error O(h^2) ~ 1e-10 here)."""
    columns = []
    for dmu, dnu in ((h, 0.0), (0.0, h)):
        plus = np.array(moment_map(mu + dmu, nu + dnu, **kw)[:2])
        minus = np.array(moment_map(mu - dmu, nu - dnu, **kw)[:2])
        columns.append((plus - minus) / (2 * h))
    return np.stack(columns, axis=1)


def solve_selu_constants() -> tuple[float, float]:
    """alpha and lambda from g(0, 1) = (0, 1) with omega=0, tau=1 (the paper's Eq. 4-5 at
    z ~ N(0, 1)): the mean equation fixes alpha alone, the second moment then lambda."""
    # mu~ = 0:  alpha * (1 - e^(1/2) erfc(1/sqrt 2)) = sqrt(2/pi)
    alpha = math.sqrt(2 / math.pi) / (1 - math.exp(0.5) * math.erfc(1 / math.sqrt(2)))
    # xi~ = 1 with lambda scaled out of moment_map's second moment
    second_at_lambda_1 = moment_map(0.0, 1.0, alpha=alpha)[2] / SELU_LAMBDA**2
    return alpha, 1 / math.sqrt(second_at_lambda_1)


def iterate_map(mu0: float, nu0: float, iterations: int) -> list[list[float]]:
    path = [[mu0, nu0]]
    for _ in range(iterations):
        mean, var, _ = moment_map(*path[-1])
        path.append([mean, var])
    return path


def theory(config: Config) -> dict[str, Any]:
    fixed = moment_map(0.0, 1.0)
    jac = jacobian()
    alpha, lam = solve_selu_constants()
    x = torch.linspace(-6, 6, 10_001, dtype=torch.float64)
    torch_gap = float((nn.SELU()(x) - selu(x)).abs().max())
    paths = {}
    for mu0 in config.map_mu0:
        for nu0 in config.map_nu0:
            path = iterate_map(mu0, nu0, config.map_iterations)
            dist = [math.hypot(p[0], p[1] - 1) for p in path]
            reached = next((i for i, d in enumerate(dist) if d < 1e-3), None)
            paths[f"{mu0},{nu0}"] = {"path": path, "distance": dist, "within_1e-3_at": reached}
    # Closed form against quadrature and Monte Carlo, on the grid and off omega=0.
    checks = []
    points = [(0.0, 1.0, 0.0, 1.0), (0.0, 2.0, 0.0, 1.0), (0.5, 1.5, 1.0, 1.0)]
    points += [(-0.3, 0.6, 1.0, 1.0), (0.1, 0.9, 0.5, 1.2)]
    for mu, nu, omega, tau in points:
        closed = moment_map(mu, nu, omega, tau)
        quad = moment_map_quadrature(mu, nu, omega, tau)
        mc = moment_map_monte_carlo(mu, nu, omega, tau, config.monte_carlo_samples)
        checks.append(
            {
                "mu": mu,
                "nu": nu,
                "omega": omega,
                "tau": tau,
                "closed_form": closed[:2],
                "quadrature": quad[:2],
                "monte_carlo": mc[:2],
            }
        )
    return {
        "fixed_point": list(fixed[:2]),
        "fixed_point_error": math.hypot(fixed[0], fixed[1] - 1),
        "jacobian": jac.tolist(),
        "jacobian_spectral_norm": float(np.linalg.norm(jac, 2)),
        "paper_jacobian_norm": PAPER_JACOBIAN_NORM,
        "alpha_solved": alpha,
        "lambda_solved": lam,
        "alpha_paper": SELU_ALPHA,
        "lambda_paper": SELU_LAMBDA,
        "torch_selu_max_abs_diff": torch_gap,
        "paths": paths,
        "checks": checks,
    }


# ----------------------------------------------------------------------- nets and probes


def lecun_normal_(linear: nn.Linear) -> None:
    # Klambauer et al. 2017, Sec. 3: weights with mean 0 and variance 1/fan_in give
    # omega = 0, tau = 1 in expectation.
    nn.init.normal_(linear.weight, std=math.sqrt(1 / linear.in_features))
    nn.init.zeros_(linear.bias)


def make_layer(kind: Activation) -> nn.Module:
    return {
        "selu": nn.SELU,
        "relu_he": nn.ReLU,
        "relu_default": nn.ReLU,
        "tanh": nn.Tanh,
        "elu": nn.ELU,
        "sigmoid": nn.Sigmoid,
    }[kind]()


def plain_net(
    kind: Activation,
    depth: int,
    width: int,
    *,
    batchnorm: bool = False,
    dropout: Literal["none", "dropout", "alpha"] = "none",
    rate: float = 0.0,
) -> nn.Sequential:
    """Standardise, flatten, `depth` x (Linear [-> BatchNorm] -> activation [-> dropout]),
    Linear head. Initialisation per `kind`; BatchNorm nets keep PyTorch's default."""
    layers: list[nn.Module] = [Normalize(), nn.Flatten()]
    fan_in = 28 * 28
    for _ in range(depth):
        linear = nn.Linear(fan_in, width)
        if kind == "relu_he" and not batchnorm:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
        elif kind != "relu_default" and not batchnorm:
            lecun_normal_(linear)
        layers += [linear, *([nn.BatchNorm1d(width)] if batchnorm else []), make_layer(kind)]
        if dropout == "dropout":
            layers.append(nn.Dropout(rate))
        elif dropout == "alpha":
            layers.append(nn.AlphaDropout(rate))
        fan_in = width
    head = nn.Linear(fan_in, 10)
    if kind != "relu_default" and not batchnorm:
        lecun_normal_(head)
    layers.append(head)
    return nn.Sequential(*layers)


@torch.no_grad()
def layer_moments(model: nn.Sequential, batch: torch.Tensor, of: type) -> list[list[Any]]:
    """[mean, variance] of what every module of type `of` emits on `batch`, pooled over
    images and units, the model's mode (train/eval) kept."""
    seen: list[torch.Tensor] = []
    modules = [m for m in model if isinstance(m, of)]
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o.double())) for m in modules]
    try:
        model(batch.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return [[rounded(float(o.mean())), rounded(float(o.var()))] for o in seen]


def sgd(config: Config) -> TrainRecipe:
    return TrainRecipe(
        optimizer="sgd",
        momentum=0.0,
        lr=config.lr,
        batch_size=config.batch_size,
        schedule="constant",
    )


def probe_batch(context: Context, config: Config) -> torch.Tensor:
    # The last images of the training split: a fixed, real batch for every net.
    return context.train[0][-config.probe_images :]


# ----------------------------------------------------------------------- (a) moments


def moments_cell(kind: Activation, depth: int, config: Config, context: Context) -> dict:
    torch.manual_seed(0)
    model = plain_net(kind, depth, config.width)
    batch = probe_batch(context, config)
    act = type(make_layer(kind))
    at_init = layer_moments(model, batch, act)
    losses = LossEvery(max(1, config.moment_steps // 10))
    history = fit(
        model,
        context.train,
        sgd(config),
        max_steps=config.moment_steps,
        seed=0,
        device=context.device,
        callbacks=[losses],
        progress=context.progress,
        name=f"{kind}-{depth}",
    )
    model.cpu()
    return {
        "init": at_init,
        "trained": layer_moments(model, batch, act),
        "steps": history.steps,
        "diverged_at": history.diverged_at,
        "loss": losses.points,
    }


# ------------------------------------------------------------------------- (c) Fig. 1


def fig1_cell(family: str, depth: int, seed: int, config: Config, context: Context) -> dict:
    torch.manual_seed(seed)
    if family == "snn":  # the paper's SNN: SELU + LeCun normal, no dropout in Fig. 1
        model = plain_net("selu", depth, config.width)
    else:  # the paper's BatchNorm baseline: Linear -> BN -> ReLU
        model = plain_net("relu_default", depth, config.width, batchnorm=True)
    losses = LossEvery(config.loss_every)
    history = fit(
        model,
        context.train,
        sgd(config),
        max_steps=config.fig1_steps,
        seed=seed,
        device=context.device,
        callbacks=[losses],
        progress=context.progress,
        name=f"{family}-{depth}-s{seed}",
    )
    return {"loss": losses.points, "steps": history.steps, "diverged_at": history.diverged_at}


# ------------------------------------------------------------------------- (d) dropout


def dropout_cell(kind: str, rate: float, seed: int, config: Config, context: Context) -> list:
    torch.manual_seed(seed)
    model = plain_net(
        "selu", config.dropout_depth, config.width, dropout=kind, rate=rate
    ).train()  # dropout acts only in train mode: that is the mode the claim is about
    of = {"none": nn.SELU, "dropout": nn.Dropout, "alpha": nn.AlphaDropout}[kind]
    return layer_moments(model, probe_batch(context, config), of)


# ----------------------------------------------------------------------------- run


def run(config: Config, context: Context) -> dict[str, Any]:
    results: dict[str, Any] = {
        "theory": context.cell("theory", lambda: theory(config)),
        "moments": {},
        "fig1": {},
        "dropout": {},
    }
    for depth in config.moment_depths:
        for kind in ACTIVATIONS:
            key = f"moments/{kind}/{depth}"
            results["moments"][key.removeprefix("moments/")] = context.cell(
                key, lambda k=kind, d=depth: moments_cell(k, d, config, context)
            )
    for depth in config.fig1_depths:
        for family in ("snn", "bn"):
            for seed in range(config.seeds):
                key = f"fig1/{family}/{depth}/{seed}"
                results["fig1"][key.removeprefix("fig1/")] = context.cell(
                    key, lambda f=family, d=depth, s=seed: fig1_cell(f, d, s, config, context)
                )
    for rate in config.dropout_rates:
        for kind in ("none", "dropout", "alpha"):
            for seed in range(config.seeds):
                key = f"dropout/{kind}/{rate}/{seed}"
                results["dropout"][key.removeprefix("dropout/")] = context.cell(
                    key, lambda k=kind, r=rate, s=seed: dropout_cell(k, r, s, config, context)
                )
    return results


# ----------------------------------------------------------------------------- summaries


def in_band(mean: float | None, var: float | None) -> bool:
    if mean is None or var is None:
        return False
    return abs(mean) <= MEAN_BAND and VAR_BAND[0] <= var <= VAR_BAND[1]


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "NaN"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def _depths(results: dict, part: str) -> list[int]:
    return sorted({int(k.split("/")[1]) for k in results[part]})


def last_layer(results: dict, kind: str, depth: int, state: str) -> list:
    return results["moments"][f"{kind}/{depth}"][state][-1]


def _seeds(results: dict, prefix: str) -> list[str]:
    return sorted(k for k in results if k.startswith(prefix))


def fig1_summary(results: dict, family: str, depth: int) -> dict[str, Any]:
    """Final loss (mean of the last 10% of recorded points) per seed, and roughness: the
    standard deviation of the step-to-step change of log loss over the second half."""
    finals, rough, diverged = [], [], 0
    for key in _seeds(results["fig1"], f"{family}/{depth}/"):
        cell = results["fig1"][key]
        points = [p[1] for p in cell["loss"]]
        if cell["diverged_at"] is not None or not points:
            diverged += 1
            continue
        tail = points[-max(1, len(points) // 10) :]
        finals.append(sum(tail) / len(tail))
        half = np.log(points[len(points) // 2 :])
        rough.append(float(np.std(np.diff(half))) if len(half) > 2 else 0.0)
    return {
        "final": finals,
        "final_mean": float(np.mean(finals)) if finals else None,
        "roughness": float(np.mean(rough)) if rough else None,
        "diverged": diverged,
    }


def dropout_last(results: dict, kind: str, rate: float) -> tuple[float | None, float | None]:
    """Last layer's (mean, variance), averaged over seeds."""
    rows = [results["dropout"][k][-1] for k in _seeds(results["dropout"], f"{kind}/{rate}/")]
    if any(None in r for r in rows):
        return None, None
    return float(np.mean([r[0] for r in rows])), float(np.mean([r[1] for r in rows]))


def _rates(results: dict) -> list[float]:
    return sorted({float(k.split("/")[1]) for k in results["dropout"]})


# ----------------------------------------------------------------------------- verdicts


def verdicts(results: dict[str, Any]) -> list[str]:
    lines = []
    # (a)
    for depth in _depths(results, "moments"):
        parts, others = [], []
        for kind in ACTIVATIONS:
            init = last_layer(results, kind, depth, "init")
            trained = last_layer(results, kind, depth, "trained")
            parts.append(
                f"{kind} ({fmt(init[0])}, {fmt(init[1])}) -> ({fmt(trained[0])}, {fmt(trained[1])})"
            )
            if kind != "selu" and in_band(*init) and in_band(*trained):
                others.append(kind)
        cell = results["moments"][f"selu/{depth}"]
        selu_ok = all(in_band(*m) for m in cell["init"] + cell["trained"])
        spread = {
            state: (
                max(abs(m[0]) for m in cell[state]),
                min(m[1] for m in cell[state]),
                max(m[1] for m in cell[state]),
            )
            for state in ("init", "trained")
        }
        lines.append(
            f"(a) {depth} layers, last layer (mean, var) at init -> after "
            f"{cell['steps']} SGD steps: {'; '.join(parts)}. SELU over all layers: max |mean| "
            f"{fmt(spread['init'][0])}, var {fmt(spread['init'][1])}-{fmt(spread['init'][2])}"
            f" at init; max |mean| {fmt(spread['trained'][0])}, var "
            f"{fmt(spread['trained'][1])}-{fmt(spread['trained'][2])} after training, so in "
            f"|mean|<={MEAN_BAND}, var in {list(VAR_BAND)} at every layer: "
            f"{'yes' if selu_ok else 'NO'}; others in that band at the last layer both times: "
            f"{others or 'none'}. "
            + ("Supports the claim." if selu_ok else "Does not support the claim.")
        )
    # (b)
    th = results["theory"]
    converged = [p["within_1e-3_at"] for p in th["paths"].values()]
    all_in = all(c is not None for c in converged)
    worst = max((c for c in converged if c is not None), default=None)
    gap = abs(th["jacobian_spectral_norm"] - th["paper_jacobian_norm"])
    mc_err = max(
        max(abs(c["closed_form"][i] - c["monte_carlo"][i]) for i in (0, 1)) for c in th["checks"]
    )
    lines.append(
        f"(b) g(0, 1) = ({th['fixed_point'][0]:.1e}, {th['fixed_point'][1]:.12f}); Jacobian "
        f"at (0, 1) {np.round(th['jacobian'], 6).tolist()}, spectral norm "
        f"{th['jacobian_spectral_norm']:.6f} vs the paper's {th['paper_jacobian_norm']} "
        f"(|diff| {gap:.1e}); {sum(c is not None for c in converged)}/{len(converged)} grid "
        f"paths within 1e-3 of (0, 1) (slowest after {worst} iterations); alpha, lambda "
        f"solved from g(0,1)=(0,1): {th['alpha_solved']:.12f}, {th['lambda_solved']:.12f} "
        f"(paper {SELU_ALPHA:.12f}, {SELU_LAMBDA:.12f}); torch nn.SELU max |diff| "
        f"{th['torch_selu_max_abs_diff']:.1e}; closed form vs Monte Carlo max |diff| "
        f"{mc_err:.1e}. "
        + (
            "Supports the claim."
            if all_in and gap < 1e-3 and th["fixed_point_error"] < 1e-3
            else "Does not fully support the claim."
        )
    )
    # (c)
    parts, snn_lower, snn_smoother, n = [], 0, 0, 0
    for depth in _depths(results, "fig1"):
        snn, bn = fig1_summary(results, "snn", depth), fig1_summary(results, "bn", depth)
        parts.append(
            f"{depth} layers SNN {fmt(snn['final_mean'])} (roughness {fmt(snn['roughness'])}"
            f", {snn['diverged']} diverged) vs BN {fmt(bn['final_mean'])} (roughness "
            f"{fmt(bn['roughness'])}, {bn['diverged']} diverged)"
        )
        n += 1
        if snn["final_mean"] is not None and (
            bn["final_mean"] is None or snn["final_mean"] < bn["final_mean"]
        ):
            snn_lower += 1
        if snn["roughness"] is not None and (
            bn["roughness"] is None or snn["roughness"] < bn["roughness"]
        ):
            snn_smoother += 1
    verdict = (
        "Supports the claim (SNN lower and smoother at every depth)."
        if snn_lower == n and snn_smoother == n
        else f"Partly supports the claim: SNN lower at {snn_lower}/{n} depths, smoother at "
        f"{snn_smoother}/{n}; where not, our figure disagrees with the paper's Fig. 1."
        if snn_lower or snn_smoother
        else "Does not support the claim: BN nets train lower and smoother here, unlike the "
        "paper's Fig. 1."
    )
    lines.append(
        "(c) final training loss (mean of seeds' last 10% of steps): "
        + "; ".join(parts)
        + f". {verdict}"
    )
    # (d)
    parts, alpha_better = [], 0
    rates = _rates(results)
    for rate in rates:
        d, a = dropout_last(results, "dropout", rate), dropout_last(results, "alpha", rate)
        parts.append(
            f"p={rate}: Dropout ({fmt(d[0])}, {fmt(d[1])}), AlphaDropout ({fmt(a[0])}, {fmt(a[1])})"
        )
        if a[1] is not None and (
            d[1] is None or abs(a[1] - 1) + abs(a[0]) < abs(d[1] - 1) + abs(d[0])
        ):
            alpha_better += 1
    lines.append(
        f"(d) last-layer (mean, var) in train mode: {'; '.join(parts)}. AlphaDropout nearer "
        f"(0, 1) at {alpha_better}/{len(rates)} rates. "
        + (
            "Supports the claim."
            if alpha_better == len(rates)
            else "Does not fully support the claim."
        )
    )
    return lines


# ----------------------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    full = Config()  # the full run's setup: report() sees the results only
    out = [
        "### Setup against the paper",
        "",
        f"Scaled down to fit a 10-minute CPU run: hidden width {full.width} for every net "
        f"(the paper's Fig. 1: 784); Fig. 1 is {full.fig1_steps} plain-SGD steps at lr "
        f"{full.lr}, batch {full.batch_size}, for both families (the paper: plain SGD at lr "
        "1e-5; ours is chosen once for our small step budget, not tuned), depths "
        f"{', '.join(map(str, full.fig1_depths))}, {full.seeds} seeds; the 'short training' "
        f"of (a) is {full.moment_steps} steps of the same SGD, seed 0 only; (a) and (d) "
        f"measure {full.probe_images} MNIST training images, standardised with MNIST's "
        "mean and standard deviation, moments pooled over images and units. tanh, ELU "
        "and sigmoid nets use LeCun-normal weights (SELU's init) so only the activation "
        "differs from the SNN; the BatchNorm nets are Linear -> BatchNorm -> ReLU with "
        "PyTorch's default init. (d) is at initialisation, in train mode.",
        "",
        "### (a) Activation moments, last hidden layer",
        "",
    ]
    out += ["| depth | net | init mean | init var | trained mean | trained var | steps |"]
    out += ["|---|---|---|---|---|---|---|"]
    for depth in _depths(results, "moments"):
        for kind in ACTIVATIONS:
            cell = results["moments"][f"{kind}/{depth}"]
            i, t = cell["init"][-1], cell["trained"][-1]
            steps = f"diverged at {cell['diverged_at']}" if cell["diverged_at"] else cell["steps"]
            out.append(
                f"| {depth} | {LABELS[kind]} | {fmt(i[0])} | {fmt(i[1])} | {fmt(t[0])} "
                f"| {fmt(t[1])} | {steps} |"
            )
    th = results["theory"]
    out += ["", "### (b) Moment map", ""]
    out += ["| quantity | ours | paper |", "|---|---|---|"]
    out += [
        f"| g(0, 1) | ({th['fixed_point'][0]:.2e}, {th['fixed_point'][1]:.12f}) | (0, 1) |",
        f"| Jacobian at (0, 1) | {np.round(th['jacobian'], 6).tolist()} | |",
        f"| its spectral norm | {th['jacobian_spectral_norm']:.6f} | {PAPER_JACOBIAN_NORM} |",
        f"| alpha from g(0,1)=(0,1) | {th['alpha_solved']:.15f} | {SELU_ALPHA:.15f} |",
        f"| lambda from g(0,1)=(0,1) | {th['lambda_solved']:.15f} | {SELU_LAMBDA:.15f} |",
        f"| max abs diff to torch nn.SELU | {th['torch_selu_max_abs_diff']:.1e} | |",
    ]
    out += ["", "| (mu, nu, omega, tau) | closed form | quadrature | Monte Carlo |"]
    out += ["|---|---|---|---|"]
    for c in th["checks"]:
        cells = [
            f"({c[k][0]:.5f}, {c[k][1]:.5f})" for k in ("closed_form", "quadrature", "monte_carlo")
        ]
        out.append(
            f"| ({c['mu']}, {c['nu']}, {c['omega']}, {c['tau']}) | " + " | ".join(cells) + " |"
        )
    # With omega = 0 a path depends on its starting variance alone: one row per nu0.
    out += ["", "| start nu0 (any mu0) | after 1 | after 5 | iterations to within 1e-3 |"]
    out += ["|---|---|---|---|"]
    by_nu: dict[str, list[dict]] = {}
    for key, p in th["paths"].items():
        by_nu.setdefault(key.split(",")[1], []).append(p)
    for nu0, paths in by_nu.items():
        a, b = paths[0]["path"][1], paths[0]["path"][min(5, len(paths[0]["path"]) - 1)]
        its = sorted({p["within_1e-3_at"] for p in paths}, key=lambda i: (i is None, i or 0))
        out.append(
            f"| {nu0} | ({a[0]:.4f}, {a[1]:.4f}) | ({b[0]:.4f}, {b[1]:.4f}) "
            f"| {', '.join(map(str, its))} |"
        )
    out += ["", "### (c) Fig. 1: training loss, SNN vs BatchNorm-ReLU", ""]
    out += ["| depth | family | final loss per seed | mean | roughness | diverged |"]
    out += ["|---|---|---|---|---|---|"]
    for depth in _depths(results, "fig1"):
        for family in ("snn", "bn"):
            s = fig1_summary(results, family, depth)
            out.append(
                f"| {depth} | {'SNN (SELU)' if family == 'snn' else 'BN-ReLU'} "
                f"| {', '.join(fmt(f, 4) for f in s['final'])} | {fmt(s['final_mean'], 4)} "
                f"| {fmt(s['roughness'])} | {s['diverged']} |"
            )
    out += [
        "",
        "Roughness: standard deviation of the change in log training loss between "
        "consecutive recorded points (each the mean of `loss_every` steps) over the second "
        "half of the run, mean over seeds. It is relative noise: at equal batch noise a "
        "lower loss reads rougher, so a family that trains lower is penalised by it.",
        "",
        "### (d) Dropout in a SELU net, train mode, last layer (mean over seeds)",
        "",
        "| rate | none | Dropout | AlphaDropout |",
        "|---|---|---|---|",
    ]
    for rate in _rates(results):
        row = [dropout_last(results, k, rate) for k in ("none", "dropout", "alpha")]
        out.append(f"| {rate} | " + " | ".join(f"({fmt(m)}, {fmt(v)})" for m, v in row) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots


def plot(results: dict[str, Any], config: Config, out: Path) -> list[Path]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    colors = dict(zip(ACTIVATIONS, plt.get_cmap("tab10").colors, strict=False))

    # (a)
    depths = _depths(results, "moments")
    fig, axes = plt.subplots(2, 2 * len(depths), figsize=(5 * len(depths) * 2, 7), squeeze=False)
    for d, depth in enumerate(depths):
        for s, state in enumerate(("init", "trained")):
            col = 2 * d + s
            for kind in ACTIVATIONS:
                cell = results["moments"][f"{kind}/{depth}"]
                rows = cell[state]
                layers = range(1, len(rows) + 1)
                mean = [np.nan if r[0] is None else r[0] for r in rows]
                var = [np.nan if r[1] is None else r[1] for r in rows]
                axes[0, col].plot(layers, mean, color=colors[kind], label=LABELS[kind])
                axes[1, col].plot(layers, var, color=colors[kind], label=LABELS[kind])
            when = "at init" if state == "init" else f"after {cell['steps']} SGD steps"
            axes[0, col].set_title(f"{depth} layers, {when}")
            axes[0, col].set_ylabel("mean of activations")
            axes[1, col].set_ylabel("variance of activations")
            axes[1, col].set_yscale("log")
            axes[0, col].axhline(0, color="k", lw=0.5, ls=":")
            axes[1, col].axhline(1, color="k", lw=0.5, ls=":")
            axes[1, col].set_xlabel("layer")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(ACTIVATIONS), fontsize=9)
    fig.suptitle(
        f"(a) Activation moments per layer, width {config.width}, "
        f"{config.probe_images} MNIST images"
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    figures.append(out / "moments.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)

    # (b)
    th = results["theory"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for p in th["paths"].values():
        path = np.array(p["path"])
        ax.plot(path[:, 0], path[:, 1], "-", color="tab:blue", lw=0.8, alpha=0.7)
        ax.plot(path[0, 0], path[0, 1], "o", color="tab:blue", ms=4)
        ax2.semilogy(np.maximum(p["distance"], 1e-17), color="tab:blue", lw=0.8, alpha=0.7)
    ax.plot(0, 1, "*", color="tab:red", ms=14, label="fixed point (0, 1)")
    ax.set_xlabel("mean mu")
    ax.set_ylabel("variance nu")
    ax.set_title("paths of (mu, nu) -> g(mu, nu) from a grid (dots)")
    ax.legend()
    ax2.set_xlabel("iteration (layer)")
    ax2.set_ylabel("distance to (0, 1)")
    ax2.set_title(
        f"convergence; Jacobian spectral norm {th['jacobian_spectral_norm']:.4f} "
        f"(paper {PAPER_JACOBIAN_NORM})"
    )
    fig.suptitle(
        "(b) The SELU moment map (Klambauer et al. 2017, Eq. 4-5), normalised weights "
        "omega=0, tau=1:\nthe next layer's mean and variance depend on this layer's variance alone"
    )
    fig.tight_layout()
    figures.append(out / "moment_map.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)

    # (c)
    depths = _depths(results, "fig1")
    fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 4.5), squeeze=False)
    for ax, depth in zip(axes[0], depths, strict=True):
        for family, color, label in (
            ("snn", "tab:red", "SNN (SELU)"),
            ("bn", "tab:blue", "BN-ReLU"),
        ):
            curves = [results["fig1"][k] for k in _seeds(results["fig1"], f"{family}/{depth}/")]
            for c in curves:  # every seed thin, the mean over seeds thick
                steps = [p[0] for p in c["loss"]]
                ax.plot(steps, [p[1] for p in c["loss"]], color=color, lw=0.6, alpha=0.5)
            n = min(len(c["loss"]) for c in curves)
            if n:
                mean = np.mean([[p[1] for p in c["loss"][:n]] for c in curves], axis=0)
                steps = [p[0] for p in curves[0]["loss"][:n]]
                ax.plot(steps, mean, color=color, lw=1.8, label=f"{label}, mean of {len(curves)}")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("SGD step")
        ax.set_ylabel(f"training loss (mean of {config.loss_every} steps)")
        ax.set_title(f"{depth} layers, width {config.width}")
        ax.legend()
    fig.suptitle(f"(c) Fig. 1 on MNIST: plain SGD, lr {config.lr}, batch {config.batch_size}")
    fig.tight_layout()
    figures.append(out / "fig1_loss.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)

    # (d)
    rates = _rates(results)
    fig, axes = plt.subplots(2, len(rates), figsize=(5 * len(rates), 7), squeeze=False)
    styles = {
        "none": ("k", "no dropout"),
        "dropout": ("tab:blue", "Dropout"),
        "alpha": ("tab:red", "AlphaDropout"),
    }
    for col, rate in enumerate(rates):
        for kind, (color, label) in styles.items():
            cells = [results["dropout"][k] for k in _seeds(results["dropout"], f"{kind}/{rate}/")]
            rows = np.array([[[np.nan if v is None else v for v in r] for r in c] for c in cells])
            layers = range(1, rows.shape[1] + 1)
            axes[0, col].plot(layers, rows[:, :, 0].mean(0), color=color, label=label)
            axes[1, col].plot(layers, rows[:, :, 1].mean(0), color=color, label=label)
        axes[0, col].set_title(
            f"rate {rate}, train mode, mean of {len(cells)} seed{'s' * (len(cells) > 1)}"
        )
        axes[0, col].set_ylabel("mean of activations")
        axes[1, col].set_ylabel("variance of activations")
        axes[1, col].set_xlabel("layer")
        axes[0, col].axhline(0, color="k", lw=0.5, ls=":")
        axes[1, col].axhline(1, color="k", lw=0.5, ls=":")
    axes[0, 0].legend()
    fig.suptitle(f"(d) Dropout vs AlphaDropout in a {config.dropout_depth}-layer SELU net")
    fig.tight_layout()
    figures.append(out / "dropout.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)
    return figures
