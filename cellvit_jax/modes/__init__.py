"""What `config.mode` runs, one module each with a `run_mode(config, workdir)`: train,
finetune (the same loop on a foundation model), probe (with its head file and feature cache),
blur_study, predict, and study (with its grid). finished_run loads a trained run back for the
modes that evaluate one. Each mode checks its config at entry and passes only the sections
each layer needs."""
