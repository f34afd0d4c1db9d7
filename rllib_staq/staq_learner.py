"""Metric keys of the StaQ learner (framework-agnostic names, as in RLlib's DQN)."""

TD_LOSS_KEY = "td_loss"
MEAN_Q_KEY = "mean_q"
POLICY_ENTROPY_KEY = "policy_entropy"
KL_NEW_OLD_KEY = "kl_pi_k_pi_k_plus_1"
STACK_FILL_KEY = "stack_fill"
NUM_PUSHES_KEY = "num_pushes"
ALPHA_KEY = "pmd_alpha"
BETA_KEY = "pmd_beta"
ENTROPY_COEFF_KEY = "entropy_coeff"
EPSILON_KEY = "epsilon"
REPLAY_SIZE_KEY = "replay_size"
NUM_GRAD_STEPS_KEY = "num_grad_steps_lifetime"

NEXT_LOGITS_TIMER = "next_state_logits_timer"
FQI_TIMER = "fqi_phase_timer"
PUSH_TIMER = "push_timer"

# Columns of the learner's transition table.
# Unscaled stack sum at the next state (xi_k / logit_scale), cached per row.
NEXT_STACK_SUM = "next_stack_sum"
