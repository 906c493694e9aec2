"""Studies and benchmarks, run from the repository root as modules, e.g.

    python -m experiments.imputation_study
    python -m experiments.few_step_study --config=configs/digits.py --workdir=runs/digits

Their measured figures, with command, date and machine, are in experiments/RESULTS.md.
"""
