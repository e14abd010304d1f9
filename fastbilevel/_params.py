"""Which keyword arguments each method uses: one table, checked on every call.

A keyword that a method does not use is refused, never ignored: a user who
passes ``tol=`` to ``method="reverse"`` (or misspells a method) must learn
that it had no effect. Keywords whose default depends on the method (e.g.
``linear_solver``, ``tol``, ``schedule``) default to None in the signatures
and are resolved per method after this check.
"""
from ._checks import check_choice

# keywords of hypergradient() every unrolled (ITD) method and implicit use
_INNER = frozenset({"solver", "steps", "step_size", "w0", "check_step"})

#: method of hypergradient() (BilevelProblem) -> keywords it uses
HYPERGRADIENT = {
    "reverse": _INNER,
    "recompute": _INNER,
    "forward": _INNER,
    "truncated": _INNER | {"K"},
    "checkpointed": _INNER | {"snapshots", "schedule"},
    "implicit": _INNER | {"K", "linear_solver", "tol", "v0", "eta"},
    # thesis Alg. 4-5: the inner loop is always minibatch SGD
    "stocbio": frozenset({"solver", "steps", "step_size", "w0", "check_step", "eta",
                          "batch_size", "replace", "seed", "Q", "hessian_batch",
                          "hessian_schedule", "hessian_sizes", "outer_batch",
                          "cross_batch"}),
}

#: inner solver -> the extra keywords it uses (ITD methods and implicit)
SOLVER = {
    "gd": frozenset(),
    "heavy_ball": frozenset({"momentum"}),
    "agd": frozenset({"momentum"}),
    "sgd": frozenset({"batch_size", "replace", "seed"}),
}

#: method of hypergradient() on a MultiTaskProblem -> keywords it uses
META = {
    "reverse": frozenset({"steps", "step_size", "meta_batch", "seed", "check_step"}),
    "recompute": frozenset({"steps", "step_size", "meta_batch", "seed", "check_step"}),
    "first_order": frozenset({"steps", "step_size", "meta_batch", "seed", "check_step"}),
    "ufo": frozenset({"steps", "step_size", "meta_batch", "seed", "check_step", "q"}),
}

#: keywords of fsla() (and of minimize(method="fsla") besides iters, lr, bounds, callback)
FSLA = frozenset({"delta", "c_tau", "c_beta", "c_eta", "batch_size", "outer_batch",
                  "cross_batch", "replace", "seed", "w0", "eval_every"})

#: the stochastic solver family (fastbilevel.solvers) -> its own keywords,
#: beyond SOLVER_COMMON
SOLVER_FAMILY = {
    "soba": frozenset(),
    "saba": frozenset(),
    "amigo": frozenset({"inner_steps", "linear_steps", "linear_step"}),
    "mrbo": frozenset({"Q", "eta", "momentum"}),
    "vrbo": frozenset({"Q", "eta", "inner_steps", "period"}),
    "ttsa": frozenset({"Q", "eta"}),
    "bsa": frozenset({"Q", "eta", "inner_steps"}),
    "f2sa": frozenset({"inner_steps", "nu0", "nu_growth"}),
    "bome": frozenset({"inner_steps", "bome_eta"}),
}

#: keywords every method of the family takes (in minimize, besides iters,
#: lr, bounds, callback, progress)
SOLVER_COMMON = frozenset({"step_size", "batch_size", "outer_batch", "replace", "seed",
                           "w0", "decay", "eval_every"})

#: outer update of minimize() -> the keywords it uses beyond the common ones
OUTER = {
    "sgd": frozenset({"decay"}),
    "adam": frozenset({"decay", "betas"}),
    "nesterov": frozenset({"decay", "outer_momentum"}),
    "hoag": frozenset({"tol_schedule", "tol0", "max_inner_steps"}),
}


class ParameterError(TypeError, ValueError):
    """A keyword argument that the chosen method does not use (a TypeError,
    like any unexpected keyword, and a ValueError, like any bad setting)."""


def accepted(method, solver=None, multitask=False):
    """The keywords ``hypergradient`` accepts for this method (and solver)."""
    if multitask:
        return META[method]
    keys = HYPERGRADIENT[method]
    if method != "stocbio" and solver in SOLVER:
        keys = keys | SOLVER[solver]
    return keys


def refuse_unused(given, allowed, what):
    """Raise :class:`ParameterError` if a keyword in ``given`` (a dict of the
    keywords the caller set) is not in ``allowed``; ``what`` names the
    method (and solver) in the message."""
    unused = sorted(k for k in given if k not in allowed)
    if unused:
        names = ", ".join(f"{k}={given[k]!r}" for k in unused)
        raise ParameterError(f"{names} does not apply to {what}; it accepts: "
                             f"{', '.join(sorted(allowed))}")


def given_keywords(named, method_kw, solver, check_step):
    """The keywords a caller set: those of ``named`` (name → value) that are
    not None, ``method_kw``, and ``solver``/``check_step`` when not their
    defaults ("gd", True)."""
    given = {k: v for k, v in named.items() if v is not None}
    given.update(method_kw)
    if solver != "gd":
        given["solver"] = solver
    if check_step is not True:
        given["check_step"] = check_step
    return given


def check_hypergradient_kw(method, solver, given, multitask=False):
    """Validate ``method`` and the keywords of a ``hypergradient`` call."""
    table = META if multitask else HYPERGRADIENT
    check_choice("method", method, table)
    if not multitask and method != "stocbio":
        check_choice("solver", solver, SOLVER)
    what = f"method={method!r}" + ("" if multitask or method == "stocbio"
                                   else f" with solver={solver!r}")
    if multitask:
        what += " on a MultiTaskProblem"
    refuse_unused(given, accepted(method, solver, multitask), what)
