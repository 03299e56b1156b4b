"""The training machinery every mode shares: the pure train and eval steps (steps.py), the
optimiser (optimizer.py), k steps per jitted call (multistep.py), training length in steps
(train_length.py), the state a run starts from (state.py), evaluation over a split
(evaluation.py), a stop on SIGTERM (preemption.py) and the L-BFGS logistic regression of
probes and baselines (logistic.py). It takes config sections, never a whole config, and
writes no files."""
