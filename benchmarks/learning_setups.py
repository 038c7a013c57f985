"""What benchmarks/learning_curves.py trains: recipes (model and optimizer overrides) and variants
(flat, or DMT over a plan with a tower module and global interaction), by name.

Kept apart from the script so its runs' names read in one place; a finished run's JSON is keyed by
these names, so a recipe's meaning must not change once it has runs (add a new name instead).
"""

# Model/optimizer overrides on ModelConfig.preset("small") / OptimConfig() (what `dmt train` builds).
# Each recipe names its table init and tower rate, so its runs keep their meaning when defaults
# move: "default" is the setting before issue 18 (torchrec's table init, tower lr 0.005);
# "init0.1_tlr0.02" was the default (tables +-0.1, tower lr 0.02) until the "small" preset moved to
# per-coordinate Adagrad tables ("init0.1_tlr0.02_adagrad").
OLD_TOWER_LR = {"tower_lr": 0.005}
WIDE = {"embedding_init": 0.1, "embedding_dim": 128, "dense_arch": (512, 256, 128), "over_arch": (512, 256, 1)}
RECIPES = {
    "default": {"model": {"embedding_init": None}, "optim": OLD_TOWER_LR},
    "init0.1": {"model": {"embedding_init": 0.1}, "optim": OLD_TOWER_LR},
    "adagrad": {"model": {"embedding_init": None}, "optim": {"sparse": "adagrad", **OLD_TOWER_LR}},
    "init0.1_tlr0.002": {"model": {"embedding_init": 0.1}, "optim": {"tower_lr": 0.002}},
    "init0.1_tlr0.01": {"model": {"embedding_init": 0.1}, "optim": {"tower_lr": 0.01}},
    "init0.1_tlr0.02": {"model": {"embedding_init": 0.1}, "optim": {"tower_lr": 0.02}},
    # The "small" preset's defaults since the stalls (dmt.train.optim.PRESET_RATES): Adagrad tables.
    "init0.1_tlr0.02_adagrad": {"model": {"embedding_init": 0.1}, "optim": {"tower_lr": 0.02, "sparse": "adagrad"}},
    "init0.1_tlr0.05": {"model": {"embedding_init": 0.1}, "optim": {"tower_lr": 0.05}},
    "init0.1_tlr0.02_dlr0.005": {"model": {"embedding_init": 0.1}, "optim": {"tower_lr": 0.02, "dense_lr": 0.005}},
    # The "criteo" preset's MLP widths (and D=128, as the GPU runs) on the demo's tables.
    "wide_dlr0.05": {"model": WIDE, "optim": {"tower_lr": 0.02}},
    "wide_dlr0.005_tlr0.02": {"model": WIDE, "optim": {"tower_lr": 0.02, "dense_lr": 0.005}},
    "wide_dlr0.005_tlr0.002": {"model": WIDE, "optim": {"tower_lr": 0.002, "dense_lr": 0.005}},
    "default_tlr0.02": {"model": {"embedding_init": None}, "optim": {"tower_lr": 0.02}},
    "init0.05": {"model": {"embedding_init": 0.05}, "optim": OLD_TOWER_LR},
    "init0.1_adagrad": {"model": {"embedding_init": 0.1}, "optim": {"sparse": "adagrad", **OLD_TOWER_LR}},
    "small_data": {"model": {"embedding_init": 0.1, "embedding_dim": 8, "dense_arch": (64, 8)}, "optim": OLD_TOWER_LR},
}
# name -> (plan, tower module config, global dot interaction options); plan None is the flat model.
VARIANTS = {
    "flat": (None, None, None),
    "dmt_tp_c4": ("tp", {"kind": "linear", "compression": 4}, None),
    "dmt_random_c4": ("random", {"kind": "linear", "compression": 4}, None),
    "dmt_random_dot_c4": ("random", {"kind": "dot", "compression": 4}, None),
    "dmt_identity": ("tp", {"kind": "identity"}, None),
    "dmt_tp_linear_c1": ("tp", {"kind": "linear", "compression": 1}, None),
    "dmt_tp_linear_c2": ("tp", {"kind": "linear", "compression": 2}, None),
    "dmt_tp_dot_c4": ("tp", {"kind": "dot", "compression": 4}, None),
    "dmt_tp_dcn_c4": ("tp", {"kind": "dcn", "compression": 4}, None),
    "dmt_tp_mlp_c4": ("tp", {"kind": "mlp", "compression": 4, "hidden": (64,)}, None),
    "dmt_tp_c4_hierarchical": ("tp", {"kind": "linear", "compression": 4}, {"self_dots": True, "raw_towers": True}),
    "dmt_tp_dot_c4_hierarchical": ("tp", {"kind": "dot", "compression": 4}, {"self_dots": True, "raw_towers": True}),
    "dmt_tp_c4_selfdots": ("tp", {"kind": "linear", "compression": 4}, {"self_dots": True}),
    "dmt_random_c4_selfdots": ("random", {"kind": "linear", "compression": 4}, {"self_dots": True}),
    "dmt_tp_c4_rawtowers": ("tp", {"kind": "linear", "compression": 4}, {"raw_towers": True}),
    # Dot towers whose dot columns start at 0 (the init before towers.config.DOT_WEIGHT_INIT).
    "dmt_tp_dot0_c4": ("tp", {"kind": "dot", "compression": 4, "dot_init": 0.0}, None),
    "dmt_random_dot0_c4": ("random", {"kind": "dot", "compression": 4, "dot_init": 0.0}, None),
    "dmt_tp_dot0_c4_hierarchical": (
        "tp",
        {"kind": "dot", "compression": 4, "dot_init": 0.0},
        {"self_dots": True, "raw_towers": True},
    ),
}
# The goal pairs: (TP towers, random towers) of one tower module, each compared with flat.
GOAL_PAIRS = {
    "linear": ("dmt_tp_c4", "dmt_random_c4"),
    "dot": ("dmt_tp_dot_c4", "dmt_random_dot_c4"),
    "dot, dot columns at 0": ("dmt_tp_dot0_c4", "dmt_random_dot0_c4"),
}
VARIANT_SETS = {
    "table": ["flat", *GOAL_PAIRS["linear"]],
    "dot_table": ["flat", *GOAL_PAIRS["dot"]],
    "dot0_table": ["flat", *GOAL_PAIRS["dot, dot columns at 0"]],
    "kinds": [v for v in VARIANTS if v not in ("dmt_random_c4", "dmt_random_dot0_c4")],
}
