"""Metric keys of the StaQ learner (framework-agnostic names, as in RLlib's DQN)."""

from ray.rllib.utils.metrics import (
    NUM_MODULE_STEPS_ADDED,
    NUM_MODULE_STEPS_ADDED_LIFETIME,
    NUM_MODULE_STEPS_EVICTED,
    NUM_MODULE_STEPS_EVICTED_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_STORED,
)

TD_LOSS_KEY = "td_loss"
MEAN_Q_KEY = "mean_q"
POLICY_ENTROPY_KEY = "policy_entropy"
KL_NEW_OLD_KEY = "kl_pi_k_pi_k_plus_1"
# KL(pi_k || pi_k without its oldest member), logged at pushes that evict.
TRUNCATION_KL_KEY = "kl_truncation"
# max |Q(s, a)| of the trainable ensemble over the phase, and its bound.
MAX_ABS_Q_KEY = "max_abs_q"
MAX_ABS_Q_BOUND_KEY = "max_abs_q_bound"
STACK_FILL_KEY = "stack_fill"
NUM_PUSHES_KEY = "num_pushes"
ALPHA_KEY = "pmd_alpha"
BETA_KEY = "pmd_beta"
ENTROPY_COEFF_KEY = "entropy_coeff"
EPSILON_KEY = "epsilon"
REPLAY_SIZE_KEY = "replay_size"

# RLlib's replay-buffer metric names, logged per module from the learner's table
# (the algorithm reports them as replay_buffer/<metric>/<module_id>, as RLlib's
# episode buffers do). Counts are transitions (RLlib's module steps).
REPLAY_METRICS = (
    NUM_MODULE_STEPS_STORED,
    NUM_MODULE_STEPS_ADDED,
    NUM_MODULE_STEPS_ADDED_LIFETIME,
    NUM_MODULE_STEPS_EVICTED,
    NUM_MODULE_STEPS_EVICTED_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
)
NUM_GRAD_STEPS_KEY = "num_grad_steps_lifetime"

# StaQ's timers report the last iteration's time (an iteration is one long
# sample/FQI/push cycle, so RLlib's default EMA over iterations would lag).
ITERATION_TIMER = {"reduce": "mean", "window": 1}
NEXT_LOGITS_TIMER = "next_state_logits_timer"
FQI_TIMER = "fqi_phase_timer"
PUSH_TIMER = "push_timer"

NEXT_STATE_PASS_FRACTION_KEY = "next_state_rows_needing_stack_pass"

# Extra model outputs of the acting passes, stored in the episodes, so the
# learner reuses them as next-state sums of new transitions (no extra pass).
STACK_SUM = "staq_stack_sum"  # [B, A] unscaled stack sum, xi_k / logit_scale
STACK_VERSION = "staq_stack_version"  # [B] num_pushes of the stack that acted

# Columns of the learner's transition table.
# Unscaled stack sum at the next state (xi_k / logit_scale), cached per row.
NEXT_STACK_SUM = "next_stack_sum"
# Version (num_pushes) of the stack that produced NEXT_STACK_SUM when acting;
# -1 where no acting output exists (episode-chunk ends, data from elsewhere).
NEXT_STACK_VERSION = "next_stack_version"
# [B] steps between a transition's state and the state its target bootstraps
# from (1 for every row unless `n_step` > 1; connectors.n_step_columns).
N_STEP_HORIZONS = "n_step_horizons"
