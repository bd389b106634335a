"""lm-eval task files (yaml) and the functions they name (utils.py); see jrt_prompt.eval.lm_eval_model."""
