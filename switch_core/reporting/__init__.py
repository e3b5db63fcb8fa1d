"""Reports of a run's outputs, one package for both front ends: ``switch-kd report`` (``runs/<run>/report/``,
:mod:`~switch_core.reporting.report_md`) and ``switch-kd results-doc`` (docs/RESULTS.md,
:mod:`~switch_core.reporting.results_md`).

Modules, by job: :mod:`~switch_core.reporting.loading` (reading evaluations, logs, traces, summaries),
:mod:`~switch_core.reporting.run_outputs` (a run folder read at once), :mod:`~switch_core.reporting.scores` (means and
sds over seeds, averages, buckets, comparisons, compute times), :mod:`~switch_core.reporting.teacher_share` (teacher
share of SWITCH rollouts), :mod:`~switch_core.reporting.tables` (markdown tables),
:mod:`~switch_core.reporting.plots` (PNG plots), :mod:`~switch_core.reporting.reading` (the rule-based reading
against the paper), :mod:`~switch_core.reporting.method_text` (each training stage in words),
:mod:`~switch_core.reporting.references` (reference rows and the paper's figures). ``switch-kd ablation-doc`` (docs/ABLATIONS.md,
:mod:`~switch_core.reporting.ablations_md`) reads the ablation flow's cells with
:mod:`~switch_core.reporting.ablations`, reads the paper's ablation claims with
:mod:`~switch_core.reporting.ablation_reading` and draws with :mod:`~switch_core.reporting.ablation_plots`. Needs
pandas and matplotlib, so nothing is imported here.
"""
