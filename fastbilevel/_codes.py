"""Integer codes shared by the compiled kernels and the Python layer.

Kernels take scalars, so models, hyperparameter maps, solvers, schedule
actions and statuses are plain integers, defined once here (no Numba import:
the Python layer and the schedule builders read them without loading any
kernel). The registries in :mod:`fastbilevel._registry` map names to them.
"""
# models ℓ (docs/math.md §2)
LINEAR = 0
LOGISTIC = 1
MULTINOMIAL = 2

# hyperparameter maps (docs/math.md §3)
SAMPLE_WEIGHTS = 0
FEATURE_L2 = 1
L2 = 2
BIASED_L2 = 3
INIT = 4

# inner solvers (docs/math.md §5); sgd runs GD's step on a minibatch
GD = 0
HEAVY_BALL = 1
AGD = 2

# schedule actions: rows (opcode, argument) of an action list (docs/math.md §6)
ADV = 0          # advance n steps
ADV_STORE = 1    # advance n steps, storing the gradient points
SNAP = 2         # snapshot slot k <- solver state
RESTORE = 3      # solver state <- snapshot slot k
INIT_ADJ = 4     # adjoint = ∇f at the output (of the state, or one step past it)
REV_STATE = 5    # one reverse step at the current state
REV_BUF = 6      # n reverse steps over the stored points
FINISH = 7       # add B₀ᵀ(adjoint of w₀) for ``init``

# linear solvers of the implicit hypergradient (docs/math.md §7) and their statuses
CG = 0
NEUMANN = 1
HEAVY_BALL_LS = 2
CONVERGED = 0
MAX_STEPS = 1
DIVERGED = 2
NO_CURVATURE = 3

# multi-task meta-gradients (docs/math.md §9)
META_REVERSE = 0
META_RECOMPUTE = 1
META_FIRST_ORDER = 2
META_UFO = 3

# status of a kernel the host asked to stop (kernels.control)
STOPPED = -2
